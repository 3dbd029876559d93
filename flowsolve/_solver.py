"""Resolve the friendly solver names to diffrax solvers, in one place."""

import functools
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx

from ._rosenbrock import Rodas5P, Ros34PW2


_EXPLICIT = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
    "ralston": diffrax.Ralston,
    "midpoint": diffrax.Midpoint,
    "euler": diffrax.Euler,
}
_IMPLICIT = {
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno4": diffrax.Kvaerno4,
    "kvaerno5": diffrax.Kvaerno5,
    "implicit_euler": diffrax.ImplicitEuler,
}
_ROSENBROCK = {
    "rodas5p": Rodas5P,
    "ros34pw2": Ros34PW2,
    "ros34pw2-gn": lambda: Ros34PW2(jacobian="gauss-newton"),
}
SOLVER_NAMES = tuple(sorted(_EXPLICIT) + sorted(_IMPLICIT) + sorted(_ROSENBROCK) + ["auto"])

#: Above this many parameters, "auto" stays explicit: an implicit step forms and
#: factorises the dense p×p Jacobian of the vector field. A Rodas5P step at
#: p = 2 700 (depth-3 factorisation of a 30 × 30 matrix) took 0.36 s on 2 CPU cores
#: (Jacobian 0.14 s, LU 0.22 s); at 5 000, about 1.5 s and 0.4 GB.
AUTO_IMPLICIT_MAX_PARAMS = 5000
#: The Gauss–Newton W-method (squared-loss gradient flows with fewer training
#: points than parameters) factorises an n×n system instead: its limit is on n.
AUTO_GAUSS_NEWTON_MAX_N = 5000
#: The same for piecewise-smooth flows (ReLU networks), whose explicit solver of
#: choice (Bosh3) the switch cannot use: they keep the earlier limit.
AUTO_IMPLICIT_MAX_PARAMS_KINKED = 2000


def _newton():
    # Newton iterations with the step-size controller's rtol/atol: the combination
    # measured to keep implicit log-clock solves at a near-constant step count
    # (diffrax's default chord iteration rejects about half of its steps there).
    # Convergence is judged from the contraction rate of the iterates, not by the
    # residual against `atol` ("Cauchy" termination): on the log clock the state
    # grows like log t, and once rounding noise in the residual (~eps·|θ|) exceeds
    # atol the residual test can never pass. Measured on the 200 × 50 logistic
    # problem: with the residual test Kvaerno5 stalls near log t ≈ 7e4 (rtol 1e-8);
    # with the rate test it takes 199–210 steps at every horizon up to log t = 1e6.
    return diffrax.with_stepsize_controller_tols(optx.Newton)(cauchy_termination=False)


#: "auto" goes implicit when an explicit solver would need more than this many
#: further steps for stability alone (spectral radius × remaining span / 3.3).
#: Calibrated on the 200 × 50 logistic log clock (rtol 1e-8), where a Rodas5P step
#: costs ~4 Tsit5 steps: with 300, auto is within 1.05× of the faster of Tsit5 and
#: Rodas5P at t = 1e2, 1e4, 1e8 and e^100, and switches early at longer horizons
#: (5000, the figure for Kvaerno5 + Newton, left log t = 30 at Tsit5's 1.7× cost).
AUTO_STIFF_STEPS = 300

#: The tolerance `AUTO_STIFF_STEPS` was calibrated at. At looser tolerances the
#: implicit method needs fewer steps for accuracy, while the explicit one still
#: needs as many for stability, so the threshold scales as (rtol / 1e-8)^(−1/5)
#: (Rodas5P's step counts on that problem fall about so: 153, 48, 24, 18 steps to
#: t = 1e8 at rtol 1e-8, 1e-6, 1e-4, 1e-3), down to `AUTO_STIFF_MIN_SCALE`; tighter
#: tolerances keep 300.
AUTO_STIFF_RTOL = 1e-8
AUTO_STIFF_MIN_SCALE = 0.05


