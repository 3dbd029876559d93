import jax.numpy as jnp
import jax.tree_util as jtu
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
