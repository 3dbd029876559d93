import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax

from . import _metrics
from ._compile import compile_and_run
from ._flow import AbstractFlow, GradientFlow, NaturalGradientFlow
from ._problem import Problem, _warn_if_float32
from ._results import RESULTS
from ._saveat import SaveAt
from ._solve import check_initial_model
from ._solver import count_params
from ._trajectory import Trajectory


OPTIMIZER_NAMES = ("gd", "ngd", "loss-scaled-gd")


class _State(eqx.Module):
    params: object
    opt_state: object
    k: jax.Array
    log_t: jax.Array
    ok: jax.Array


def _all_finite(tree) -> jax.Array:
    leaves = jtu.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class _AbstractStepper(eqx.Module):
    """One discrete optimiser step on the parameter pytree, with the time it adds."""

    def init(self, params):
        return None

    def step(self, k, params, opt_state):
        """Return `(params, opt_state, log_dt)`: the new point and log of its time step."""
        raise NotImplementedError


def _lr_at(lr, k):
    return lr(k) if callable(lr) else lr


class _FlowStepper(_AbstractStepper):
    """Euler steps along a flow's direction: GD for gradient flow, NGD for NGF."""

    flow: AbstractFlow
    lr: object

    def step(self, k, params, opt_state):
        eta = jnp.asarray(_lr_at(self.lr, k), float)
        v = self.flow.direction(params, 0.0)
        params = jtu.tree_map(lambda p, d: p + eta * d, params, v)
        return params, opt_state, jnp.log(eta)


class _LossScaledStepper(_AbstractStepper):
    """Loss-scaled GD (Lyu & Li 2019): θ ← θ − (η/L)∇L = θ − η∇log L, with η/L
    formed in the log domain, so steps stay well defined when L underflows; the
    time step η/L is accumulated as log t."""

    problem: Problem
    lr: object

    def step(self, k, params, opt_state):
        eta = jnp.asarray(_lr_at(self.lr, k), float)
        model = eqx.combine(params, _static(self.problem))
        log_dt = jnp.log(eta) - self.problem.log_loss(model)
        g = self.problem.gradient(model, log_dt)
        params = jtu.tree_map(lambda p, d: p - d, params, g)
        return params, opt_state, log_dt


class _OptaxStepper(_AbstractStepper):
    problem: Problem
    transform: optax.GradientTransformation = eqx.field(static=True)
    lr: object

    def init(self, params):
        return self.transform.init(params)

    def step(self, k, params, opt_state):
        model = eqx.combine(params, _static(self.problem))
        g = self.problem.gradient(model)
        updates, opt_state = self.transform.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, jnp.log(jnp.asarray(_lr_at(self.lr, k), float))


def _static(problem: Problem):
    return eqx.partition(problem.model, eqx.is_inexact_array)[1]


def _stepper(problem, optimizer, lr) -> tuple[_AbstractStepper, str]:
    if isinstance(optimizer, AbstractFlow):
        return _FlowStepper(optimizer, lr), f"euler({type(optimizer).__name__})"
    if isinstance(optimizer, optax.GradientTransformation):
        return _OptaxStepper(problem, optimizer, lr), "optax"
    if isinstance(optimizer, str):
        name = optimizer.lower().replace("_", "-")
        if name == "gd":
            return _FlowStepper(GradientFlow(problem), lr), "gd"
        if name == "ngd":
            return _FlowStepper(NaturalGradientFlow(problem), lr), "ngd"
        if name in ("loss-scaled-gd", "lsgd"):
            return _LossScaledStepper(problem, lr), "loss-scaled-gd"
    raise ValueError(
        f"Unknown optimizer {optimizer!r}. Use one of {OPTIMIZER_NAMES}, an optax "
        "GradientTransformation (e.g. optax.adam(1e-3)), or a flow (e.g. "
        "fs.NaturalGradientFlow(problem, damping=1e-3)) to take Euler steps along it."
    )