def auto_threshold_scale(rtol: float | None) -> float:
    """`"auto"`'s switch threshold at `rtol`, as a fraction of `AUTO_STIFF_STEPS`."""
    if rtol is None or not rtol > 0:
        return 1.0
    return float(min(1.0, max(AUTO_STIFF_MIN_SCALE, (rtol / AUTO_STIFF_RTOL) ** -0.2)))


#: A Rodas5P step's cost in Tsit5 steps at p = 50 (200 × 50 logistic, log clock);
#: it grows like `stiff_threshold` with p.
RODAS_COST = 4.0


#: A Gauss–Newton ROS34PW2 step's cost in Tsit5 steps per 100 training points.
#: Measured at n = 464 (depth-3 factorisation of a 30 × 30 matrix, p = 2 700): a
#: step 3.4–3.9 ms (Gram matrix 0.7 ms, Cholesky 1.8 ms), a Tsit5 step 0.16–0.21 ms,
#: ~20 of them; 6 per 100 points puts it at 28. The choice is not sensitive: 3,
#: 4.5, 6 and 9 took that completion to t = 1e8 in 0.22–0.28 s.
GAUSS_NEWTON_COST = 6.0


def gauss_newton_cost(n: int) -> float:
    """A Gauss–Newton W-method step's cost in Tsit5 steps, for `n` training points."""
    return max(RODAS_COST, GAUSS_NEWTON_COST * n / 100.0)


def stiff_threshold(num_params: int) -> float:
    """Explicit steps beyond which going implicit pays, for `num_params` parameters.

    An implicit step forms the p×p Jacobian (p JVPs) and factorises it, so its cost
    relative to an explicit step grows with p (about p^1.5 measured for implicit
    Runge–Kutta steps between p = 50 and 800). `AUTO_STIFF_STEPS` is calibrated at
    p = 50 and scaled by (p/50)^1.5 above it.
    """
    return AUTO_STIFF_STEPS * max(1.0, num_params / 50.0) ** 1.5


def spectral_radius(term, s0, y0, iterations: int = 12):
    """Power iteration with JVPs: |largest eigenvalue| of the vector field's Jacobian
    at `(s0, y0)`. Cheap (`iterations` JVPs); used to size explicit steps."""
    return float(_power_iteration(term, jnp.asarray(s0, jnp.result_type(float)), y0, iterations))


def max_spectral_radius(term, s0, y0s, stacked_term: bool = False, iterations: int = 12):
    """The largest `spectral_radius` over an ensemble's members (`y0s`: stacked
    initial points; `stacked_term`: the term carries a member axis too), in one
    vmapped call."""
    return float(_max_power_iteration(term, jnp.asarray(s0, jnp.result_type(float)), y0s, stacked_term, iterations))


@eqx.filter_jit
def _max_power_iteration(term, s0, y0s, stacked_term, iterations):
    if stacked_term:
        rho = eqx.filter_vmap(lambda t, y: _power_iteration(t, s0, y, iterations))(term, y0s)
    else:
        rho = eqx.filter_vmap(lambda y: _power_iteration(term, s0, y, iterations))(y0s)
    return jnp.max(rho)


# Module level, so that it compiles once per flow structure: defined inside
# `spectral_radius` it was a new function, traced and compiled (0.2 s on a
# depth-3 factorisation) on every call.
@eqx.filter_jit
def _power_iteration(term, s0, y0, iterations):
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(y0)
    f = lambda v: ravel_pytree(term.vf(s0.astype(flat.dtype), unravel(v), None))[0]
    _, jvp = jax.linearize(f, flat)
    v = jnp.cos(jnp.arange(flat.size, dtype=flat.dtype) + 1.0)  # deterministic start
    v = v / jnp.linalg.norm(v)

    def body(_, carry):
        v, _ = carry
        w = jvp(v)
        norm = jnp.linalg.norm(w)
        return jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), v), norm

    _, rho = jax.lax.fori_loop(0, iterations, body, (v, jnp.asarray(0.0, flat.dtype)))
    return rho


