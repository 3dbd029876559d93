import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.flatten_util import ravel_pytree
from jaxtyping import ArrayLike, PyTree

from .._problem import Problem
from .base import AbstractFlow


class GradientFlow(AbstractFlow):
    r"""Gradient flow $\dot\theta = -\nabla L(\theta)$ of a `Problem`.

    The gradient is one VJP of the training predictions with the cotangent
    $-\ell'(f_i)/n$, and in the log clock that cotangent carries the time factor:
    $-e^{s}\ell'(f_i)/n = \mp\exp(s - \mathrm{softplus}(u_i) - \log n)$ for the
    logistic loss, so neither $e^s$ nor $e^{-u_i}$ is ever formed.

    Usable directly as a `diffrax.ODETerm` (linear clock), and by `fs.solve`.
    """

    problem: Problem

    def direction(self, params: PyTree, log_scale: ArrayLike = 0.0) -> PyTree:
        g = self.problem.gradient(self.model(params), log_scale)
        return jtu.tree_map(jnp.negative, g)

    def gauss_newton(self, params: PyTree, log_scale: ArrayLike = 0.0):
        r"""The Gauss–Newton approximation of this flow's Jacobian,
        $-e^{\text{log\_scale}} J^\top \mathrm{diag}(\ell''_i/n) J = -B^\top B$
        (J: the Jacobian of the training predictions in `params`), as
        `(apply_B, apply_Bt, K)`: `apply_B(v)` = $Bv$ (one JVP), `apply_Bt(z)` =
        $B^\top z$ (its transpose, a pytree like `params`), and the n×n Gram
        matrix $K = BB^\top$ (the model's closed form where it has one, else from
        per-sample gradients). The weights $e^{\text{log\_scale}}\ell''_i/n$ are
        formed in the log domain. Exact at an interpolating minimum of the squared
        loss, where the residual term of the Hessian vanishes."""
        from .natural import _has_gram, per_sample_jacobian

        problem = self.problem
        static = self.static

        def predict(p):
            return problem.predict(eqx.combine(p, static))

        f, jvp = jax.linearize(predict, params)
        transpose = jax.linear_transpose(jvp, params)
        log_w = log_scale + problem.loss.log_curvature(f, problem.y) - jnp.log(problem.n)
        sqrt_w = jnp.exp(0.5 * log_w).astype(f.dtype)
        model = eqx.combine(params, static)
        if _has_gram(model):
            G = model.gram(problem.X)
        else:
            theta, unravel = ravel_pytree(params)
            J = per_sample_jacobian(static, unravel, theta, problem.X)
            G = J @ J.T
        K = sqrt_w[:, None] * G * sqrt_w[None, :]
        return (
            lambda v: sqrt_w * jvp(v),
            lambda z: transpose(sqrt_w * z)[0],
            K,
        )

    # The Gauss–Newton system as a diffrax term in the linear clock (see Ros34PW2).
    def has_gauss_newton(self) -> bool:
        return True

    def gauss_newton_system(self, t, y, args):
        return self.gauss_newton(y, 0.0)