def _save_steps(saveat: SaveAt, steps: int, lr, loss_scaled: bool = False) -> np.ndarray:
    """Step indices of the save points (sorted, unique, within [0, steps]). Save
    times are snapped to the nearest step `k = round(t/η)`."""
    if saveat.ts is not None or saveat.log_ts is not None:
        if callable(lr) or loss_scaled:
            why = ("the time of loss-scaled GD's step k, t = Σ η/L(θ_j), is" if loss_scaled
                   else "with a learning-rate schedule the time of each step is")
            raise ValueError(
                f"Save times cannot be given in t here: {why} not known in advance. "
                "Give `SaveAt(num=..., spacing=...)` (save points in steps)."
            )
        if saveat.ts is not None:
            ts = np.asarray(saveat.ts, dtype=float).ravel()
        else:
            ts = np.exp(np.asarray(saveat.log_ts, dtype=float).ravel())
        if ts.size == 0:
            raise ValueError("Save times must not be empty.")
        if not np.all(np.isfinite(ts)):
            raise ValueError("Save times must be finite.")
        if np.any(np.diff(ts) < 0):
            raise ValueError("Save times must be sorted in increasing order.")
        k = np.round(ts / float(lr)).astype(np.int64)
        if np.any(k < 0) or np.any(k > steps):
            raise ValueError(
                f"Save times must lie in [0, steps·lr] = [0, {steps * float(lr):.6g}]."
            )
        return np.unique(k)
    if saveat.num == 1:
        return np.array([steps], dtype=np.int64)
    if saveat.spacing == "linear":
        k = np.linspace(0, steps, saveat.num)
    else:
        k = np.expm1(np.linspace(0.0, np.log1p(steps), saveat.num))
    return np.unique(np.concatenate([[0], np.round(k).astype(np.int64), [steps]]))


def _chunk_program(args):
    """Advance through one chunk of save points; compiled once per structure."""
    (stepper, problem, static, names, fns, save_params, exact_time, log_lr,
     state, targets) = args

    def one_step(state):
        params, opt_state, log_dt = stepper.step(state.k, state.params, state.opt_state)
        # A step of negative or NaN size (a schedule gone wrong) is not taken either:
        # its log is NaN (a zero step is −inf and harmless).
        ok = _all_finite(params) & ~jnp.isnan(log_dt)
        # Keep the last finite point: a non-finite step is not taken.
        params = jtu.tree_map(lambda new, old: jnp.where(ok, new, old), params, state.params)
        if exact_time:  # t = kη is computed at the save points instead
            log_t = state.log_t
        else:
            log_t = jnp.where(ok, jnp.logaddexp(state.log_t, log_dt), state.log_t)
        return _State(
            params=params,
            opt_state=opt_state,
            k=jnp.where(ok, state.k + 1, state.k),
            log_t=log_t,
            ok=ok,
        )

    def advance(state, target):
        state = lax.while_loop(lambda s: (s.k < target) & s.ok, one_step, state)
        model = eqx.combine(state.params, static)
        out = {name: fn(problem, model) for name, fn in zip(names, fns)}
        if save_params:
            out["__params__"] = state.params
        if exact_time:
            # t = kη exactly for a constant step size (no accumulated rounding).
            log_t = jnp.where(state.k > 0, jnp.log(jnp.maximum(state.k, 1)) + log_lr, -jnp.inf)
        else:
            log_t = state.log_t
        out["__log_t__"] = log_t
        out["__k__"] = state.k
        return state, out

    return lax.scan(advance, state, targets)


def descend(
    problem: Problem,
    model: eqx.Module | None = None,
    *,
    optimizer: str | optax.GradientTransformation | AbstractFlow = "gd",
    lr: float | Callable = 1.0,
    steps: int = 1000,
    saveat: SaveAt | None = None,
    metrics: Sequence[str | Callable] | Mapping[str, Callable] | None = ("loss", "log_loss"),
    progress: bool = False,
    chunk: int = 16,
) -> Trajectory:
    r"""Run a discrete optimiser on the same time axis as the flows.

    Step $k$ with step sizes $\eta_j$ sits at $t_k = \sum_{j<k}\eta_j$ ($= k\eta$
    for a constant step), so a descent and a flow overlay directly.

    **Arguments:**

    - `problem`: the `fs.Problem`.
    - `model`: the initial model θ0 (default: the problem's model).
    - `optimizer`: `"gd"`; `"ngd"` (Euler steps along `fs.NaturalGradientFlow`, the
        same direction code as the flow); `"loss-scaled-gd"` ($\eta_k = \eta/L(\theta_k)$,
        Lyu & Li 2019, formed in the log domain); a flow (Euler steps along it, e.g.
        `fs.NaturalGradientFlow(problem, damping=1e-3)`); or any optax
        `GradientTransformation` (its own learning rate applies; `lr` then only
        sets the time per step). The compiled loop is cached per optax object (and
        per schedule function): build it once and reuse it across calls, since a
        new `optax.adam(1e-2)` on every call compiles again (~0.5 s).
    - `lr`: the step size η, or a schedule `k -> η_k` (e.g. an optax schedule).
    - `steps`: number of steps.
    - `saveat`: save points: `SaveAt(num=..., spacing="log"|"linear")` in step
        indices (log spacing by default), or `SaveAt(ts=...)` / `log_ts` in time
        for a constant `lr` (not for a schedule or loss-scaled GD, whose step times
        are not known in advance), each snapped to the nearest step `round(t/η)`
        (times closer than a step apart give one point).
    - `metrics`: as in `fs.solve`.
    - `progress`: show a progress bar (in steps).
    - `chunk`: save points per compiled call; the run is interruptible between
        calls (Ctrl-C keeps what was done). A call also covers at most a tenth of
        the steps (or 50 000, if more), so with log-spaced save points, whose last
        gap holds most of the steps, an interruption still loses at most that.

    **Returns:**

    A `fs.Trajectory` (`info["kind"] == "descent"`). A step that produces NaN/inf is
    not taken: the run stops there with `result = RESULTS.nonfinite`; so is a step
    whose size a schedule gives as negative or NaN (`RESULTS.invalid_step_size`).
    """
    prep = prepare_descent(
        problem, model, optimizer=optimizer, lr=lr, steps=steps, saveat=saveat,
        metrics=metrics, chunk=chunk,
    )
    params = eqx.filter(prep.model, eqx.is_inexact_array)
    return run_descent_chunks(prep, prep.initial_state(params), batched=False, progress=progress)