def _last_stage_difference(tableau) -> np.ndarray:
    """Coefficients `d` with `y_s − y_{s−1} = Σ_j d_j k_j` for the last two stages
    of a Runge–Kutta tableau whose last two stages share the time `c = 1`."""
    stages = len(tableau.c) + 1
    rows = np.zeros((stages, stages))
    for i, row in enumerate(tableau.a_lower, start=1):
        rows[i, : len(row)] = row
    if getattr(tableau, "a_diagonal", None) is not None:
        rows[np.arange(stages), np.arange(stages)] = tableau.a_diagonal
    return rows[-1] - rows[-2]


def _last_stage_norms(k, d):
    """`(‖k_s − k_{s−1}‖², ‖y_s − y_{s−1}‖²)` from a step's stage increments `k`
    (leading axis: stages; `k_i = h·f(y_i)`) and the coefficients `d` of
    `_last_stage_difference`."""
    ks = jtu.tree_leaves(k)
    dk2 = sum(jnp.sum((x[-1] - x[-2]) ** 2) for x in ks)
    dy2 = sum(jnp.sum(jnp.tensordot(jnp.asarray(d, x.dtype), x, axes=1) ** 2) for x in ks)
    return dk2, dy2


def last_stage_rho_h(k, d):
    """`ρ·h ≈ ‖k_s − k_{s−1}‖ / ‖y_s − y_{s−1}‖` from a step's stage increments `k`
    and the coefficients `d` of `_last_stage_difference`: exact for a linear field
    along the stiff direction (the test of Hairer & Wanner's DOPRI5)."""
    return _rho_h(*_last_stage_norms(k, d))


def _rho_h(dk2, dy2):
    # ρ·h from the squared norms of `_last_stage_norms` (0 where ‖y_s − y_{s−1}‖ is).
    return jnp.sqrt(dk2 / jnp.where(dy2 > 0, dy2, jnp.inf))


class _SwitchInterpolation(diffrax.AbstractLocalInterpolation):
    """Dense output of an `AutoSwitch` step: Tsit5's own interpolant for explicit
    steps, the cubic Hermite interpolant through both ends (Rodas5P's) for
    implicit ones."""

    t0: Any
    t1: Any
    explicit: diffrax.AbstractLocalInterpolation
    implicit: diffrax.AbstractLocalInterpolation
    stiff: Any

    def __init__(self, *, t0, t1, y0, y1, k, stiff):
        self.t0 = t0
        self.t1 = t1
        self.explicit = diffrax.Tsit5.interpolation_cls(t0=t0, t1=t1, y0=y0, y1=y1, k=k)
        # `k` holds Tsit5's seven stages; an implicit step stores h·f(t0, y0) first
        # and h·f(t1, y1) last (see `AutoSwitch.step`), what the Hermite form reads.
        self.implicit = Rodas5P.interpolation_cls(t0=t0, t1=t1, y0=y0, y1=y1, k=k)
        self.stiff = stiff

    def evaluate(self, t0, t1=None, left=True):
        a = self.explicit.evaluate(t0, t1, left)
        b = self.implicit.evaluate(t0, t1, left)
        return jtu.tree_map(lambda x, y: jnp.where(self.stiff, y, x), a, b)


