import abc

import diffrax
import equinox as eqx
import jax.tree_util as jtu
from jaxtyping import ArrayLike, PyTree

from .._problem import Problem


class AbstractFlow(diffrax.AbstractTerm):
    r"""A training flow $\dot\theta = v(\theta)$ of a `Problem`.

    A flow is a diffrax term over the model's inexact arrays (the pytree
    `eqx.filter(model, eqx.is_inexact_array)`; a model whose leaves are all
    arrays works as the state directly), in the linear clock $t$, so it can be
    passed to `diffrax.diffeqsolve` as it is. `flow.term("log")` gives the same
    flow in the log clock $s = \log(1 + t)$: $d\theta/ds = e^s\, v(\theta)$, with
    $e^s$ fused into the log-domain loss derivative.

    Subclasses implement `direction(params, log_scale)`: the velocity scaled by
    $e^{\text{log\_scale}}$, formed without ever computing $e^{\text{log\_scale}}$
    on its own.
    """

    problem: eqx.AbstractVar[Problem]

    @abc.abstractmethod
    def direction(self, params: PyTree, log_scale: ArrayLike = 0.0) -> PyTree:
        """`e^{log_scale} · v(θ)` for the parameter pytree `params`."""

    @property
    def no_jacobian_reason(self) -> str | None:
        """Why solvers must not differentiate this vector field (implicit and
        Rosenbrock methods, `"auto"`'s stiffness estimate), or `None` when they may."""
        return None

    @property
    def static(self):
        return eqx.partition(self.problem.model, eqx.is_inexact_array)[1]

    def model(self, params: PyTree) -> eqx.Module:
        """The model with parameters `params` (the flow's state)."""
        return eqx.combine(params, self.static)

    def term(self, clock: str = "linear") -> diffrax.AbstractTerm:
        """This flow as a diffrax term in the `"linear"` or `"log"` clock."""
        if clock == "linear":
            return self
        if clock == "log":
            return _LogClockTerm(self)
        raise ValueError(f"Unknown clock {clock!r}; use 'linear' or 'log'.")

    # diffrax.AbstractTerm interface: an ODE term dθ/dt = v(θ).
    def vf(self, t, y, args):
        return self.direction(y, 0.0)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf, control):
        return jtu.tree_map(lambda v: control * v, vf)


class _LogClockTerm(diffrax.AbstractTerm):
    r"""The flow in the log clock $s = \log(1 + t)$: $d\theta/ds = e^s v(\theta)$."""

    flow: AbstractFlow

    def vf(self, t, y, args):
        return self.flow.direction(y, t)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf, control):
        return jtu.tree_map(lambda v: control * v, vf)

    # The Gauss–Newton system of gradient flows (see `Ros34PW2`), with e^s.
    def has_gauss_newton(self) -> bool:
        return callable(getattr(self.flow, "gauss_newton", None))

    def gauss_newton_system(self, t, y, args):
        return self.flow.gauss_newton(y, t)
