"""`fs.solve` in chunks of save points: checkpoint/resume, plateau stopping, and
interruption that keeps what was done."""

import hashlib
import os
import pickle
from pathlib import Path

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._compile import compile_and_run
from ._results import RESULTS
from ._solve import Setup, _program, finish, result_of
from ._solver import AutoSwitch


#: /2: the fingerprint covers every array of the flow and the solver.
_FORMAT = "flowsolve.checkpoint/2"


def _fingerprint(setup: Setup, every: int) -> str:
    """What must match for a checkpoint to be resumed: the problem's data, the
    initial point, the flow and model structure, every array of the flow and the
    solver (a natural-gradient flow's damping, say), the solver set-up and the save
    grid (not `max_steps`, which a resumed run may raise)."""
    h = hashlib.sha256()
    args = setup.args
    problem, y0, s_save = args[8], args[3], args[7]
    flow_and_solver = jtu.tree_leaves(eqx.filter((args[0], args[1]), eqx.is_array))
    for x in (problem.X, problem.y, s_save, args[4], args[5], *jtu.tree_leaves(y0), *flow_and_solver):
        x = np.asarray(x)
        h.update(str((x.shape, x.dtype)).encode())
        h.update(np.ascontiguousarray(x).tobytes())
    info = {k: v for k, v in setup.info.items() if k not in ("max_steps", "stopped_by")}
    h.update(repr(sorted(info.items())).encode())
    h.update(repr(jtu.tree_structure(eqx.filter(args[0], eqx.is_array))).encode())
    h.update(repr(getattr(args[0], "flow", args[0]).__class__).encode())
    h.update(str(every).encode())
    return h.hexdigest()


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    os.replace(tmp, path)  # atomic: a crash mid-write never leaves a torn checkpoint


def _plateau(stop, s_pts: np.ndarray, values: np.ndarray) -> bool:
    """Relative change of the watched metric over the last `stop.over` of the clock."""
    if len(s_pts) < 2 or s_pts[-1] - s_pts[0] < stop.over:
        return False
    window = s_pts >= s_pts[-1] - stop.over
    v = values[window].reshape(int(window.sum()), -1)
    end = v[-1]
    if not np.all(np.isfinite(v)):
        return False
    scale = np.maximum(np.abs(end), np.finfo(float).tiny)
    return bool(np.max(np.abs(v - end) / scale) <= stop.rtol)