class AutoSwitch(diffrax.AbstractAdaptiveSolver):
    """Tsit5 while the flow is not stiff, Rodas5P (or the Gauss–Newton ROS34PW2,
    see `auto_switch`) once it is: the explicit → implicit switch of
    stiffness-detecting composite integrators (Hairer & Wanner's DOPRI5 test;
    DifferentialEquations.jl's `AutoTsit5(Rodas5P())`).

    Tsit5 ends with two stages at `c = 1`, so each explicit step gives a free
    estimate of `ρ·h` (ρ the spectral radius of the vector field's Jacobian along
    the stiff direction): `‖k_7 − k_6‖ / ‖y_7 − y_6‖` (Hairer, Nørsett & Wanner,
    *Solving ODEs II*, IV.2). The solver switches to the implicit method when an
    explicit one would need more than `threshold · scale` further steps for
    stability alone — `ρ · (horizon − t) / 3.3`, 3.3 being Tsit5's stability limit
    on the negative real axis — on `patience` consecutive accepted steps (`scale`,
    an array so that tolerances vary without recompiling, lowers the threshold at
    loose tolerances: see `auto_threshold_scale`). The switch is one
    way: the stiffness of the flows this library solves (log-clock classification
    flows) does not go away. Switching pays only when the remaining horizon is long,
    because an implicit step costs several explicit ones (a Jacobian and an LU
    factorisation); the threshold encodes that.

    With `axis_name` (set by `fs.ensemble` on the axis it vmaps members over) the
    members switch together, when the first of them does. Under `vmap` a `lax.cond`
    whose predicate differs between members runs both branches for every member:
    a Jacobian and an LU factorisation on each explicit step. A predicate reduced
    over the member axis is one value, so only the branch taken runs.
    """

    explicit: diffrax.AbstractSolver
    implicit: diffrax.AbstractSolver
    horizon: Any
    stiff0: Any
    threshold: float = eqx.field(static=True, default=float(AUTO_STIFF_STEPS))
    patience: int = eqx.field(static=True, default=5)
    only_when_limited: bool = eqx.field(static=True, default=False)
    cost: float = eqx.field(static=True, default=float(RODAS_COST))
    axis_name: Any = eqx.field(static=True, default=None)
    scale: Any = None

    term_structure = diffrax.AbstractTerm
    interpolation_cls = _SwitchInterpolation

    def order(self, terms):
        return 5

    def init(self, terms, t0, t1, y0, args):
        # The state is the explicit solver's: the implicit one (Rodas5P) keeps none.
        inner = self.explicit.init(terms, t0, t1, y0, args)
        dtype = jnp.result_type(t0, t1, float)
        # The switch's own state packed in one small array: one loop-carried buffer,
        # one fused update. [stiff flag, consecutive steps for a switch, time of the
        # last switch to the implicit method, explicit steps still to hold after a
        # switch back, the next such hold, ρ at the last explicit step, the last
        # step size, switches to the implicit method so far].
        m = [self.stiff0, 0.0, jnp.nan, 0.0, self.patience * self.cost, 0.0, 0.0, 0.0]
        return inner, jnp.stack([jnp.asarray(x, dtype) for x in m])

    @staticmethod
    def mode(solver_state):
        """`(stiff, switched_at)` from a solver state of this solver: whether the
        implicit method is on, and since when (NaN if it is not)."""
        _, m = solver_state
        return m[0] > 0, m[2]

    @property
    def label(self) -> str:
        """`info["solver"]` of a solve that ends implicit: `"tsit5→rodas5p"` or,
        with the Gauss–Newton W-method, `"tsit5→ros34pw2-gn"`."""
        if isinstance(self.implicit, Ros34PW2):
            return "tsit5→ros34pw2" + ("-gn" if self.implicit.jacobian == "gauss-newton" else "")
        return "tsit5→rodas5p"

    @staticmethod
    def switches(solver_state):
        """How many times a solve with this solver state went implicit."""
        _, m = solver_state
        return m[7]

    def func(self, terms, t0, y0, args):
        return self.explicit.func(terms, t0, y0, args)

    def _all(self, x):
        # Under `axis_name`: true when true for every member.
        return x if self.axis_name is None else jax.lax.pmin(x, self.axis_name)

    def _any(self, x):
        return x if self.axis_name is None else jax.lax.pmax(x, self.axis_name)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        inner, m = solver_state
        own = m[0] > 0
        # The branch this step takes: shared by all members under `axis_name`.
        stiff = self._any(own)

        def run(solver):
            return lambda: solver.step(terms, t0, t1, y0, args, inner, made_jump)

        def implicit():
            # Rodas5P keeps no state between steps; Tsit5's rides along unchanged
            # (and is restarted on a switch back: its first-same-as-last stage is
            # stale by then).
            y1, y_error, dense, _, result = self.implicit.step(
                terms, t0, t1, y0, args, None, made_jump
            )
            # Tsit5's dense output carries its seven stages; lay the Hermite ends out
            # in the same shape, h·f(t0, y0) first and h·f(t1, y1) last.
            stages = len(_D_EXPLICIT)
            k = jtu.tree_map(
                lambda k: jnp.zeros((stages,) + k.shape[1:], k.dtype).at[0].set(k[0]).at[-1].set(k[-1]),
                dense["k"],
            )
            return y1, y_error, dict(dense, k=k), inner, result

        y1, y_error, dense, inner1, result = jax.lax.cond(stiff, implicit, run(self.explicit))
        h = t1 - t0
        # Explicit steps: switch when ρ·(horizon − t1)/3.3 > threshold, i.e. (ρh)²
        # (horizon − t1)² > (3.3·threshold·h)², with (ρh)² = dk2/dy2 — no divisions
        # to guard.
        dk2, dy2 = _last_stage_norms(dense["k"], _D_EXPLICIT)
        # With `only_when_limited` (linear clock), counted only while the explicit
        # step is stability-limited (ρh near Tsit5's bound 3.3): a transient
        # stiffness the step size never meets (natural-gradient flow from a
        # near-singular Fisher) is not switched for. The log clock's stiffness
        # grows steadily and is best met early: there the projection alone decides.
        limited = (dk2 > (0.7 * 3.3) ** 2 * dy2) | (not self.only_when_limited)
        threshold = self.threshold if self.scale is None else self.threshold * self.scale
        far = dk2 * (self.horizon - t1) ** 2 > dy2 * (3.3 * threshold * h) ** 2
        hot = ~stiff & limited & far & (m[3] <= 0)
        rho = jnp.where(stiff, m[5], _rho_h(dk2, dy2) / h)
        if self.only_when_limited:
            # Implicit steps (linear clock only): switch back when they stay short of
            # `cost / 2` explicit steps once they have stopped growing (< 2× the
            # step before; the controller grows a step at most 10× at a time), i.e.
            # the implicit method is held to small steps by accuracy, not by
            # stability (a transient: the saddle escape of a matrix factorisation).
            # The next switch to implicit then waits out a hold of explicit steps
            # that doubles each time, so switching back and forth costs a bounded
            # share of the solve.
            # (Not before ρ has been measured: a solve resumed in implicit mode.)
            short = stiff & (h * m[5] < 3.3 * self.cost / 2) & (h < 2 * m[6]) & (m[5] > 0)
            count = jnp.where(hot | short, m[1] + 1, 0)
            back = self._all(stiff & (count >= self.patience))
        else:
            # The log clock's stiffness does not go away: one way.
            count = jnp.where(hot, m[1] + 1, 0)
            back = jnp.zeros((), bool)
        switch = self._any(~stiff & (count >= self.patience))
        now = (stiff & ~back) | switch
        m1 = jnp.stack([
            now,
            jnp.where(switch | back, 0, count),
            jnp.where(switch & ~own, t1, jnp.where(back, jnp.nan, m[2])),
            jnp.where(back, m[4], jnp.maximum(m[3] - 1, 0)),
            jnp.where(back, 2 * m[4], m[4]),
            rho,
            h,
            m[7] + switch,
        ])
        if self.only_when_limited:
            inner1 = _restart_fsal(inner1, back)
        dense = dict(dense, stiff=stiff)
        return y1, y_error, dense, (inner1, m1.astype(m.dtype)), result


