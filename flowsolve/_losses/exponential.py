import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .base import AbstractLoss


class Exponential(AbstractLoss):
    r"""Exponential loss $\ell(f, y) = e^{-y f}$ on labels $y \in \{\pm1\}$.

    $\log\ell = -yf$ exactly, so the log-loss is exact at any margin.
    """

    classification = True

    def log_per_sample(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        return -y * f

    def scaled_derivative(
        self, f: Float[Array, " n"], y: Float[Array, " n"], log_scale: ArrayLike = 0.0
    ) -> Array:
        return -y * jnp.exp(log_scale - y * f)

    def log_abs_derivative(self, f, y):
        return -y * f, -y

    def log_curvature(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        return -y * f

    def newton_ratio(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        return -y * jnp.ones_like(f)
