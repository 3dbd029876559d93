"""Many flows in one compiled solve: `vmap` over initial models (and, optionally,
over flows that differ in their arrays: damping, data), sharded over devices."""

import math
from collections.abc import Callable, Mapping, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._compile import compile_and_run
from ._descend import prepare_descent, run_descent_chunks
from ._flow import AbstractFlow
from ._problem import Problem
from ._results import RESULTS
from ._saveat import SaveAt
from ._solve import _clock_to_log_t, _nonfinite, _program, _vf_evals, prepare, result_of
from ._trajectory import Trajectory


def stack(items: Sequence) -> object:
    """Stack models (or flows) of one structure into one pytree whose arrays carry a
    leading member axis. Their non-array parts (activation, static fields) must
    agree."""
    items = list(items)
    if not items:
        raise ValueError("Nothing to stack: give at least one model or flow.")
    dyn0, static0 = eqx.partition(items[0], eqx.is_array)
    dyns = []
    for i, item in enumerate(items):
        dyn, static = eqx.partition(item, eqx.is_array)
        if jtu.tree_structure(dyn) != jtu.tree_structure(dyn0) or static != static0:
            raise ValueError(
                f"Member {i} differs from member 0 in structure or in a non-array "
                "attribute; an ensemble varies arrays only (initial weights, data, "
                "damping...). Solve differently-structured models separately."
            )
        if any(a.shape != b.shape for a, b in zip(jtu.tree_leaves(dyn), jtu.tree_leaves(dyn0))):
            raise ValueError(f"Member {i} has arrays of other shapes than member 0.")
        dyns.append(dyn)
    stacked = jtu.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *dyns)
    return eqx.combine(stacked, static0)


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


def _mesh():
    devices = jax.devices()
    return Mesh(np.array(devices), ("members",)) if len(devices) > 1 else None


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
            spec = PartitionSpec("members", *([None] * (x.ndim - 1)))
            x = jax.device_put(x, NamedSharding(mesh, spec))
        return x

    return jtu.tree_map(place, tree)


def _ensemble_program(ens):
    args, y0s, flows, stacked_flows, batch_size, clock = ens

    def member(y0, flow):
        a = list(args)
        a[3] = y0
        if stacked_flows:
            a[0] = flow.term(clock)
            a[8] = flow.problem
        return _program(tuple(a))

    fn = eqx.filter_vmap(member, in_axes=(0, eqx.if_array(0) if stacked_flows else None))
    if batch_size is None:
        return fn(y0s, flows)
    # Chunks of `batch_size` members, one after the other (lax.map): a chunk ends
    # with its slowest member, not with the slowest member of the whole ensemble.
    dyn, static = eqx.partition((y0s, flows if stacked_flows else None), eqx.is_array)
    m = jtu.tree_leaves(dyn)[0].shape[0]
    chunked = jtu.tree_map(lambda x: x.reshape(m // batch_size, batch_size, *x.shape[1:]), dyn)

    def run_chunk(d):
        y, f = eqx.combine(d, static)
        return fn(y, f if stacked_flows else flows)

    out = jax.lax.map(run_chunk, chunked)
    return jtu.tree_map(lambda x: x.reshape(m, *x.shape[2:]), out)


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
    dt0: float | None = None,
    saveat: SaveAt | None = None,
    metrics: Sequence[str | Callable] | Mapping[str, Callable] | None = ("loss", "log_loss"),
    progress: bool = False,
    max_steps: int = 100_000,
    batch_size: int | None = None,
    shard: bool = True,
) -> Trajectory:
    r"""Solve one flow from many initial models — or many flows that differ only in
    their arrays (damping, data of one shape) — in one compiled call.

    **Arguments:** as `fs.solve`, and

    - `flow`: one flow shared by all members, or a list of flows (one per member)
        that differ only in array values, e.g. `fs.NaturalGradientFlow(problem,
        damping=λ)` for several λ, or problems on resampled data of one shape.
    - `models`: a list of initial models, or one model whose parameter arrays carry
        a leading member axis (`fs.ensemble.stack`), e.g. a sweep of init scales.
    - `batch_size`: solve members in chunks of this size one after another
        (`lax.map`) instead of all at once. A vmapped adaptive solve runs until its
        slowest member finishes, so chunks of similar members (sort them by
        expected difficulty) can finish sooner; `None` vmaps all members.
    - `shard`: place the member axis across all devices (`jax.sharding`; a no-op on
        one device). The same call runs on one CPU, several GPUs, or several hosts
        under `jax.distributed`.

    **Returns:**

    A `Trajectory` with a leading member axis on `metrics`, `final` (and `params`
    if saved), per-member `results`, `log_t_final` and step counts; `traj[i]` is
    member `i`. A failed member does not stop the others.
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
    else:
        flows = flow
    setup = prepare(
        flow0, _index(y_stacked, 0), t1, log_t1=log_t1, t0=t0, clock=clock, solver=solver,
        rtol=rtol, atol=atol, dt0=dt0, saveat=saveat, metrics=metrics, progress=progress,
        max_steps=max_steps,
    )
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    mesh = _mesh() if shard else None
    n_dev = 1 if mesh is None else mesh.size
    unit = n_dev if batch_size is None else math.lcm(batch_size, n_dev)
    m_pad = -(-m // unit) * unit
    y0s = _pad_and_shard(eqx.filter(y_stacked, eqx.is_inexact_array), m, m_pad, mesh)
    if stacked_flows:
        flows = _pad_and_shard(flows, m, m_pad, mesh)
    ens = (setup.args, y0s, flows, stacked_flows, batch_size, setup.clock)
    out, compile_time, wall_time = compile_and_run("ensemble.solve", _ensemble_program, ens)
    out = jtu.tree_map(lambda x: np.asarray(x)[:m], out)
    return _finish_ensemble(setup, out, m, compile_time, wall_time, flow if stacked_flows else None)


def _finish_ensemble(setup, out, m, compile_time, wall_time, member_flows) -> Trajectory:
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
    for i in range(m):
        r = result_of(out["result"][i])
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
    return Trajectory(
        ts=ts,
        log_ts=log_ts,
        metrics=metrics,
        params=params,
        final=eqx.combine(final_params, static),
        log_t_final=log_t_final,
        result=failed[0] if failed else RESULTS.successful,
        stats=stats,
        info={**setup.info, "kind": "ensemble-flow"},
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