def _restart_fsal(state, restart):
    """Tsit5's solver state `(first_step, f0)` with `first_step` set where `restart`:
    its next step then evaluates `f(t0, y0)` afresh instead of reusing the last
    stage of its own previous step."""
    first_step, f0 = state
    return first_step | restart, f0


_D_EXPLICIT = _last_stage_difference(diffrax.Tsit5.tableau)


def gauss_newton_size(flow, num_params: int) -> int | None:
    """`n` where `"auto"`'s implicit side is the Gauss–Newton ROS34PW2: gradient
    flows of the squared loss with fewer training points than parameters. There the
    Gauss–Newton matrix is the Hessian at an interpolating minimum (the residuals
    vanish), which is where such a flow turns stiff, and its n×n Gram system is
    the smaller one. (Classification losses keep Rodas5P: at large margins the
    residual part of their Hessian is as large as the Gauss–Newton part.)"""
    from ._flow import GradientFlow
    from ._flow.natural import AUTO_MEMORY_BUDGET, _has_gram
    from ._losses import Squared

    if isinstance(flow, GradientFlow) and isinstance(flow.problem.loss, Squared):
        n = flow.problem.n
        # Without a closed-form Gram matrix the step forms the n×p per-sample
        # Jacobian: only while it fits the budget natural-gradient flow uses.
        fits = _has_gram(flow.problem.model) or n * num_params * 8 <= AUTO_MEMORY_BUDGET
        return n if n < num_params and fits else None
    return None