@dataclasses.dataclass(frozen=True)
class DescentSetup:
    """Everything `descend` (and `fs.ensemble.descend`) resolved before running."""

    problem: Problem
    model: eqx.Module
    stepper: _AbstractStepper
    opt_name: str
    names: tuple[str, ...]
    fns: tuple
    static: object
    save_params: bool
    exact_time: bool
    lr: object
    targets: np.ndarray
    chunk: int
    steps: int

    def initial_state(self, params) -> _State:
        return _State(
            params=params,
            opt_state=self.stepper.init(params),
            k=jnp.asarray(0),
            log_t=jnp.asarray(-jnp.inf, float),
            ok=jnp.asarray(True),
        )


def prepare_descent(problem, model, *, optimizer, lr, steps, saveat, metrics, chunk) -> DescentSetup:
    if not isinstance(problem, Problem):
        raise ValueError(f"`problem` must be a fs.Problem, got {type(problem).__name__}.")
    model = check_initial_model(problem, model)
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}.")
    steps = int(steps)
    if not callable(lr):
        try:
            lr_f = float(lr)
        except (TypeError, ValueError):
            raise ValueError(f"`lr` must be a positive number or a schedule, got {lr!r}.") from None
        if not math.isfinite(lr_f) or lr_f <= 0:
            raise ValueError(f"`lr` must be a finite positive number, got {lr!r}.")
        lr = lr_f
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"`chunk` must be a positive integer, got {chunk!r}.")
    saveat = SaveAt() if saveat is None else saveat
    if not isinstance(saveat, SaveAt):
        raise ValueError(f"`saveat` must be a fs.SaveAt, got {type(saveat).__name__}.")
    stepper, opt_name = _stepper(problem, optimizer, lr)
    targets = _save_steps(saveat, steps, lr, loss_scaled=isinstance(stepper, _LossScaledStepper))
    names, fns = _metrics.resolve(metrics, problem, model)
    lr_dyn = lr if callable(lr) else jnp.asarray(lr, float)
    stepper = eqx.tree_at(lambda s: s.lr, stepper, lr_dyn)
    exact_time = not callable(lr) and not isinstance(stepper, _LossScaledStepper)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    _warn_if_float32(jnp.result_type(*jtu.tree_leaves(params)))
    return DescentSetup(
        problem=problem, model=model, stepper=stepper, opt_name=opt_name, names=names,
        fns=fns, static=static, save_params=bool(saveat.params), exact_time=exact_time,
        lr=lr, targets=targets, chunk=chunk, steps=steps,
    )


