import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._misc import safe_log_abs
from .base import AbstractLoss


class Squared(AbstractLoss):
    r"""Squared loss $\ell(f, y) = \tfrac12 (f - y)^2$ for regression (any real labels).

    $\log\ell = 2\log|f - y| - \log 2$, which is $-\infty$ exactly at an
    interpolating prediction.
    """

    classification = False

    def log_per_sample(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        log_abs, _ = safe_log_abs(f - y)
        return 2.0 * log_abs - jnp.log(2.0)

    def per_sample(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        return 0.5 * (f - y) ** 2

    def scaled_derivative(
        self, f: Float[Array, " n"], y: Float[Array, " n"], log_scale: ArrayLike = 0.0
    ) -> Array:
        r = f - y
        # Plain r·e^{log_scale} while e^{log_scale} is representable (exact derivative
        # everywhere, also at r = 0); past that sign(r)·exp(log_scale + log|r|), which
        # stays finite when r is tiny and the scale huge.
        small = log_scale < 500.0
        plain = r * jnp.exp(jnp.where(small, log_scale, 0.0))
        log_abs, sign = safe_log_abs(r)
        fused = sign * jnp.exp(jnp.where(small, 0.0, log_scale) + log_abs)
        return jnp.where(small, plain, fused)

    def log_curvature(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        return jnp.zeros_like(f)

    def newton_ratio(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        return f - y