def auto_switch(
    horizon, *, num_params: int, only_when_limited: bool = False, gauss_newton_n: int | None = None,
    rtol: float | None = None,
) -> AutoSwitch:
    """`"auto"`'s switching solver: Tsit5, then Rodas5P once stiff; or, with
    `gauss_newton_n` (a squared-loss gradient flow on n < p points), the
    Gauss–Newton ROS34PW2, whose step costs an n×n system instead of p×p. `rtol`
    lowers the switch threshold when looser than 1e-8 (`auto_threshold_scale`)."""
    cost = _implicit_cost(num_params, gauss_newton_n)
    return AutoSwitch(
        diffrax.Tsit5(),
        Rodas5P() if gauss_newton_n is None else Ros34PW2(jacobian="gauss-newton"),
        horizon=jnp.asarray(horizon, jnp.result_type(float)),
        stiff0=jnp.asarray(False),
        threshold=AUTO_STIFF_STEPS * cost / RODAS_COST,
        only_when_limited=only_when_limited,
        cost=cost,
        scale=jnp.asarray(auto_threshold_scale(rtol), jnp.result_type(float)),
    )


def _implicit_cost(num_params: int, gauss_newton_n: int | None) -> float:
    """An implicit step of `"auto"`'s stiff method in Tsit5 steps: Rodas5P's
    (growing with p), or the Gauss–Newton W-method's (growing with n)."""
    if gauss_newton_n is None:
        return RODAS_COST * stiff_threshold(num_params) / AUTO_STIFF_STEPS
    return gauss_newton_cost(gauss_newton_n)