def run_descent_chunks(prep: DescentSetup, state: _State, *, batched: bool, progress: bool) -> Trajectory:
    """Run the save-point chunks (compiled once), then assemble the trajectory.
    With `batched`, `state` carries a leading member axis (vmapped members)."""
    targets, chunk, steps = prep.targets, prep.chunk, prep.steps
    if batched and isinstance(prep.stepper, _LossScaledStepper):
        raise ValueError(
            "Loss-scaled GD gives each member its own time axis; run the members "
            "separately with fs.descend."
        )
    plan = _chunk_plan(targets, chunk, steps)
    bar = None
    if progress:
        import tqdm

        bar = tqdm.tqdm(total=steps, desc=f"flowsolve {prep.opt_name}", unit="step")
    saved_chunks = []
    compile_time = wall_time = 0.0
    result = RESULTS.successful
    log_lr = jnp.log(jnp.asarray(prep.lr if not callable(prep.lr) else 1.0, float))
    tag = "ensemble.descend" if batched else "descend"
    program = _batched_chunk_program if batched else _chunk_program
    try:
        for tgt, save in plan:
            args = (prep.stepper, prep.problem, prep.static, prep.names, prep.fns,
                    prep.save_params, prep.exact_time, log_lr, state, jnp.asarray(tgt))
            (state, out), ct, wt = compile_and_run(tag, program, args)
            compile_time += ct
            wall_time += wt
            # Only the save points: not the intermediate stops or the padding.
            index = (slice(None), save) if batched else save
            saved_chunks.append(jtu.tree_map(lambda x, i=index: np.asarray(x)[i], out))
            if bar is not None:
                bar.n = int(np.min(np.asarray(state.k)))
                bar.refresh()
            if not bool(np.all(np.asarray(state.ok))):
                result = _failure(prep, np.min(np.asarray(state.k)[~np.asarray(state.ok)]))
                if not batched or not bool(np.any(np.asarray(state.ok))):
                    break
    except KeyboardInterrupt:
        result = RESULTS.interrupted
    finally:
        if bar is not None:
            bar.close()
    if batched:
        return _assemble_batched(prep, state, saved_chunks, result, compile_time, wall_time)
    return _assemble(prep, state, saved_chunks, result, compile_time, wall_time)


#: The fewest steps one compiled call of a descent may be limited to (see `_chunk_plan`):
#: below this a run takes well under a second, and each extra call costs ~0.1 ms.
_MIN_STEPS_PER_CALL = 50_000


