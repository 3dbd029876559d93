"""Many flows in one compiled solve: `vmap` over initial models (and, optionally,
over flows that differ in their arrays: damping, data), sharded over devices."""

import contextlib
import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._compile import abstract_key, compile_and_run
from ._descend import prepare_descent, run_descent_chunks
from ._flow import AbstractFlow
from ._metrics import resolve as resolve_metrics
from ._models import AbstractModel
from ._problem import Problem
from ._results import RESULTS
from ._saveat import SaveAt
from ._solve import _clock_to_log_t, _nonfinite, _program, _vf_evals, prepare, result_of
from ._solver import AutoSwitch
from ._trajectory import Trajectory


def stack(items: Sequence) -> object:
    """Stack models (or flows) of one structure into one pytree whose arrays carry a
    leading member axis. Their non-array parts (activation, static fields) must
    agree.

    Stacking copies each array to the host: for thousands of members on a GPU
    that costs more than the solve (4 096 small networks: 73–79 ms, against a
    15 ms solve on an H100). Build such ensembles stacked instead, e.g.
    `eqx.filter_vmap(lambda k: fs.models.TwoLayer(3, 16, key=k))(jr.split(key, m))`:
    the same arrays as stacking the list built from those keys."""
    items = list(items)
    if not items:
        raise ValueError("Nothing to stack: give at least one model or flow.")
    # One flatten per item (static fields live in the tree definition) and one
    # stack per leaf: stacking 256 small models member by member through
    # `eqx.partition` and `jnp.stack` took 13 ms, more than a tenth of a 256-member
    # ensemble solve.
    leaves0, treedef0 = jtu.tree_flatten(items[0])
    arrays0 = [eqx.is_array(x) for x in leaves0]
    columns: list[list] = [[] for _ in leaves0]
    for i, item in enumerate(items):
        leaves, treedef = jtu.tree_flatten(item)
        if treedef != treedef0 or any(
            eqx.is_array(x) != a or (not a and not _same_static(x, x0))
            for x, x0, a in zip(leaves, leaves0, arrays0)
        ):
            raise ValueError(
                f"Member {i} differs from member 0 in structure or in a non-array "
                "attribute; an ensemble varies arrays only (initial weights, data, "
                "damping...). Solve differently-structured models separately."
            )
        for column, x, x0, a in zip(columns, leaves, leaves0, arrays0):
            if a:
                if x.shape != x0.shape:
                    raise ValueError(f"Member {i} has arrays of other shapes than member 0.")
                column.append(x)
    stacked = [_stack_column(column) if a else x0 for column, x0, a in zip(columns, leaves0, arrays0)]
    return jtu.tree_unflatten(treedef0, stacked)


def _same_static(x, x0) -> bool:
    if x is x0:
        return True
    try:
        return bool(x == x0)
    except Exception:  # noqa: BLE001 - an incomparable leaf is a different one
        return False


def _stack_column(column: list):
    if any(isinstance(x, jax.core.Tracer) for x in column):
        return jnp.stack(column)  # under a transformation: stay traced
    # `np.asarray` on each array and one stack on the host: 0.3 ms for 256 small
    # arrays, where `jax.device_get` of the list took 2 ms and `jnp.stack` (a
    # conversion per input) 1 ms. A jitted stack taking the arrays as arguments ran
    # in 0.2 ms but compiled for each member count: 0.5 s at 256 members, 33 s at
    # 4 096.
    host = np.stack([np.asarray(x) for x in column])
    return jnp.asarray(host, dtype=jnp.result_type(column[0]))


