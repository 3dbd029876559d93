import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float


class AbstractLoss(eqx.Module):
    r"""A per-sample loss $\ell(f_i, y_i)$ of a prediction $f_i$ and label $y_i$.

    Every loss gives its per-sample value, the mean $L = \frac1n\sum_i \ell_i$ and the
    logarithm $\log L$ computed in the log domain, so that it stays finite and
    accurate when $L$ itself is far below the smallest float64 (margins of $10^4$
    and more). The derivative in the prediction comes with an optional
    log-domain scale factor: the log clock needs $e^s\,\partial\ell/\partial f$
    without ever forming $e^s$ or $e^{-\text{margin}}$.
    """

    #: Whether labels must be ±1 and margins $y_i f_i$ are meaningful.
    classification: ClassVar[bool]

    @abc.abstractmethod
    def log_per_sample(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        """`log ℓ(f_i, y_i)` for each sample, stable at tiny losses."""

    @abc.abstractmethod
    def scaled_derivative(
        self, f: Float[Array, " n"], y: Float[Array, " n"], log_scale: ArrayLike = 0.0
    ) -> Array:
        r"""$e^{\text{log\_scale}}\,\partial\ell/\partial f_i$, formed in the log domain."""

    @abc.abstractmethod
    def log_curvature(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        r"""$\log \partial^2\ell/\partial f_i^2$: the log of the Gauss–Newton weights."""

    @abc.abstractmethod
    def newton_ratio(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        r"""$(\partial\ell/\partial f_i) / (\partial^2\ell/\partial f_i^2)$, in closed form:
        the function-space natural-gradient step. Both factors decay like
        $e^{-\text{margin}}$ for exponential-tailed losses; their ratio does not."""

    def log_abs_derivative(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> tuple[Array, Array]:
        r"""$(\log|\partial\ell/\partial f_i|, \operatorname{sign}\partial\ell/\partial f_i)$."""
        from .._misc import safe_log_abs

        d = self.scaled_derivative(f, y, 0.0)
        return safe_log_abs(d)

    def per_sample(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        """`ℓ(f_i, y_i)` for each sample."""
        return jnp.exp(self.log_per_sample(f, y))

    def derivative(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        r"""$\partial\ell/\partial f_i$ for each sample."""
        return self.scaled_derivative(f, y, 0.0)

    def mean(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        """The mean loss `L = (1/n) Σ ℓ_i`."""
        return jnp.mean(self.per_sample(f, y))

    def log_loss(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        """`log L`, computed as `logsumexp(log ℓ_i) − log n`: finite far below 1e-308."""
        logs = self.log_per_sample(f, y)
        return jax.nn.logsumexp(logs) - jnp.log(logs.shape[0])

    def check_labels(self, y: np.ndarray) -> None:
        """Raise a `ValueError` that says what to do when labels do not suit the loss."""
        if self.classification:
            bad = ~np.isin(y, (-1.0, 1.0))
            if np.any(bad):
                raise ValueError(
                    f"{type(self).__name__} is a classification loss and needs labels "
                    f"in {{-1, +1}}; got {np.unique(y[bad])[:5]} among them. Map "
                    "{0, 1} labels with `y = 2 * y - 1`, or use `Squared()` for "
                    "regression."
                )
