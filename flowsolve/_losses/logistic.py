import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .base import AbstractLoss


def log_softplus_neg(u: Array) -> Array:
    r"""$\log\log(1 + e^{-u})$, accurate for every $u$.

    For $u > 0$ write $z = e^{-u}$: $\log\log(1+z) = -u + \log(\log(1+z)/z)$, and
    $\log(1+z)/z \in [\log 2, 1]$ is computed without cancellation; once $z$
    underflows to zero ($u \gtrsim 745$) the ratio is exactly 1, so the result is
    $-u$ instead of $\log 0 = -\infty$.
    """
    pos = u > 0
    u_pos = jnp.where(pos, u, 1.0)
    u_neg = jnp.where(pos, -1.0, u)
    z = jnp.exp(-u_pos)
    tiny = z == 0
    z_safe = jnp.where(tiny, 1.0, z)
    ratio = jnp.where(tiny, 1.0, jnp.log1p(z_safe) / z_safe)
    return jnp.where(pos, -u_pos + jnp.log(ratio), jnp.log(jax.nn.softplus(-u_neg)))


class Logistic(AbstractLoss):
    r"""Logistic loss $\ell(f, y) = \log(1 + e^{-y f})$ on labels $y \in \{\pm1\}$.

    Its derivative $\partial\ell/\partial f = -y\,\sigma(-yf) = -y\,e^{-\mathrm{softplus}(yf)}$
    is formed in the log domain, so $e^s\,\partial\ell/\partial f$ stays accurate at
    any margin.
    """

    classification = True

    def log_per_sample(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        return log_softplus_neg(y * f)

    def scaled_derivative(
        self, f: Float[Array, " n"], y: Float[Array, " n"], log_scale: ArrayLike = 0.0
    ) -> Array:
        u = y * f
        return -y * jnp.exp(log_scale - jax.nn.softplus(u))

    def log_abs_derivative(self, f, y):
        return -jax.nn.softplus(y * f), -y

    def log_curvature(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        # σ(u)σ(−u) = exp(−softplus(−u) − softplus(u)); never 1 − σ, which cancels.
        u = y * f
        return -jax.nn.softplus(u) - jax.nn.softplus(-u)

    def newton_ratio(self, f: Float[Array, " n"], y: Float[Array, " n"]) -> Array:
        # −yσ(−u) / (σ(u)σ(−u)) = −y/σ(u) = −y(1 + e^{−u}) = −y·exp(softplus(−u)).
        return -y * jnp.exp(jax.nn.softplus(-(y * f)))
