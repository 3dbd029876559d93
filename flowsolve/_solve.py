import collections
import dataclasses
import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from jax.flatten_util import ravel_pytree

from . import _metrics
from ._compile import compile_and_run
from ._flow import AbstractFlow
from ._misc_np import log1p_exp_np, log_expm1_np
from ._problem import _warn_if_float32
from ._results import RESULTS
from ._rosenbrock import Rodas5P, Ros34PW2, has_gauss_newton
from ._saveat import SaveAt
from ._solver import (
    AUTO_IMPLICIT_MAX_PARAMS,
    AutoSwitch,
    CollapseGuard,
    count_params,
    evals_per_step,
    gauss_newton_size,
    is_adaptive,
    max_spectral_radius,
    resolve_error_norm,
    resolve_solver,
    spectral_radius,
)
from ._stop import Stop
from ._trajectory import Trajectory


CLOCKS = ("linear", "log")

_DIFFRAX_TO_RESULTS = {
    "successful": RESULTS.successful,
    "max_steps_reached": RESULTS.max_steps_reached,
    "dt_min_reached": RESULTS.step_size_too_small,
    "event_occurred": RESULTS.event_occurred,
}


def _check_float(name: str, value, *, positive: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number, got {value!r}.") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"`{name}` must be a finite positive number, got {value!r}.")
    return v


def check_initial_model(problem, model) -> eqx.Module:
    """θ0 must have the structure and shapes of the problem's model."""
    if model is None or model is problem.model:
        return problem.model
    ref = eqx.filter(problem.model, eqx.is_inexact_array)
    got = eqx.filter(model, eqx.is_inexact_array)
    ref_leaves, got_leaves = jtu.tree_leaves(ref), jtu.tree_leaves(got)
    same_shapes = len(ref_leaves) == len(got_leaves) and all(
        a.shape == b.shape for a, b in zip(ref_leaves, got_leaves)
    )
    if same_shapes and jtu.tree_structure(ref) != jtu.tree_structure(got):
        raise ValueError(
            f"The initial model has the parameter shapes of the problem's model "
            f"({type(problem.model).__name__}) but differs in a non-array field (e.g. "
            "activation, scaling, which layers train). Build θ0 with the same settings "
            "as the problem's model."
        )
    if jtu.tree_structure(ref) != jtu.tree_structure(got) or not same_shapes:
        raise ValueError(
            "The initial model must have the same structure and parameter shapes as "
            f"the problem's model ({type(problem.model).__name__}); got "
            f"{type(model).__name__} with shapes "
            f"{[x.shape for x in jtu.tree_leaves(got)]}."
        )
    return model


def horizon(t0, t1, log_t1, clock: str) -> tuple[float, float, float]:
    """Return `(s0, s1, log_t1)`: the span in the clock variable and the horizon's log."""
    if clock not in CLOCKS:
        raise ValueError(f"Unknown clock {clock!r}; use 'linear' or 'log'.")
    t0 = _check_float("t0", t0, positive=False)
    if t0 < 0:
        raise ValueError(f"`t0` must be ≥ 0 (training starts at t = 0), got {t0}.")
    if (t1 is None) == (log_t1 is None):
        raise ValueError("Give the horizon as exactly one of `t1=` or `log_t1=`.")
    if t1 is not None:
        t1 = _check_float("t1", t1, positive=False)
        if t1 <= t0:
            raise ValueError(f"`t1` must be greater than `t0`; got t0={t0}, t1={t1}.")
        log_t1 = math.log(t1)
    else:
        log_t1 = _check_float("log_t1", log_t1, positive=False)
        if t0 > 0 and log_t1 <= math.log(t0):
            raise ValueError(f"`log_t1` must exceed log(t0) = {math.log(t0)}; got {log_t1}.")
    if clock == "linear":
        if log_t1 > 709.0:
            raise ValueError(
                f"t1 = e^{log_t1:.6g} overflows float64 on the linear clock; use "
                "`clock='log'`, which integrates in s = log(1 + t)."
            )
        return t0, math.exp(log_t1) if t1 is None else t1, log_t1
    return math.log1p(t0), float(log1p_exp_np(log_t1)), log_t1


class _FlatTerm(diffrax.AbstractTerm):
    """A flow's term on a parameter pytree, as a term on the flat parameter vector."""

    term: diffrax.AbstractTerm
    unravel: Callable = eqx.field(static=True)

    def vf(self, t, y, args):
        return ravel_pytree(self.term.vf(t, self.unravel(y), args))[0]

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf, control):
        return control * vf

    # The wrapped flow's Gauss–Newton system (see `Ros34PW2`), on the flat vector.
    def has_gauss_newton(self) -> bool:
        return has_gauss_newton(self.term)

    def gauss_newton_system(self, t, y, args):
        apply_b, apply_bt, gram = self.term.gauss_newton_system(t, self.unravel(y), args)
        return (
            lambda v: apply_b(self.unravel(v)),
            lambda z: ravel_pytree(apply_bt(z))[0],
            gram,
        )