def resolve_solver(
    solver, *, clock: str, num_params: int, stiffness: float | None = None,
    horizon: float | None = None, smooth: bool = True, gauss_newton_n: int | None = None,
    rtol: float | None = None,
) -> tuple[diffrax.AbstractSolver, str]:
    """Return `(diffrax solver, name)` for `solver` = a name or a diffrax solver.

    `"auto"`, for up to `AUTO_IMPLICIT_MAX_PARAMS` parameters and a smooth flow:
    Tsit5 switching to Rodas5P once stiff. On the log clock the switch is one way
    (classification flows are stiff there: support-vector margins equilibrate fast
    while the direction drifts slowly). On the linear clock it is made only while
    Tsit5 is stability-limited and switches back when Rodas5P's steps stay short
    (a flow that converges to a minimum is stiff from there on, however it
    started; a saddle escape on the way is not). Rodas5P when `stiffness`
    (spectral radius of the vector field's Jacobian at θ0 × the span) says so and
    no horizon is known. Otherwise Tsit5, or Bosh3 for piecewise-smooth flows
    (`smooth=False`: ReLU networks)."""
    if isinstance(solver, diffrax.AbstractSolver):
        return solver, type(solver).__name__
    if not isinstance(solver, str):
        raise ValueError(
            f"`solver` must be a name ({', '.join(SOLVER_NAMES)}) or a diffrax solver "
            f"instance, got {solver!r}."
        )
    name = solver.lower()
    if name == "auto":
        small = num_params <= (AUTO_IMPLICIT_MAX_PARAMS if smooth else AUTO_IMPLICIT_MAX_PARAMS_KINKED)
        if clock == "linear" and smooth and gauss_newton_n is not None:
            # The Gauss–Newton W-method never forms a p×p matrix: its size is n.
            small = gauss_newton_n <= AUTO_GAUSS_NEWTON_MAX_N
        else:
            gauss_newton_n = None
        if small and clock == "log" and horizon is not None:
            return auto_switch(horizon, num_params=num_params, rtol=rtol), "auto"
        threshold = (AUTO_STIFF_STEPS * _implicit_cost(num_params, gauss_newton_n) / RODAS_COST
                     * auto_threshold_scale(rtol))
        stiff = stiffness is not None and stiffness / 3.3 > threshold
        if small and (smooth or stiff) and horizon is not None:
            # Start explicit whatever the estimate at θ0 and let the in-flight test
            # decide: the estimate cannot tell a transient (NGF from a near-singular
            # Fisher: Tsit5 takes 122 steps where it predicted 8e4) from lasting
            # stiffness, nor see stiffness to come (a matrix factorisation that has
            # converged at t = 1e5 leaves Tsit5 ~ρt/3.3 steps: 6.7e6 to t = 1e8).
            return auto_switch(
                horizon, num_params=num_params, only_when_limited=True, gauss_newton_n=gauss_newton_n,
                rtol=rtol,
            ), "auto"
        if small and (clock == "log" or stiff):
            name = "rodas5p" if gauss_newton_n is None else "ros34pw2-gn"
        else:
            # A piecewise-smooth field (ReLU) defeats high order: every kink costs
            # rejected steps whatever the order, and between kinks Bosh3's cheaper
            # steps go as far. Measured on a width-1000 two-layer ReLU flow to
            # t = 1e4: Bosh3 reaches 6e-4 relative accuracy in 120 evaluations,
            # 1.1e-4 in 639 (Tsit5: 1.4e-3 in 285, 3.6e-4 in 1269).
            name = "tsit5" if smooth else "bosh3"
    if name in _EXPLICIT:
        return _EXPLICIT[name](), name
    if name in _IMPLICIT:
        return _IMPLICIT[name](root_finder=_newton()), name
    if name in _ROSENBROCK:
        return _ROSENBROCK[name](), name
    raise ValueError(
        f"Unknown solver {solver!r}. Choose one of: {', '.join(SOLVER_NAMES)}; or pass "
        "a diffrax solver such as `diffrax.Kvaerno5()`."
    )


def is_adaptive(solver: diffrax.AbstractSolver) -> bool:
    return isinstance(solver, diffrax.AbstractAdaptiveSolver) or (
        isinstance(solver, diffrax.AbstractWrappedSolver) and is_adaptive(solver.solver)
    )


def evals_per_step(solver: diffrax.AbstractSolver) -> tuple[int, int] | None:
    """`(initial, per_step)` vector-field evaluations of an explicit Runge–Kutta
    solver (FSAL-aware), or `None` where the count is not fixed (implicit solvers,
    whose Newton iterations vary)."""
    tableau = getattr(type(solver), "tableau", None)
    if not isinstance(solver, diffrax.AbstractERK) or tableau is None:
        return None
    stages = len(tableau.c) + 1
    if tableau.fsal:
        return 1, stages - 1
    return 0, stages