def _members(models, what: str, template=None) -> tuple[object, int]:
    """`(stacked, M)` from a list of models or one stacked model; with `template`
    (the problem's model), check that each member has its parameter shapes."""
    if isinstance(models, list | tuple):
        stacked = stack(models)
    else:
        stacked = models
    leaves = [x for x in jtu.tree_leaves(eqx.filter(stacked, eqx.is_inexact_array))]
    if not leaves or any(x.ndim == 0 for x in leaves):
        raise ValueError(
            f"`{what}` must be a list of models or one model whose parameter arrays "
            "carry a leading member axis (see fs.ensemble.stack)."
        )
    sizes = {x.shape[0] for x in leaves}
    if len(sizes) != 1:
        raise ValueError(f"The stacked `{what}` has inconsistent leading sizes {sorted(sizes)}.")
    if template is not None:
        ref = jtu.tree_leaves(eqx.filter(template, eqx.is_inexact_array))
        if len(ref) == len(leaves) and all(x.shape == r.shape for x, r in zip(leaves, ref)):
            raise ValueError(
                f"`{what}` is one model with the problem's parameter shapes, not an "
                "ensemble: pass a list of models, or one model whose arrays carry a "
                "leading member axis (fs.ensemble.stack([...]))."
            )
        if len(ref) != len(leaves) or any(x.shape[1:] != r.shape for x, r in zip(leaves, ref)):
            raise ValueError(
                f"`{what}` must be a list of models or one model whose parameter arrays "
                "carry a leading member axis (see fs.ensemble.stack); got arrays of "
                f"shapes {[x.shape for x in leaves]} for a model with shapes "
                f"{[r.shape for r in ref]}."
            )
    return stacked, sizes.pop()


def _index(tree, i):
    return jtu.tree_map(lambda x: x[i] if eqx.is_array(x) else x, tree)


#: The mesh axis that the member axis is sharded over.
_MESH_AXIS = "devices"


def _mesh():
    devices = jax.devices()
    return Mesh(np.array(devices), (_MESH_AXIS,)) if len(devices) > 1 else None


#: Ensembles at least this large hint, once per process, that a multi-core CPU
#: seen as one device leaves cores idle.
_HINT_MIN_MEMBERS = 64
_hinted = False


def _hint_cpu_devices(m: int) -> None:
    global _hinted
    cores = os.cpu_count() or 1
    devices = jax.devices()
    if _hinted or m < _HINT_MIN_MEMBERS or cores < 2 or len(devices) > 1 or devices[0].platform != "cpu":
        return
    _hinted = True
    warnings.warn(
        f"JAX sees this {cores}-core CPU as one device, so the {m} members are solved on "
        f"one core. To shard them over all cores, run "
        f"`jax.config.update(\"jax_num_cpu_devices\", {cores})` before JAX first runs "
        "(e.g. right after importing jax); 256 small networks on 2 cores solved 1.6× "
        "faster. This is said once per process.",
        stacklevel=3,
    )


def _pad_and_shard(tree, m: int, m_pad: int, mesh):
    """Pad the member axis to `m_pad` (repeating the last member) and place it
    across the mesh."""

    def place(x):
        if not eqx.is_array(x):
            return x
        x = jnp.asarray(x)
        if m_pad > m:
            x = jnp.concatenate([x, jnp.repeat(x[-1:], m_pad - m, axis=0)])
        if mesh is not None:
            spec = PartitionSpec(_MESH_AXIS, *([None] * (x.ndim - 1)))
            x = jax.device_put(x, NamedSharding(mesh, spec))
        return x

    return jtu.tree_map(place, tree)


#: `batch_size="auto"`'s largest chunk of smooth flows on a CPU device.
_CPU_CHUNK = 32