def _program(args):
    """The compiled body of `solve`: one diffeqsolve saving metrics at the save points."""
    (term, solver, controller, y0, s0, s1, dt0, s_save, problem, static, names, fns,
     save_params, max_steps, meter, stop_log_loss) = args
    # The solver sees the parameters as one flat vector: every stage update, error
    # estimate and Newton system is then one array operation instead of one per
    # leaf (a depth-3 factorisation has three), and an implicit solver's Jacobian is
    # a plain matrix. Outputs are unflattened, so nothing outside sees the change.
    flat0, unravel = ravel_pytree(y0)
    term = _FlatTerm(term, unravel)

    def save_fn(t, y, _):
        y = unravel(y)
        model = eqx.combine(y, static)
        out = {name: fn(problem, model) for name, fn in zip(names, fns)}
        if save_params:
            out["__params__"] = y
        return out

    switching = isinstance(solver, AutoSwitch)
    saveat = diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(ts=s_save, fn=save_fn),
            diffrax.SubSaveAt(t1=True, fn=lambda t, y, _: unravel(y)),
        ],
        solver_state=switching,
    )
    event = None
    if stop_log_loss is not None:
        # Stopping rule: end the solve where log L crosses the target, located by a
        # root find on the step's dense output (a stiff solver's steps may span
        # hundreds of units of log t, so "the first step past it" is not enough).
        # Bisection, not Newton: the crossing is bracketed by the step, and Newton
        # from the step's end leaves a step that long (measured: it failed for the
        # targets log L = -50 and -300 on a 60 × 10 logistic problem).
        def crossing(t, y, args, **kwargs):
            return problem.log_loss(eqx.combine(unravel(y), static)) - stop_log_loss

        event = diffrax.Event(crossing, root_finder=optx.Bisection(rtol=1e-10, atol=1e-10))
    sol = diffrax.diffeqsolve(
        term,
        solver,
        s0,
        s1,
        dt0,
        flat0,
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
        progress_meter=meter,
        event=event,
    )
    saved, final = sol.ys
    ts_saved, ts_final = sol.ts
    extra = {}
    if switching:
        stiff, switched_at = AutoSwitch.mode(sol.solver_state)
        extra = {"stiff": stiff, "switched_at": switched_at,
                 "switches": AutoSwitch.switches(sol.solver_state)}
    return {
        **extra,
        "saved": saved,
        "ts_saved": ts_saved,
        "final": final,
        "t_final": ts_final[-1],
        "result": sol.result._value,
        "num_accepted_steps": sol.stats["num_accepted_steps"],
        "num_rejected_steps": sol.stats["num_rejected_steps"],
        "num_steps": sol.stats["num_steps"],
    }


