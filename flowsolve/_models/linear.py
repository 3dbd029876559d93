import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from .base import AbstractModel, _check_positive_int, _check_scale, _need_key


class Linear(AbstractModel):
    r"""Linear predictor $f(x) = w^\top x$ (1-homogeneous).

    **Arguments:**

    - `d`: input dimension.
    - `key`: PRNG key; only needed when `init_scale > 0`.
    - `init_scale`: standard deviation of each entry of $w$ at initialisation
        (default 0: start at the origin, as in Soudry et al. 2018).
    - `weight`: an explicit initial $w$ of shape `(d,)` (overrides the above).
    """

    weight: Array
    homogeneity: int = eqx.field(static=True)

    def __init__(
        self,
        d: int,
        *,
        key: PRNGKeyArray | None = None,
        init_scale: float = 0.0,
        weight: ArrayLike | None = None,
    ):
        d = _check_positive_int("d", d)
        if weight is not None:
            weight = jnp.asarray(weight, dtype=float)
            if weight.shape != (d,):
                raise ValueError(f"`weight` must have shape ({d},), got {weight.shape}.")
            self.weight = weight
        elif _check_scale("init_scale", init_scale) == 0:
            self.weight = jnp.zeros(d)
        else:
            key = _need_key(key, init_scale, "Linear")
            self.weight = init_scale * jr.normal(key, (d,))
        self.homogeneity = 1

    def __call__(self, x: Array) -> Array:
        return jnp.dot(self.weight, x)

    def predict_batch(self, X: Array) -> Array:
        return X @ self.weight

    def end_to_end(self) -> Array:
        return self.weight

    def gram(self, X: Array) -> Array:
        r"""$JJ^\top = XX^\top$: the Jacobian of the predictions is $X$."""
        return X @ X.T