def _auto_batch_size(model, n_dev: int, m: int) -> int | None:
    """`batch_size="auto"`: on CPU devices, each device solves its members one after
    another (`1`) for piecewise-smooth flows, and in chunks of at most 32 (of equal
    size) for smooth ones; elsewhere all members at once (`None`).

    A vmapped solve takes its slowest member's step count for every member, and on a
    CPU a batched step costs nearly as much per member as an unbatched one. Kinked
    (ReLU) flows have heavy-tailed step counts: 256 two-layer ReLU networks (n = 20,
    width 16, t1 = 10, Tsit5, rtol 1e-6) took 23 to 47 108 steps (median 262), so
    97 % of an all-at-once batch's member-steps went to members that had finished:
    140 s all at once, 5.9 s one after another (a loop of `fs.solve`: 6.3–6.6 s).
    Smooth flows finish closer together, but all at once still wastes 38 % (n = 20,
    width 16) and 23 % (n = 50, width 50) of the member-steps of 256 tanh networks.
    Flows per second, whole calls (`scripts/ensemble_throughput.py`'s cases):

    | devices × chunk | all at once | 64 | 32 | 16 |
    |---|---|---|---|---|
    | 1 CPU, n = 20, width 16 | 3 840 | 5 100 | 5 930 | 5 700 |
    | 1 CPU, n = 50, width 50 | 1 190 | 1 120 | 1 110 | 1 060 |
    | 2 CPUs, n = 20, width 16 | 7 860 | 8 700 | 8 980 | 9 140 |
    | 2 CPUs, n = 50, width 50 | 1 630 | 1 910 | 2 190 | 2 310 |

    On one CPU device the larger batched operations of all-at-once at n = 50 run on
    both cores, which chunks of 32 give up (7 %); everywhere else chunks win. On a
    GPU a batched step costs little more than one member's.
    """
    if jax.devices()[0].platform != "cpu":
        return None
    if isinstance(model, AbstractModel) and not model.smooth:
        return 1
    per_device = -(-m // n_dev)
    n_chunks = -(-per_device // _CPU_CHUNK)
    return None if n_chunks == 1 else -(-per_device // n_chunks)


#: The vmapped member axis, named so that `AutoSwitch` can switch all members at once.
_AXIS = "members"


#: The host's bar over members while a chunked or sharded ensemble runs (see
#: `_members_bar`); chunks report to it from inside the compiled program.
_MEMBER_BAR = None


def _advance_member_bar(count, _):
    bar = _MEMBER_BAR
    if bar is not None:  # padding members count too: stop at the real ones
        bar.update(min(int(count), bar.total - bar.n))


@contextlib.contextmanager
def _members_bar(total: int, on: bool):
    global _MEMBER_BAR
    if not on:
        yield
        return
    import tqdm

    _MEMBER_BAR = tqdm.tqdm(total=total, desc="flowsolve ensemble", unit="member")
    try:
        yield
    finally:
        _MEMBER_BAR.close()
        _MEMBER_BAR = None


def _ensemble_program(ens):
    args, y0s, flows, stacked_flows, batch_size, clock, mesh, member_bar, per_device_loop = ens
    if isinstance(args[1], AutoSwitch):
        args = (args[0], dataclasses.replace(args[1], axis_name=_AXIS), *args[2:])

    def member(y0, flow):
        a = list(args)
        a[3] = y0
        if stacked_flows:
            a[0] = flow.term(clock)
            a[8] = flow.problem
        return _program(tuple(a))

    fn = eqx.filter_vmap(
        member, in_axes=(0, eqx.if_array(0) if stacked_flows else None), axis_name=_AXIS
    )
    dyn, static = eqx.partition((y0s, flows if stacked_flows else None), eqx.is_array)

    def chunks(dyn, size, strided):
        # All at once, or in chunks of `size` one after the other (lax.map): a chunk
        # ends with its slowest member, not with the slowest member of the whole
        # ensemble. `strided`: chunk c holds members c, c + C, c + 2C, ... (C
        # chunks), so that each chunk of a member axis sharded in contiguous blocks
        # keeps members on every device.
        m = jtu.tree_leaves(dyn)[0].shape[0]
        if size is None:
            y, f = eqx.combine(dyn, static)
            out = fn(y, f if stacked_flows else flows)
            if member_bar:
                jax.debug.callback(_advance_member_bar, m, out["t_final"])
            return out
        if strided:
            split = lambda x: x.reshape(size, m // size, *x.shape[1:]).swapaxes(0, 1)
            merge = lambda x: x.swapaxes(0, 1).reshape(m, *x.shape[2:])
        else:
            split = lambda x: x.reshape(m // size, size, *x.shape[1:])
            merge = lambda x: x.reshape(m, *x.shape[2:])

        def run_chunk(d):
            y, f = eqx.combine(d, static)
            out = fn(y, f if stacked_flows else flows)
            if member_bar:  # after the chunk: the callback depends on its output
                jax.debug.callback(_advance_member_bar, size, out["t_final"])
            return out

        return jtu.tree_map(merge, jax.lax.map(run_chunk, jtu.tree_map(split, dyn)))

    if mesh is None:
        return chunks(dyn, batch_size, False)
    if not per_device_loop:
        # A sharded `vmap`: the adaptive loop's stopping test and each step are
        # agreed across devices, which all run until the slowest member anywhere has
        # finished. `batch_size` members per device make a chunk.
        size = None if batch_size is None else batch_size * mesh.size
        return chunks(dyn, size, True)
    # Each device solves its own members with its own loop (`shard_map`).
    spec = PartitionSpec(_MESH_AXIS)
    local = lambda d: chunks(d, batch_size, False)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec,), out_specs=spec, check_vma=False)(dyn)


#: Ensemble programs (by abstract key) that could not run one loop per device.
_NO_PER_DEVICE_LOOP: set = set()


def _run_ensemble(ens):
    """Compile and run the ensemble program, with one loop per device where it
    traces. lineax checks that a linear operator's structure matches its vector's,
    and inside `shard_map` one of them carries the device mesh and the other not
    (diffrax's implicit solvers, e.g. Kvaerno5, and matrix-free CG natural
    gradients fail so): such programs fall back to a sharded `vmap`, and the choice
    is remembered. Returns `(out, compile_time, wall_time, per_device_loop)`."""
    mesh = ens[6]
    run = lambda per_device_loop: compile_and_run("ensemble.solve", _ensemble_program, (*ens, per_device_loop))
    if mesh is None:
        return (*run(True), True)
    key = abstract_key(ens)
    failed = 0.0
    if key is None or key not in _NO_PER_DEVICE_LOOP:
        t0 = time.perf_counter()
        try:
            return (*run(True), True)
        except ValueError:
            if key is not None:
                _NO_PER_DEVICE_LOOP.add(key)
            failed = time.perf_counter() - t0
    out, compile_time, wall_time = run(False)
    return out, compile_time + failed, wall_time, False


def solve(
    flow: AbstractFlow | Sequence[AbstractFlow],
    models,
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
    batch_size: int | str | None = "auto",
    shard: bool = True,
) -> Trajectory:
    r"""Solve one flow from many initial models — or many flows that differ only in
    their arrays (damping, data of one shape) — in one compiled call.

    **Arguments:** as `fs.solve` (`progress=True`: the clock's bar where one loop
    runs all members, otherwise one bar counting members as chunks finish), and

    - `flow`: one flow shared by all members, or a list of flows (one per member)
        that differ only in array values, e.g. `fs.NaturalGradientFlow(problem,
        damping=λ)` for several λ, or problems on resampled data of one shape.
    - `models`: a list of initial models, or one model whose parameter arrays carry
        a leading member axis (`fs.ensemble.stack`), e.g. a sweep of init scales.
    - `batch_size`: each device solves its members in chunks of this size one after
        another (`lax.map`) instead of all at once. A vmapped adaptive solve takes as
        many steps as its slowest member for every member, so chunks of similar
        members (sort them by expected difficulty) can finish sooner; `1` solves the
        members one after another, unbatched, each with its own step count (on one
        device bitwise the answers of `fs.solve` with the same solver: for ReLU
        networks `"auto"` on the linear clock picks one for all members from the
        stiffest of them);
        `None` vmaps all of a device's
        members. `"auto"` (default): on CPU devices, `1` for piecewise-smooth flows
        (ReLU networks, `model.smooth == False`, whose step counts vary by orders of
        magnitude between members) and equal chunks of at most 32 for smooth ones
        (`None` when one chunk holds them all); `None` on GPUs.
        `info["batch_size"]` reports the choice.
    - `shard`: place the member axis across all devices (`jax.sharding`; a no-op on
        one device); each device solves its members with its own loop
        (`jax.shard_map`; where the program cannot trace there, e.g. with diffrax's
        implicit solvers, a sharded `vmap` whose devices step together:
        `info["per_device_loop"]` says which). The same call runs on one CPU, several GPUs, or several
        hosts under `jax.distributed`. JAX sees a CPU as one device: to solve on all
        its cores, ask for one device per core before JAX first runs, e.g.
        `jax.config.update("jax_num_cpu_devices", os.cpu_count())`.

    **Returns:**

    A `Trajectory` with a leading member axis on `metrics`, `final` (and `params`
    if saved), per-member `results`, `log_t_final` and step counts; `traj[i]` is
    member `i`. A failed member does not stop the others. Members solved one after
    another (`batch_size=1` on one device) can be interrupted (KeyboardInterrupt)
    between members: the members solved so far are returned, the others with
    `RESULTS.interrupted`, unsolved (at θ0).
    """
    stacked_flows = isinstance(flow, list | tuple)
    if stacked_flows and not flow:
        raise ValueError("`flow` must be a flow or a non-empty list of flows.")
    flow0 = flow[0] if stacked_flows else flow
    if not isinstance(flow0, AbstractFlow):
        raise ValueError(f"`flow` must be a flow or a list of flows, got {type(flow0).__name__}.")
    y_stacked, m = _members(models, "models", flow0.problem.model)
    if stacked_flows:
        if len(flow) != m:
            raise ValueError(f"Got {len(flow)} flows for {m} members; give one flow per member or one flow.")
        flows = stack(flow)
        # `prepare` checks the metrics against flow 0's problem; a linear margin also
        # needs every other member's data separable (checked once per data set).
        seen = {(id(flow0.problem.X), id(flow0.problem.y))}
        for i, f in enumerate(flow[1:], start=1):
            key = (id(f.problem.X), id(f.problem.y))
            if key not in seen:
                seen.add(key)
                try:
                    resolve_metrics(metrics, f.problem, _index(y_stacked, 0))
                except ValueError as e:
                    raise ValueError(f"Member {i}'s flow: {e}") from None
    else:
        flows = flow
    setup = prepare(
        flow0, _index(y_stacked, 0), t1, log_t1=log_t1, t0=t0, clock=clock, solver=solver,
        rtol=rtol, atol=atol, dt0=dt0, saveat=saveat, metrics=metrics, progress=progress,
        max_steps=max_steps, error_norm=error_norm,
        members=(flows if stacked_flows else None, eqx.filter(y_stacked, eqx.is_inexact_array)),
    )
    if batch_size is not None and batch_size != "auto" and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"`batch_size` must be a positive integer, None or 'auto', got {batch_size!r}.")
    mesh = _mesh() if shard else None
    if shard:
        _hint_cpu_devices(m)
    n_dev = 1 if mesh is None else mesh.size
    if batch_size == "auto":
        batch_size = _auto_batch_size(flow0.problem.model, n_dev, m)
    elif batch_size is not None and batch_size > 1 and batch_size >= -(-m // n_dev):
        # One chunk holds every member of a device: all at once, without padding the
        # ensemble to a multiple of the chunk (4 members at batch_size=64 solved 64).
        batch_size = None
    if batch_size == 1 and n_dev == 1:
        out, compile_time, wall_time, interrupted_from = _one_after_another(
            setup, y_stacked, flow if stacked_flows else None, m
        )
        return _finish_ensemble(
            setup, out, m, compile_time, wall_time, flow if stacked_flows else None, 1,
            interrupted_from=interrupted_from,
        )
    unit = n_dev if batch_size is None else batch_size * n_dev
    m_pad = -(-m // unit) * unit
    y0s = _pad_and_shard(eqx.filter(y_stacked, eqx.is_inexact_array), m, m_pad, mesh)
    if stacked_flows:
        flows = _pad_and_shard(flows, m, m_pad, mesh)
    # Progress: the clock's bar where one loop runs all members (one device, all at
    # once); otherwise one bar over members, advanced as chunks finish (a clock bar
    # per chunk and device would interleave).
    args = setup.args
    member_bar = progress and (n_dev > 1 or batch_size is not None)
    if member_bar:
        args = (*args[:14], diffrax.NoProgressMeter(), *args[15:])
    ens = (args, y0s, flows, stacked_flows, batch_size, setup.clock, mesh, member_bar)
    with _members_bar(m, member_bar):
        out, compile_time, wall_time, per_device_loop = _run_ensemble(ens)
    out = jtu.tree_map(lambda x: np.asarray(x)[:m], out)
    return _finish_ensemble(
        setup, out, m, compile_time, wall_time, flow if stacked_flows else None, batch_size, per_device_loop
    )


def _one_after_another(setup, y_stacked, flows, m: int):
    """`batch_size=1` on one device: each member through `fs.solve`'s own compiled
    program (the same executable, from the compilation cache), one call per member,
    outputs stacked as a vmapped solve's. Unbatched, each member takes its own step
    count; and a host loop of compiled calls beat one `lax.map` over the members
    (256 ReLU nets, 313 240 steps in all: 5.9 s against 9.1–9.7 s, about 19 against
    30 µs a step: XLA compiles the solve's while loop less well inside a scan).
    Bitwise `fs.solve`'s answers.

    A KeyboardInterrupt between members keeps the members solved so far; the others
    are returned unsolved (at θ0), and the index of the first of them comes back as
    the fourth output (`None` if all were solved)."""
    args = list(setup.args)
    # One bar over the members, not one bar in the clock per member.
    bar = not isinstance(args[14], diffrax.NoProgressMeter)
    args[14] = diffrax.NoProgressMeter()
    y0s = jtu.tree_map(np.asarray, eqx.filter(y_stacked, eqx.is_inexact_array))
    outs, compile_time, wall_time = [], 0.0, 0.0
    interrupted_from = None
    with _members_bar(m, bar):
        try:
            for i in range(m):
                args[3] = _index(y0s, i)
                if flows is not None:
                    args[0], args[8] = flows[i].term(setup.clock), flows[i].problem
                out, ct, wt = compile_and_run("solve", _program, tuple(args))
                outs.append(jtu.tree_map(np.asarray, out))
                compile_time += ct
                wall_time += wt
                _advance_member_bar(1, None)
        except KeyboardInterrupt:
            if not outs:
                raise  # nothing to keep
            interrupted_from = len(outs)
            s0 = np.asarray(setup.args[4])
            outs += [_unsolved(outs[0], _index(y0s, i), s0) for i in range(interrupted_from, m)]
    stacked = jtu.tree_map(lambda *xs: np.stack(xs), *outs)
    return stacked, compile_time, wall_time, interrupted_from


def _unsolved(template: dict, y0, s0) -> dict:
    """A member's program output for a member that was never solved: no steps, no
    save point reached, the final state θ0 at the start of the clock."""
    blank = lambda x: np.full_like(x, np.nan) if np.issubdtype(x.dtype, np.inexact) else np.zeros_like(x)
    out = jtu.tree_map(blank, template)
    out["ts_saved"] = np.full_like(template["ts_saved"], np.inf)
    out["final"] = jtu.tree_map(lambda x, t: np.broadcast_to(x, t.shape).astype(t.dtype), y0, template["final"])
    out["t_final"] = np.asarray(s0, template["t_final"].dtype)
    if "switched_at" in out:
        out["switched_at"] = np.full_like(template["switched_at"], np.inf)
    return out


def _finish_ensemble(
    setup, out, m, compile_time, wall_time, member_flows, batch_size, per_device_loop=True,
    interrupted_from=None,
) -> Trajectory:
    names, static, clock = setup.names, setup.static, setup.clock
    s_save = np.asarray(setup.args[7])
    t_final = out["t_final"]  # (M,)
    ts_saved = out["ts_saved"]  # (M, T)
    reached = np.isfinite(ts_saved) & (ts_saved <= t_final[:, None])
    saved = dict(out["saved"])
    params_hist = saved.pop("__params__", None)

    def mask(x):
        x = np.array(x, dtype=np.result_type(x, np.float64))
        shape = reached.shape + (1,) * (x.ndim - 2)
        return np.where(reached.reshape(shape), x, np.nan)

    metrics = {name: mask(saved[name]) for name in names}
    final_params = jtu.tree_map(lambda x: x[:, -1], out["final"])
    results = []
    codes = np.asarray(out["result"])
    by_code = {int(c): result_of(c) for c in np.unique(codes)}
    for i in range(m):
        if interrupted_from is not None and i >= interrupted_from:
            results.append(RESULTS.interrupted)
            continue
        r = by_code[int(codes[i])]
        if r is not RESULTS.successful:
            fl = setup.flow if member_flows is None else member_flows[i]
            if _nonfinite(fl, _index(final_params, i), float(t_final[i]), clock):
                r = RESULTS.nonfinite
        results.append(r)
    failed = [r for r in results if not r.success]
    ts, log_ts = _clock_to_log_t(s_save, clock)
    log_t_final = _clock_to_log_t(t_final, clock)[1]
    num_steps = out["num_steps"].astype(np.int64)
    vf = _vf_evals(setup, num_steps)
    stats = {
        "num_accepted_steps": out["num_accepted_steps"].astype(np.int64),
        "num_rejected_steps": out["num_rejected_steps"].astype(np.int64),
        "num_steps": num_steps,
        "num_vf_evals": vf,
        "wall_time": wall_time,
        "compile_time": compile_time,
        "num_params": setup.num_params,
        "num_members": m,
        "num_devices": len(jax.devices()),
    }
    params = None
    if params_hist is not None:
        params = eqx.combine(jtu.tree_map(mask, params_hist), static)
    info = {**setup.info, "kind": "ensemble-flow", "batch_size": batch_size, "per_device_loop": per_device_loop}
    if "stiff" in out:
        # Per member: log t of the last switch to the implicit method, NaN where it never
        # came or was undone; and how many switches there were.
        # Vmapped members switch together (see `AutoSwitch`), one by one each alone.
        stiff = np.asarray(out["stiff"], bool)
        with np.errstate(invalid="ignore"):
            info["switched_at"] = np.where(stiff, _clock_to_log_t(out["switched_at"], clock)[1], np.nan)
        info["solver"] = setup.solver.label if stiff.any() else "tsit5"
        info["switches"] = np.asarray(out["switches"]).astype(np.int64)
    return Trajectory(
        ts=ts,
        log_ts=log_ts,
        metrics=metrics,
        params=params,
        final=eqx.combine(final_params, static),
        log_t_final=log_t_final,
        result=(
            RESULTS.interrupted if interrupted_from is not None
            else failed[0] if failed else RESULTS.successful
        ),
        stats=stats,
        info=info,
        results=tuple(results),
    )


def descend(
    problem: Problem,
    models,
    *,
    optimizer="gd",
    lr=1.0,
    steps: int = 1000,
    saveat: SaveAt | None = None,
    metrics=("loss", "log_loss"),
    chunk: int = 16,
    shard: bool = True,
) -> Trajectory:
    """`fs.descend` for many initial models in one compiled loop (vmapped and
    sharded like `fs.ensemble.solve`). A member whose step turns non-finite stops
    there; the others go on."""
    if not isinstance(problem, Problem):
        raise ValueError(f"`problem` must be a fs.Problem, got {type(problem).__name__}.")
    y_stacked, m = _members(models, "models", problem.model)
    prep = prepare_descent(
        problem, _index(y_stacked, 0), optimizer=optimizer, lr=lr, steps=steps,
        saveat=saveat, metrics=metrics, chunk=chunk,
    )
    mesh = _mesh() if shard else None
    n_dev = 1 if mesh is None else mesh.size
    m_pad = -(-m // n_dev) * n_dev
    params = _pad_and_shard(eqx.filter(y_stacked, eqx.is_inexact_array), m, m_pad, mesh)
    state = eqx.filter_vmap(prep.initial_state)(params)
    traj = run_descent_chunks(prep, state, batched=True, progress=False)
    return _trim_members(traj, m)


def _trim_members(traj: Trajectory, m: int) -> Trajectory:
    if traj.results is None or len(traj.results) == m:
        return traj
    cut = lambda tree: jtu.tree_map(lambda x: x[:m] if eqx.is_array(x) else x, tree)
    stats = {k: (v[:m] if isinstance(v, np.ndarray) and v.ndim == 1 else v) for k, v in traj.stats.items()}
    stats["num_members"] = m
    return Trajectory(
        ts=traj.ts, log_ts=traj.log_ts, metrics={k: v[:m] for k, v in traj.metrics.items()},
        params=None if traj.params is None else cut(traj.params), final=cut(traj.final),
        log_t_final=np.asarray(traj.log_t_final)[:m], result=traj.result, stats=stats,
        info=traj.info, results=traj.results[:m],
    )