def solve(
    flow: AbstractFlow,
    model: eqx.Module | None = None,
    t1: float | None = None,
    *,
    log_t1: float | None = None,
    t0: float = 0.0,
    clock: str = "linear",
    solver: str | diffrax.AbstractSolver = "auto",
    rtol: float = 1e-8,
    atol: float = 1e-10,
    error_norm: str = "auto",
    dt0: float | None = None,
    saveat: SaveAt | None = None,
    metrics: Sequence[str | Callable] | Mapping[str, Callable] | None = ("loss", "log_loss"),
    progress: bool = False,
    max_steps: int = 100_000,
    stop: Stop | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
) -> Trajectory:
    r"""Integrate a flow from the initial model θ0 to a horizon.

    **Arguments:**

    - `flow`: a flow, e.g. `fs.GradientFlow(problem)`.
    - `model`: the initial model θ0 (default: the problem's model).
    - `t1`: the horizon. Or `log_t1`: its natural log, for horizons past float64
        (`clock="log"`, e.g. `log_t1=1e4`).
    - `t0`: the start time (default 0).
    - `clock`: `"linear"` integrates in $t$; `"log"` in $s = \log(1 + t)$, where
        $d\theta/ds = e^s\,\dot\theta$ with $e^s$ fused into the log-domain loss
        derivative, so $t = e^{1000}$ and beyond run without overflow in a number of
        steps that grows with $\log t$ (explicit solvers) or barely at all
        (implicit ones).
    - `solver`: `"auto"`, a name (`"tsit5"`, `"dopri5"`, `"dopri8"`, `"bosh3"`,
        `"heun"`, `"ralston"`, `"midpoint"`, `"euler"`, `"kvaerno3"`, `"kvaerno4"`,
        `"kvaerno5"`, `"implicit_euler"`, `"rodas5p"`, `"ros34pw2"`,
        `"ros34pw2-gn"`: the Rosenbrock–W method with the Gauss–Newton matrix, for
        `fs.GradientFlow`) or any diffrax solver.
        `"auto"` (smooth flows up to 5000 parameters): Tsit5 switching mid-solve
        to Rodas5P (a Rosenbrock method: one Jacobian and one LU factorisation per
        step, no Newton iterations) once its stiffness estimate says the rest of the
        horizon needs more than 300·max(1, p/50)^1.5 explicit steps (fewer at
        tolerances looser than rtol 1e-8: × (rtol/1e-8)^(−1/5), at least × 0.05,
        since the implicit method then needs fewer steps). On the log
        clock the switch is final. On the linear clock it is made only while Tsit5
        is stability-limited, and undone when Rodas5P's steps stay short (a saddle
        escape after a plateau), with a growing wait before the next switch: a
        flow that converges is stiff from there on, whatever it was at θ0.
        For gradient flows of the squared loss with fewer training points than
        parameters (n < p, up to n = 5000, any p) the implicit side is ROS34PW2 with
        the Gauss–Newton matrix instead, solved through the n×n Gram system (exact
        at an interpolating minimum, where such flows turn stiff; a step at
        n = 464, p = 2 700 costs ~3 ms against Rodas5P's ~360 ms).
        `info["solver"]` (`"tsit5→rodas5p"` or `"tsit5→ros34pw2-gn"` if it ends
        implicit),
        `info["switched_at"]` (log t of the last switch) and `info["switches"]`
        report it; `info["stiffness"]` is a JVP power-iteration estimate of the
        Jacobian's spectral radius at θ0 × the span. Piecewise-smooth flows (ReLU
        networks, `model.smooth == False`) get Bosh3, or the switch on the log
        clock up to 2000 parameters (and on the linear clock where the stiffness
        estimate says the flow is stiff). Named implicit Runge–Kutta solvers
        (`"kvaerno*"`) use Newton with the controller's tolerances.
    - `rtol`, `atol`: tolerances of the adaptive step-size controller.
    - `error_norm`: what each parameter's local error is relative to:
        `"componentwise"` (diffrax's rule: `atol + rtol·|θᵢ|`, its own size),
        `"normwise"` (`atol + rtol·rms(θ)`, the size of the whole parameter vector:
        what a flow's direction, margins and loss depend on), or `"auto"`
        (default): normwise on the log clock, where θ grows like log t along a
        direction and per-parameter control spends steps resolving parameters
        that are tiny next to the rest (on the 200 × 50 logistic problem to
        log t = 1e4 at rtol 1e-8: Kvaerno5 131 accepted steps instead of 198,
        Rodas5P 202 instead of 310, the same margin gap to 1e-9), componentwise
        on the linear clock.
    - `dt0`: the initial step (default: chosen automatically); required for
        fixed-step solvers (`"euler"`, `"midpoint"`...) which then take steps of `dt0`.
    - `saveat`: where to record metrics: `fs.SaveAt(num=100)` (log-spaced) by default.
    - `metrics`: names from `fs.metrics.NAMES`, callables `(problem, model) -> array`,
        or a dict name → callable; computed at the save points inside the solve.
    - `progress`: show a progress bar in the clock's own units.
    - `max_steps`: the most steps the integrator may take (memory does not grow
        with it); per chunk when the solve runs in chunks.
    - `stop`: a `fs.Stop`: end early when the loss falls below a target or a metric
        plateaus; `info["stopped_by"]` says which rule ended the solve.
    - `checkpoint`: a file path. The solve then runs in chunks of
        `checkpoint_every` save points and writes its state after each; calling
        `solve` again with the same arguments and path resumes from the last chunk
        written (after an interruption, a crash or a failure) and yields the same
        final state as an uninterrupted run, bitwise on CPU. Ctrl-C returns the
        trajectory so far (`RESULTS.interrupted`).

    **Returns:**

    A `fs.Trajectory`. A solve that fails (max steps, step-size collapse,
    non-finite values) returns with `result` saying why and everything up to the
    failure point; it does not raise.
    """
    if stop is not None and not isinstance(stop, Stop):
        raise ValueError(f"`stop` must be a fs.Stop, got {type(stop).__name__}.")
    setup = prepare(
        flow, model, t1, log_t1=log_t1, t0=t0, clock=clock, solver=solver, rtol=rtol,
        atol=atol, dt0=dt0, saveat=saveat, metrics=metrics, progress=progress,
        max_steps=max_steps, stop=stop, error_norm=error_norm,
    )
    if stop is not None and stop.log_target is not None:
        # The stopping event fires where log L − target changes sign, so a target the
        # initial loss already meets would never fire (the run went to the horizon).
        log_l0 = float(setup.flow.problem.log_loss(setup.model))
        if log_l0 <= stop.log_target:
            raise ValueError(
                f"The initial model already meets the stopping rule: log L(θ0) = "
                f"{log_l0:.6g} ≤ the target {stop.log_target:.6g}. Lower the target "
                "(`Stop(loss_below=...)` / `log_loss_below=`), or start from another model."
            )
    if stop is not None and stop.metric is not None and stop.metric not in setup.names:
        raise ValueError(
            f"`Stop(metric={stop.metric!r})` watches a metric that is not recorded; add "
            f"it to `metrics=` (recorded: {list(setup.names)})."
        )
    if checkpoint is not None or (stop is not None and stop.metric is not None):
        from ._chunked import solve_chunked

        return solve_chunked(setup, stop, checkpoint, checkpoint_every)
    out, compile_time, wall_time = compile_and_run("solve", _program, setup.args)
    return finish(setup, jtu.tree_map(np.asarray, out), compile_time, wall_time)


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything `solve` (and `fs.ensemble.solve`) resolved before compiling."""

    flow: AbstractFlow
    model: eqx.Module
    args: tuple
    names: tuple[str, ...]
    static: Any
    clock: str
    solver: diffrax.AbstractSolver
    solver_name: str
    dt0_given: bool
    num_params: int
    info: dict


#: Solvers built from a name, by everything they were built from: building one
#: (auto's Tsit5/Rodas5P switch) costs ~0.15 ms of a warm call.
_SOLVERS: "collections.OrderedDict[Any, tuple]" = collections.OrderedDict()


@functools.lru_cache(maxsize=64)
def _controller(rtol: float, atol: float, normwise: bool, dtype: np.dtype) -> CollapseGuard:
    """The step-size controller, built once per tolerances (an immutable module:
    building it took a sixth of a warm call's set-up). NumPy tolerances, not
    jnp.asarray: each jnp.asarray is a device dispatch (~25 µs), while NumPy inputs
    go to the device with the executable's other arguments."""
    return CollapseGuard(
        diffrax.PIDController(rtol=np.asarray(rtol, dtype), atol=np.asarray(atol, dtype)),
        normwise=normwise,
    )


def _resolve_solver_cached(solver, **kwargs) -> tuple[diffrax.AbstractSolver, str]:
    if not isinstance(solver, str):
        return resolve_solver(solver, **kwargs)
    # The float dtype too: the solvers hold arrays made in the x64 mode of the call.
    key = (solver, jnp.result_type(float), tuple(sorted(kwargs.items())))
    try:
        hit = _SOLVERS.get(key)
    except TypeError:  # an unhashable argument: build afresh
        return resolve_solver(solver, **kwargs)
    if hit is None:
        hit = _SOLVERS[key] = resolve_solver(solver, **kwargs)
        while len(_SOLVERS) > 64:
            _SOLVERS.popitem(last=False)
    else:
        _SOLVERS.move_to_end(key)
    return hit


def prepare(
    flow, model, t1, *, log_t1, t0, clock, solver, rtol, atol, dt0, saveat, metrics,
    progress, max_steps, stop=None, error_norm="auto", members=None,
) -> Setup:
    """Validate `solve`'s arguments and build the compiled program's inputs.
    `members`: for an ensemble, `(stacked flows or None, stacked initial points)`,
    so that `"auto"`'s stiffness estimate covers every member."""
    if not isinstance(flow, AbstractFlow):
        raise ValueError(
            f"`flow` must be a flow such as fs.GradientFlow(problem), got {type(flow).__name__}."
        )
    problem = flow.problem
    model = check_initial_model(problem, model)
    s0, s1, log_t1_val = horizon(t0, t1, log_t1, clock)
    rtol = _check_float("rtol", rtol)
    atol = _check_float("atol", atol)
    normwise = resolve_error_norm(error_norm, clock)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive integer, got {max_steps!r}.")
    saveat = SaveAt() if saveat is None else saveat
    if not isinstance(saveat, SaveAt):
        raise ValueError(f"`saveat` must be a fs.SaveAt, got {type(saveat).__name__}.")
    s_save = saveat.clock_points(s0, s1, clock)
    names, fns = _metrics.resolve(metrics, problem, model)

    y0, static = eqx.partition(model, eqx.is_inexact_array)
    _warn_if_float32(jnp.result_type(*jtu.tree_leaves(y0)))
    num_params = count_params(y0)
    no_jacobian = flow.no_jacobian_reason
    if no_jacobian is not None and isinstance(solver, str) and solver.lower() == "auto":
        # A field that must not be differentiated (NGF's matrix-free CG solve): no
        # stiffness estimate, no switch to an implicit method; "auto" stays explicit.
        solver = "tsit5"
    stiffness = None
    if (
        isinstance(solver, str) and solver.lower() == "auto" and clock == "linear"
        and num_params <= AUTO_IMPLICIT_MAX_PARAMS
    ):
        if members is None or getattr(model, "smooth", True):
            # (Smooth flows get the in-flight switch whatever the estimate: for an
            # ensemble of them member 0's is reported, at 1/20 of the cost of all
            # members' for 256 tanh networks.)
            stiffness = spectral_radius(flow.term(clock), s0, y0) * (s1 - s0)
        else:
            # An ensemble of piecewise-smooth flows: the estimate decides between
            # Bosh3 and the switch, and the stiffest member decides, so that the
            # choice does not depend on the members' order (member 0 alone once gave
            # a stiff member Bosh3 and 92× its own steps).
            terms, y0s = members
            stacked = terms is not None
            term = terms.term(clock) if stacked else flow.term(clock)
            stiffness = max_spectral_radius(term, s0, y0s, stacked) * (s1 - s0)
    dsolver, solver_name = _resolve_solver_cached(
        solver, clock=clock, num_params=num_params, stiffness=stiffness, horizon=s1,
        smooth=bool(getattr(model, "smooth", True)),
        gauss_newton_n=gauss_newton_size(flow, num_params),
        rtol=rtol,  # checked above: a positive float
    )
    if no_jacobian is not None and _needs_jacobian(dsolver):
        raise ValueError(
            f"Solver {solver_name!r} differentiates the vector field, but for this "
            f"{type(flow).__name__}, {no_jacobian}. Use an explicit solver ('tsit5', "
            "or 'auto', which stays explicit here)."
        )
    # NumPy, not jnp.asarray, for the inputs below (see `_controller`).
    float_dtype = np.dtype(jnp.result_type(float))
    if is_adaptive(dsolver):
        controller = _controller(rtol, atol, normwise, float_dtype)
        dt0_arr = None if dt0 is None else np.asarray(_check_float("dt0", dt0), float_dtype)
    else:
        if dt0 is None:
            raise ValueError(
                f"Solver {solver_name!r} has no error estimate, so it takes fixed steps: "
                "pass `dt0=` (the step in the clock variable)."
            )
        controller = diffrax.ConstantStepSize()
        dt0_arr = np.asarray(_check_float("dt0", dt0), float_dtype)
    if progress:
        from ._progress import ClockProgressMeter

        label = "t" if clock == "linear" else "log(1+t)"
        meter = ClockProgressMeter(label=label, lo=float(s0), hi=float(s1))
    else:
        meter = diffrax.NoProgressMeter()

    args = (
        flow.term(clock),
        dsolver,
        controller,
        y0,
        np.asarray(s0, float_dtype),
        np.asarray(s1, float_dtype),
        dt0_arr,
        np.asarray(s_save, float_dtype),
        problem,
        static,
        names,
        fns,
        bool(saveat.params),
        max_steps,
        meter,
        None if stop is None or stop.log_target is None
        else np.asarray(stop.log_target, float_dtype),
    )
    info = {
        "kind": "flow",
        "method": type(flow).__name__,
        "model": type(model).__name__,
        "clock": clock,
        "solver": solver_name,
        "stiffness": stiffness,
        "rtol": rtol,
        "atol": atol,
        "error_norm": "normwise" if normwise else "componentwise",
        "log_t1": log_t1_val,
        "max_steps": max_steps,
        "metrics": list(names),
        "stopped_by": "horizon",
    }
    return Setup(
        flow=flow, model=model, args=args, names=names, static=static, clock=clock,
        solver=dsolver, solver_name=solver_name, dt0_given=dt0 is not None,
        num_params=num_params, info=info,
    )


def _needs_jacobian(dsolver) -> bool:
    """Whether the solver differentiates the vector field (implicit and Rosenbrock
    methods, and auto's switch to them)."""
    return isinstance(dsolver, Rodas5P | Ros34PW2 | AutoSwitch | diffrax.AbstractImplicitSolver)


def _clock_to_log_t(s, clock: str):
    """`(ts, log_ts)` of clock values `s` (numpy; `t` overflows to inf, `log t` not)."""
    s = np.asarray(s, dtype=np.float64)
    if clock == "linear":
        with np.errstate(divide="ignore"):
            return s, np.log(s)
    with np.errstate(over="ignore"):
        return np.expm1(s), log_expm1_np(s)


def _vf_evals(setup: Setup, num_steps):
    per = evals_per_step(setup.solver)
    if per is None:
        return None
    extra = 2 if (not setup.dt0_given and is_adaptive(setup.solver)) else 0
    return per[0] + per[1] * num_steps + extra  # +2: automatic initial step selection


def result_of(code: int) -> RESULTS:
    return _DIFFRAX_TO_RESULTS.get(_result_name(int(code)), RESULTS.solver_failed)


def finish(setup: Setup, out: dict, compile_time: float, wall_time: float) -> Trajectory:
    """Turn the compiled program's output (numpy) into a `Trajectory`."""
    names, static, clock = setup.names, setup.static, setup.clock
    # What was reached: diffrax leaves unreached save slots as inf.
    t_final = float(out["t_final"])
    ts_saved = out["ts_saved"]
    reached = np.isfinite(ts_saved) & (ts_saved <= t_final)
    saved = jtu.tree_map(lambda x: x[reached], out["saved"])
    params_hist = saved.pop("__params__", None)
    saved = {name: saved[name] for name in names}  # the order asked for
    final_params = jtu.tree_map(lambda x: x[-1], out["final"])

    result = out.get("result_override") or result_of(out["result"])
    if not result.success and result is not RESULTS.interrupted and _nonfinite(
        setup.flow, final_params, t_final, clock
    ):
        result = RESULTS.nonfinite
    info = dict(setup.info)
    if "stiff" in out:
        switched_at = float(out["switched_at"])
        info["switched_at"] = (
            None if not math.isfinite(switched_at)
            else float(_clock_to_log_t(switched_at, clock)[1])
        )
        info["solver"] = setup.solver.label if bool(out["stiff"]) else "tsit5"
        info["switches"] = int(out.get("switches", 0))
    if result is RESULTS.event_occurred:
        info["stopped_by"] = out.get("stopped_by", "loss")

    ts, log_ts = _clock_to_log_t(ts_saved[reached], clock)
    log_t_final = float(_clock_to_log_t(t_final, clock)[1])
    num_steps = int(out["num_steps"])
    stats = {
        "num_accepted_steps": int(out["num_accepted_steps"]),
        "num_rejected_steps": int(out["num_rejected_steps"]),
        "num_steps": num_steps,
        "num_vf_evals": _vf_evals(setup, num_steps),
        "wall_time": wall_time,
        "compile_time": compile_time,
        "num_params": setup.num_params,
    }
    return Trajectory(
        ts=ts,
        log_ts=log_ts,
        metrics=saved,
        params=None if params_hist is None else eqx.combine(params_hist, static),
        final=eqx.combine(final_params, static),
        log_t_final=log_t_final,
        result=result,
        stats=stats,
        info=info,
    )


def _result_name(code: int) -> str:
    for name in ("successful", "max_steps_reached", "dt_min_reached", "event_occurred"):
        if int(getattr(diffrax.RESULTS, name)._value) == code:
            return name
    return "other"


def _nonfinite(flow, params, s_end, clock) -> bool:
    """Whether the failure came from non-finite values: the state, or the vector
    field there, is NaN/inf."""
    leaves = jtu.tree_leaves(params)
    if not all(np.all(np.isfinite(x)) for x in leaves):
        return True
    vf = _vf_at(flow.term(clock), jnp.asarray(s_end), jtu.tree_map(jnp.asarray, params))
    return not all(bool(jnp.all(jnp.isfinite(x))) for x in jtu.tree_leaves(vf))


@eqx.filter_jit
def _vf_at(term, s, params):
    # Module-level so the check compiles once per structure, not once per failed
    # solve (or per failed ensemble member).
    return term.vf(s, params, None)