#: Accepted values of `fs.solve(..., error_norm=)`.
ERROR_NORMS = ("auto", "componentwise", "normwise")


def resolve_error_norm(error_norm: str, clock: str) -> bool:
    """Whether the step-size controller measures errors normwise (see `fs.solve`)."""
    if not isinstance(error_norm, str) or error_norm not in ERROR_NORMS:
        raise ValueError(
            f"`error_norm` must be one of {ERROR_NORMS}, got {error_norm!r}."
        )
    if error_norm == "auto":
        return clock == "log"
    return error_norm == "normwise"


def _rms(tree):
    """rms of all entries, scaled by the largest so that squaring cannot overflow
    (undamped NGF's θ grows like t and passed 1e154 near log t = 355: the rms was
    inf, every step met the tolerance, and the solve ran away). inf and NaN pass
    through."""
    leaves = [x for x in jtu.tree_leaves(tree) if x.size]
    size = sum(x.size for x in leaves)
    big = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(x)) for x in leaves])
    scale = jnp.where((big > 0) & jnp.isfinite(big), big, 1.0)
    rms = scale * jnp.sqrt(sum(jnp.sum(jnp.square(x / scale)) for x in leaves) / size)
    return jnp.where(jnp.isfinite(big), rms, big)


class CollapseGuard(diffrax.AbstractAdaptiveStepSizeController):
    """Wraps an adaptive controller and stops the solve (`dt_min_reached`) when the
    next step has collapsed to the floating-point resolution of the clock, instead
    of spinning until `max_steps` (e.g. when the vector field turns NaN).

    With `normwise=True` each component's error is measured against
    `atol + rtol·max(rms(θ0), rms(θ1))`, the size of the whole parameter vector,
    instead of `atol + rtol·max(|θ0ᵢ|, |θ1ᵢ|)`, its own size: what a flow's
    direction, margins and loss depend on is the error relative to ‖θ‖, and
    per-component control spends steps resolving parameters that are tiny next to
    the rest (on the 200 × 50 logistic log clock, rtol 1e-8: Kvaerno5 to log t = 1e4
    takes 131 accepted steps instead of 198, with the margin gap unchanged to 1e-9).
    """

    controller: diffrax.AbstractAdaptiveStepSizeController
    ulps: float = eqx.field(static=True, default=64.0)
    normwise: bool = eqx.field(static=True, default=False)

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):
        return self.controller.norm

    def wrap(self, direction):
        return CollapseGuard(self.controller.wrap(direction), self.ulps, self.normwise)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        return self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        if self.normwise and y_error is not None:
            # The wrapped controller scales by max(|y0ᵢ|, |y1ᵢ|) (and falls back to
            # y0 where y1 is NaN); handing it the RMS sizes in every slot makes that
            # scale the vector's. The step itself uses the real y1, not these.
            size0, size1 = _rms(y0), _rms(y1_candidate)
            y0 = jtu.tree_map(lambda x: jnp.full_like(x, size0), y0)
            y1_candidate = jtu.tree_map(lambda x: jnp.full_like(x, size1), y1_candidate)
        keep, next_t0, next_t1, made_jump, state, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
        )
        eps = jnp.finfo(jnp.result_type(next_t0)).eps
        floor = self.ulps * eps * jnp.maximum(jnp.abs(next_t0), 1.0)
        collapsed = (next_t1 - next_t0) < floor
        result = diffrax.RESULTS.where(collapsed, diffrax.RESULTS.dt_min_reached, result)
        return keep, next_t0, next_t1, made_jump, state, result


def count_params(params) -> int:
    return sum(x.size for x in jtu.tree_leaves(params))