def solve_chunked(setup: Setup, stop, checkpoint, every: int):
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"`checkpoint_every` must be a positive integer, got {every!r}.")
    args = list(setup.args)
    s_start, s_end = float(args[4]), float(args[5])
    s_save = np.asarray(args[7])
    n_chunks = -(-len(s_save) // every)
    bounds = [s_start] + [float(s_save[min((c + 1) * every, len(s_save)) - 1]) for c in range(n_chunks)]
    bounds[-1] = s_end
    path = None if checkpoint is None else Path(checkpoint)
    fingerprint = _fingerprint(setup, every)

    # State carried across chunks (and stored in the checkpoint).
    y = jtu.tree_map(np.asarray, args[3])
    # "auto"'s explicit → implicit switch is carried across chunks.
    switching = isinstance(args[1], AutoSwitch)
    mode = {"stiff": bool(np.asarray(args[1].stiff0)) if switching else False,
            "switched_at": float("nan"), "switches": 0}
    done = 0
    pieces: list[tuple[np.ndarray, dict]] = []
    counts = {"num_accepted_steps": 0, "num_rejected_steps": 0, "num_steps": 0}
    times = {"compile": 0.0, "wall": 0.0}
    if path is not None and path.exists():
        try:
            with path.open("rb") as f:
                saved = pickle.load(f)
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError):
            saved = None
        if isinstance(saved, dict) and str(saved.get("format", "")).startswith("flowsolve.checkpoint/") \
                and saved["format"] != _FORMAT:
            raise ValueError(
                f"{path} was written by another version of flowsolve ({saved['format']}; this "
                f"one reads {_FORMAT}). Remove it to start afresh, or pass another `checkpoint=` path."
            )
        if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a flowsolve checkpoint; remove it or pick another path.")
        if saved["fingerprint"] != fingerprint:
            raise ValueError(
                f"The checkpoint {path} belongs to a different solve (other data, initial "
                "model, flow, solver, tolerances, horizon or save points). Remove it to "
                "start afresh, or pass another `checkpoint=` path."
            )
        y, done, pieces, counts = saved["y"], saved["done"], saved["pieces"], saved["counts"]
        times["wall"] = saved.get("wall", 0.0)
        mode = saved.get("mode", mode)
        plateaued = saved.get("stopped_by") == "plateau"
    else:
        plateaued = False

    # Progress across chunks is shown on the host, chunk by chunk (the in-solve bar
    # would only see one chunk's span).
    bar = None
    if not isinstance(args[14], diffrax.NoProgressMeter):
        import tqdm

        label = "t" if setup.clock == "linear" else "log(1+t)"
        bar = tqdm.tqdm(total=s_end - s_start, desc=f"flowsolve ({label})", unit=label)
        bar.n = bounds[done] - s_start
        args[14] = diffrax.NoProgressMeter()
    result, stopped_by, t_final = RESULTS.successful, "horizon", bounds[done]
    if plateaued:
        # The checkpointed run had stopped on its plateau: it is finished, and the
        # same call again returns it as it was (not one chunk more).
        result, stopped_by = RESULTS.event_occurred, "plateau"
    try:
        for c in range(done, done if plateaued else n_chunks):
            pts = s_save[c * every : (c + 1) * every]
            padded = np.concatenate([pts, np.full(every - len(pts), bounds[c + 1])])
            args[3] = jtu.tree_map(jnp.asarray, y)
            args[4] = jnp.asarray(bounds[c], args[4].dtype)
            args[5] = jnp.asarray(bounds[c + 1], args[5].dtype)
            args[7] = jnp.asarray(padded, args[7].dtype)
            if switching:
                args[1] = eqx.tree_at(lambda s: s.stiff0, args[1], jnp.asarray(mode["stiff"]))
            out, ct, wt = compile_and_run("solve", _program, tuple(args))
            out = jtu.tree_map(np.asarray, out)
            times["compile"] += ct
            times["wall"] += wt
            for k in counts:
                counts[k] += int(out[k])
            t_final = float(out["t_final"])
            keep = np.isfinite(out["ts_saved"][: len(pts)]) & (out["ts_saved"][: len(pts)] <= t_final)
            pieces.append((
                out["ts_saved"][: len(pts)][keep],
                jtu.tree_map(lambda x, keep=keep, m=pts.size: x[:m][keep], out["saved"]),
            ))
            y = jtu.tree_map(lambda x: x[-1], out["final"])
            if switching:
                # The time of the last switch to the implicit method while it is on
                # (a chunk that ends implicit and never switched keeps the earlier
                # one); NaN once it is off.
                if not bool(out["stiff"]):
                    mode["switched_at"] = float("nan")
                elif np.isfinite(out["switched_at"]):
                    mode["switched_at"] = float(out["switched_at"])
                mode["stiff"] = bool(out["stiff"])
                mode["switches"] = mode.get("switches", 0) + int(out["switches"])
            if bar is not None:
                bar.n = t_final - s_start
                bar.refresh()
            r = result_of(out["result"])
            if r is not RESULTS.successful:
                result, stopped_by = r, "loss" if r is RESULTS.event_occurred else "failure"
                break
            done = c + 1
            state = {
                "format": _FORMAT, "fingerprint": fingerprint, "y": y, "done": done,
                "pieces": pieces, "counts": counts, "wall": times["wall"],
                "mode": dict(mode),
            }
            if path is not None:
                _write(path, state)
            if stop is not None and stop.metric is not None and done < n_chunks:
                s_all = np.concatenate([p[0] for p in pieces])
                v_all = np.concatenate([p[1][stop.metric] for p in pieces])
                if _plateau(stop, s_all, v_all):
                    result, stopped_by = RESULTS.event_occurred, "plateau"
                    if path is not None:
                        _write(path, {**state, "stopped_by": "plateau"})
                    break
    except KeyboardInterrupt:
        result, stopped_by = RESULTS.interrupted, "interrupted"
    finally:
        if bar is not None:
            bar.close()

    if pieces:
        ts_saved = np.concatenate([p[0] for p in pieces])
        saved = jtu.tree_map(lambda *xs: np.concatenate(xs), *[p[1] for p in pieces])
    else:
        ts_saved = np.zeros(0)
        saved = None
    out = {
        "saved": saved if saved is not None else {n: np.zeros(0) for n in setup.names},
        "ts_saved": ts_saved,
        "final": jtu.tree_map(lambda x: np.asarray(x)[None], y),
        "t_final": t_final,
        "result": 0,
        "result_override": result,
        "stopped_by": stopped_by,
        **counts,
    }
    if switching:
        out["stiff"], out["switched_at"] = mode["stiff"], mode["switched_at"]
        out["switches"] = mode.get("switches", 0)
    traj = finish(setup, out, times["compile"], times["wall"])
    if traj.result is not RESULTS.event_occurred:
        traj.info["stopped_by"] = "horizon" if traj.result is RESULTS.successful else stopped_by
    return traj
