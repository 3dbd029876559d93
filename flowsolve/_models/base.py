import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


class AbstractModel(eqx.Module):
    """A model that *is* its parameters: an `equinox.Module` mapping one input row to
    a scalar prediction. An initialised model is the initial point θ0 of a flow.

    Subclasses declare `homogeneity`: the degree `L` with `f(cθ; x) = c^L f(θ; x)`
    for `c > 0`, or `None` when the model is not positively homogeneous. Models
    with an end-to-end linear map (`Linear`, `DeepLinear`, `DiagonalLinear`,
    `MatrixFactorization`) return it from `end_to_end()`, and models whose
    gradient flow conserves known quantities return them, flattened, from
    `conserved_quantities()`.

    Every prediction on the training set goes through `predict_batch(X)`, which
    subclasses override where the batch has a cheaper form than one row at a time
    (one matmul instead of n matrix–vector products; an end-to-end matrix formed
    once instead of once per row).

    Any other `equinox.Module` that maps a row to a scalar works with flowsolve
    too; it just lacks these declarations, and is evaluated as `jax.vmap(model)(X)`.
    """

    homogeneity: eqx.AbstractVar[int | None]

    @abc.abstractmethod
    def __call__(self, x: Array) -> Array:
        """The scalar prediction for one input row `x`."""

    def check_data(self, X: np.ndarray) -> None:
        """Raise a `ValueError` that says what to do when the data rows `X` (NumPy,
        checked by `fs.Problem`) cannot be what this model reads. Default: nothing
        beyond the row shape, which `fs.Problem` checks by applying the model."""

    def predict_batch(self, X: Array) -> Array:
        """The predictions on the rows of `X` (shape `(n, ...)`), shape `(n,)`: the
        same values as `jax.vmap(model)(X)`, possibly computed batch-wise."""
        return jax.vmap(self)(X)

    @property
    def smooth(self) -> bool:
        """Whether the gradient-flow vector field is smooth in θ. `False` for
        networks with kinked activations (ReLU) trained through them: the field then
        jumps wherever a unit's activation flips on a training point, and
        `solver="auto"` picks a low-order method (see `fs.solve`)."""
        return True

    def trainable(self):
        """The parameters gradient flow moves, as a pytree: what the normalised
        margins and `param_norm` measure. All inexact arrays by default; a model
        with frozen arrays (`TwoLayer(train="output")`) returns the trained ones."""
        return eqx.filter(self, eqx.is_inexact_array)

    def end_to_end(self) -> Array:
        """The end-to-end linear predictor (vector) or matrix of the model."""
        raise NotImplementedError(
            f"{type(self).__name__} has no end-to-end linear map; metrics that need "
            "one (ℓ1 margin, effective rank, singular values) do not apply to it."
        )

    def gram(self, X: Array) -> Array:
        r"""The n×n tangent-kernel (Gram) matrix $J J^\top$ of the predictions on the
        rows of `X` with respect to the trainable parameters, where the model can
        form it faster than generic autodiff; `NotImplementedError` otherwise."""
        raise NotImplementedError

    def conserved_quantities(self) -> Array:
        """The quantities exactly conserved by gradient flow, as one flat vector."""
        raise NotImplementedError(
            f"{type(self).__name__} declares no conserved quantities of gradient flow."
        )

    def conserved_scale(self) -> Array:
        """The size of the terms whose differences `conserved_quantities` are, for a
        relative drift: a change of `conserved_quantities` is measured against it."""
        raise NotImplementedError(
            f"{type(self).__name__} declares no conserved quantities of gradient flow."
        )


def predict_batch(model: eqx.Module, X: Array) -> Array:
    """`model.predict_batch(X)` for the models of `fs.models`, `jax.vmap(model)(X)` for
    any other `equinox.Module` mapping one row to a scalar."""
    if isinstance(model, AbstractModel):
        return model.predict_batch(X)
    return jax.vmap(model)(X)


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | jnp.integer):
        raise ValueError(f"`{name}` must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be ≥ {minimum}, got {value}.")
    return int(value)


def _check_scale(name: str, value, *, positive: bool = False) -> float:
    """A finite real scale ≥ 0 (> 0 with `positive`: a deep model started at zero
    sits on a saddle that gradient flow never leaves)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"`{name}` must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(
            f"`{name}` must be a finite number {'>' if positive else '≥'} 0, got {value!r}"
            + (
                " (all-zero layers are a saddle point that gradient flow never leaves)."
                if positive and value == 0 else "."
            )
        )
    return value


def _need_key(key, init_scale, name: str):
    if key is None:
        raise ValueError(
            f"{name} with a random initialisation needs `key=jax.random.key(seed)`."
        )
    return key
