"""Small numerical helpers shared across the package."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike


def safe_log_abs(x: ArrayLike) -> tuple[Array, Array]:
    """`(log|x|, sign(x))` with finite gradients at `x = 0` (double-`where`)."""
    x = jnp.asarray(x)
    nonzero = x != 0
    x_safe = jnp.where(nonzero, x, 1.0)
    log_abs = jnp.where(nonzero, jnp.log(jnp.abs(x_safe)), -jnp.inf)
    return log_abs, jnp.sign(x)


def safe_norm(x: ArrayLike, ord: int | float = 2) -> Array:
    """Vector norm of a flattened array whose gradient is finite (zero) at `x = 0`."""
    x = jnp.ravel(jnp.asarray(x))
    if ord == 1:
        return jnp.sum(jnp.abs(x))
    # Scaled by max|x| so that the squares neither overflow (entries past ~1e154)
    # nor underflow (below ~1e-154). The norm does not depend on the scale, so no
    # gradient goes through it (through it, the backward pass forms scale³ and
    # overflows).
    big = jax.lax.stop_gradient(jnp.max(jnp.abs(x), initial=0.0))
    nonzero = big > 0
    safe = jnp.where(nonzero, big, 1.0)
    # The sum is ≥ 1 where x ≠ 0; at x = 0 the inner `where` keeps sqrt off 0, whose
    # infinite derivative would make the gradient NaN (it is 0 there).
    sq = jnp.sum((x / safe) ** 2)
    return jnp.where(nonzero, safe * jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def safe_divide(num: ArrayLike, den: ArrayLike) -> Array:
    """`num / den`, and 0 where `den == 0` (the normalised margin of a zero predictor)."""
    num = jnp.asarray(num)
    den = jnp.asarray(den)
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1.0), 0.0)