def _chunk_plan(targets: np.ndarray, chunk: int, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The compiled calls of a descent: each `(step targets, which are save points)`,
    `chunk` targets long (so one executable serves every call), advancing at most
    `max(steps/10, 50 000)` steps. Log-spaced save points put most of a run in its
    last gap (206 328 → 3·10⁶ for 40 saves), which an interruption lost whole; the
    extra targets in between are stops that are not saved."""
    cap = max(-(-steps // 10), _MIN_STEPS_PER_CALL)
    extra = np.arange(cap, steps, cap, dtype=np.int64)
    stops = np.union1d(targets, extra)
    is_save = np.isin(stops, targets)
    plan, cur, start = [], [], int(stops[0]) if len(stops) else 0

    def close():
        tgt = np.array([t for t, _ in cur] + [cur[-1][0]] * (chunk - len(cur)), np.int64)
        save = np.array([s for _, s in cur] + [False] * (chunk - len(cur)))
        plan.append((tgt, save))

    for t, s in zip(stops.tolist(), is_save.tolist()):
        if cur and (len(cur) == chunk or t - start > cap):
            close()
            start, cur = cur[-1][0], []
        cur.append((t, s))
    if cur:
        close()
    return plan


def _failure(prep: DescentSetup, k: int) -> RESULTS:
    """Why a step `k` was not taken: a schedule's step size that is not positive,
    or else non-finite values."""
    if callable(prep.lr):
        with np.errstate(invalid="ignore"):
            eta = float(np.asarray(prep.lr(int(k))))
        if not eta >= 0:
            return RESULTS.invalid_step_size
    return RESULTS.nonfinite


def _batched_chunk_program(args):
    *head, state, targets = args
    return eqx.filter_vmap(lambda st: _chunk_program((*head, st, targets)))(state)


def _info(prep: DescentSetup, kind: str) -> dict:
    return {
        "kind": kind,
        "method": prep.opt_name,
        "model": type(prep.model).__name__,
        "clock": "linear",
        "solver": None,
        "lr": None if callable(prep.lr) else prep.lr,
        "steps": prep.steps,
        "metrics": list(prep.names),
    }


def _log_t_of(prep: DescentSetup, k_final: int, log_t: float) -> float:
    if prep.exact_time:
        return math.log(k_final) + math.log(prep.lr) if k_final > 0 else -math.inf
    return float(log_t)


def _assemble(prep, state, saved_chunks, result, compile_time, wall_time) -> Trajectory:
    names, static = prep.names, prep.static
    if saved_chunks:
        out = jtu.tree_map(lambda *xs: np.concatenate(xs), *saved_chunks)
        ks = out.pop("__k__")
        log_ts = out.pop("__log_t__")
        # Padding and a stopped run repeat the last point: keep each step index once.
        _, first = np.unique(ks, return_index=True)
        keep = np.sort(first)
        out = jtu.tree_map(lambda x: x[keep], out)
        log_ts = log_ts[keep]
        params_hist = out.pop("__params__", None)
        metrics_out = {name: out[name] for name in names}
    else:
        log_ts = np.zeros(0)
        params_hist = None
        metrics_out = {name: np.zeros(0) for name in names}
    final_params = jtu.tree_map(np.asarray, state.params)
    k_final = int(state.k)
    with np.errstate(over="ignore"):
        ts = np.exp(log_ts)
    stats = {
        "num_steps": k_final,
        "wall_time": wall_time,
        "compile_time": compile_time,
        "num_params": count_params(final_params),
    }
    return Trajectory(
        ts=ts,
        log_ts=log_ts,
        metrics=metrics_out,
        params=None if params_hist is None else eqx.combine(params_hist, static),
        final=eqx.combine(final_params, static),
        log_t_final=_log_t_of(prep, k_final, float(state.log_t)),
        result=result,
        stats=stats,
        info=_info(prep, "descent"),
    )


def _assemble_batched(prep, state, saved_chunks, result, compile_time, wall_time) -> Trajectory:
    """Members share the save targets (and, for a constant step or a schedule,
    the time axis); a member that stopped early has NaN metrics after its stop."""
    names, static = prep.names, prep.static
    m = int(np.asarray(state.k).shape[0])
    if saved_chunks:
        out = jtu.tree_map(lambda *xs: np.concatenate(xs, axis=1), *saved_chunks)
    else:  # interrupted before the first chunk finished: nothing saved yet
        out = {"__k__": np.zeros((m, 0), np.int64), "__log_t__": np.zeros((m, 0)),
               **{name: np.zeros((m, 0)) for name in names}}
    # The save points done: all of them, or those of the chunks that finished
    # before an interrupt (the last chunk's padding repeats its final target).
    n_t = min(len(prep.targets), out["__k__"].shape[1])
    targets = prep.targets[:n_t]
    ks = out.pop("__k__")[:, :n_t]  # (M, T)
    log_ts_m = out.pop("__log_t__")[:, :n_t]
    params_hist = out.pop("__params__", None)
    reached = ks == targets[None, :]

    def mask(x):
        x = np.asarray(x)[:, :n_t]
        x = np.array(x, dtype=np.result_type(x, np.float64))
        return np.where(reached.reshape(reached.shape + (1,) * (x.ndim - 2)), x, np.nan)

    ok_rows = np.all(reached, axis=1)
    ref = int(np.argmax(ok_rows)) if np.any(ok_rows) else 0
    log_ts = log_ts_m[ref]
    if prep.exact_time:
        with np.errstate(divide="ignore"):
            log_ts = np.where(targets > 0, np.log(np.maximum(targets, 1)) + math.log(prep.lr), -np.inf)
    k_final = np.asarray(state.k).astype(np.int64)
    ok = np.asarray(state.ok)
    results = tuple(
        RESULTS.successful if o else _failure(prep, int(k)) for o, k in zip(ok, k_final)
    )
    if result is RESULTS.interrupted:
        results = tuple(RESULTS.interrupted if r.success else r for r in results)
    log_t_final = np.array([_log_t_of(prep, int(k), float(lt)) for k, lt in zip(k_final, np.asarray(state.log_t))])
    with np.errstate(over="ignore"):
        ts = np.exp(log_ts)
    stats = {
        "num_steps": k_final,
        "wall_time": wall_time,
        "compile_time": compile_time,
        "num_params": count_params(jtu.tree_map(lambda x: x[0], eqx.filter(state.params, eqx.is_array))),
        "num_members": len(k_final),
        "num_devices": len(jax.devices()),
    }
    failed = [r for r in results if not r.success]
    return Trajectory(
        ts=ts,
        log_ts=log_ts,
        metrics={name: mask(out[name]) for name in names},
        params=None if params_hist is None else eqx.combine(jtu.tree_map(mask, params_hist), static),
        final=eqx.combine(jtu.tree_map(np.asarray, state.params), static),
        log_t_final=log_t_final,
        result=failed[0] if failed else RESULTS.successful,
        stats=stats,
        info=_info(prep, "ensemble-descent"),
        results=results,
    )
