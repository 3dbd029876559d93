import dataclasses
import importlib
import io
import pickle
import types
import warnings
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.tree_util as jtu
import numpy as np

from ._results import RESULTS


_FORMAT = "flowsolve.Trajectory/1"


def _import_attr(module: str, qualname: str):
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class _Pickler(pickle.Pickler):
    """Pickles JAX's wrapped functions by their import path. `jax.nn.relu`,
    `jnp.tanh` and the like are jitted or custom-derivative objects around a plain
    function of the same name, which pickle cannot find by that name ("not the same
    object"): any model with such an activation (`eqx.nn.MLP` by default) could
    not be saved."""

    def reducer_override(self, obj):
        if not callable(obj) or isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
            return NotImplemented
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
            try:
                if _import_attr(module, qualname) is obj:
                    return _import_attr, (module, qualname)
            except (ImportError, AttributeError):
                pass
        return NotImplemented


def _dumps(payload) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
    return buf.getvalue()


_LEAVES = "flowsolve.leaves/1"


def _leaves_record(model):
    if model is None:
        return None
    leaves = jtu.tree_leaves(eqx.filter(model, eqx.is_array))
    return {"format": _LEAVES, "type": type(model).__name__, "leaves": [np.asarray(x) for x in leaves]}


def _from_record(value, like, path):
    """A model saved whole, or rebuilt from its arrays into `like`'s structure."""
    if not (isinstance(value, dict) and value.get("format") == _LEAVES):
        return value
    leaves = value["leaves"]
    if like is None:
        warnings.warn(
            f"{path} holds the arrays of its {value['type']} models only (their "
            "structure could not be saved); pass `like=` a model of that structure "
            "to get models back. Returning the arrays as a list.",
            UserWarning,
            stacklevel=3,
        )
        return leaves
    arrays, rest = eqx.partition(like, eqx.is_array)
    like_leaves, treedef = jtu.tree_flatten(arrays)
    if len(like_leaves) != len(leaves) or any(
        np.shape(a)[np.ndim(a) - np.ndim(b):] != np.shape(b) for a, b in zip(leaves, like_leaves)
    ):
        raise ValueError(
            f"`like` does not match the saved arrays: {type(like).__name__} has shapes "
            f"{[np.shape(x) for x in like_leaves]}, the file "
            f"{[np.shape(x) for x in leaves]} (possibly with leading save or member axes)."
        )
    return eqx.combine(jtu.tree_unflatten(treedef, leaves), rest)


def _to_numpy(tree):
    return jtu.tree_map(lambda x: np.asarray(x) if eqx.is_array(x) else x, tree)


@dataclasses.dataclass(frozen=True, eq=False)
class Trajectory:
    """The result of `fs.solve` or `fs.descend`, on the host (numpy).

    **Attributes:**

    - `ts`: times `t` of the save points that were reached (may be `inf` past
        `t ≈ 1.8e308` on the log clock; use `log_ts` there).
    - `log_ts`: natural log of `ts`, exact at any horizon (`-inf` at `t = 0`).
    - `metrics`: dict name → array with a leading axis over the save points.
    - `params`: the model at every save point (leading axis), if
        `SaveAt(params=True)`, else `None`.
    - `final`: the model at the last time reached (`log_t_final`).
    - `log_t_final`: `log t` where the solve ended (the horizon, unless it failed).
    - `result`: a `fs.RESULTS` member; `success` says whether it reached the end.
    - `stats`: dict of solver statistics: `num_accepted_steps`,
        `num_rejected_steps`, `num_steps`, `num_vf_evals` (exact count for explicit
        Runge–Kutta solvers, `None` where not counted), `wall_time` (seconds, after
        compilation), `compile_time` (seconds; 0 when a compiled solve was
        reused), and for descents the number of steps taken.
    - `info`: how it was produced: kind (`"flow"`/`"descent"`), method, clock,
        solver, tolerances, requested horizon.
    - `results`: for an ensemble (`fs.ensemble`), each member's `RESULTS`; then
        `metrics` and `final` carry a leading member axis (metrics are NaN past
        where a member stopped), `log_t_final` and the step counts in `stats` are
        per-member arrays, `result` is the first failure (or success), and
        `traj[i]` is member `i` as an ordinary trajectory.
    """

    ts: np.ndarray
    log_ts: np.ndarray
    metrics: dict[str, np.ndarray]
    params: Any
    final: Any
    log_t_final: float
    result: RESULTS
    stats: dict[str, Any]
    info: dict[str, Any]
    results: tuple[RESULTS, ...] | None = None

    @property
    def success(self) -> bool:
        if self.results is not None:
            return all(r.success for r in self.results)
        return self.result.success

    @property
    def num_members(self) -> int | None:
        """Number of ensemble members, or `None` for a single trajectory."""
        return None if self.results is None else len(self.results)

    def __len__(self) -> int:
        if self.results is None:
            raise TypeError("A single trajectory has no members; len() is for ensembles.")
        return len(self.results)

    def __getitem__(self, i: int) -> "Trajectory":
        """Member `i` of an ensemble, as an ordinary trajectory."""
        if self.results is None:
            raise TypeError("Only ensemble trajectories (fs.ensemble) can be indexed.")
        m = len(self.results)
        if not -m <= i < m:
            raise IndexError(f"member {i} out of range for an ensemble of {m}")
        i = i % m
        log_t_final = float(np.asarray(self.log_t_final)[i])
        reached = self.log_ts <= log_t_final + 1e-12 * max(1.0, abs(log_t_final))
        take = lambda x: np.asarray(x)[i][reached] if np.ndim(x) >= 2 else np.asarray(x)[i]
        member = lambda tree: jtu.tree_map(lambda x: np.asarray(x)[i] if eqx.is_array(x) else x, tree)
        stats = {k: (v[i].item() if isinstance(v, np.ndarray) and v.ndim == 1 else v) for k, v in self.stats.items()}
        params = None
        if self.params is not None:
            params = jtu.tree_map(lambda x: np.asarray(x)[i][reached] if eqx.is_array(x) else x, self.params)
        info = {**self.info, "member": i}
        if isinstance(info.get("switched_at"), np.ndarray):  # auto's switch, per member
            switched_at = float(info["switched_at"][i])
            info["switched_at"] = None if np.isnan(switched_at) else switched_at
            # A member that switched ends with the ensemble's implicit method.
            info["solver"] = "tsit5" if info["switched_at"] is None else self.info["solver"]
        if isinstance(info.get("switches"), np.ndarray):
            info["switches"] = int(info["switches"][i])
        return Trajectory(
            ts=self.ts[reached],
            log_ts=self.log_ts[reached],
            metrics={k: take(v) for k, v in self.metrics.items()},
            params=params,
            final=member(self.final),
            log_t_final=log_t_final,
            result=self.results[i],
            stats=stats,
            info=info,
        )

    @property
    def t_final(self) -> float:
        with np.errstate(over="ignore"):
            return float(np.exp(self.log_t_final))

    @property
    def clock(self) -> str:
        return self.info.get("clock", "linear")

    def __repr__(self) -> str:
        names = ", ".join(self.metrics)
        if self.results is not None:
            failed = sum(not r.success for r in self.results)
            return (
                f"Trajectory(ensemble of {len(self.results)} × {self.info.get('method', '?')}, "
                f"{len(self.log_ts)} points, {failed} failed, metrics=[{names}])"
            )
        return (
            f"Trajectory({self.info.get('method', '?')}, {len(self.log_ts)} points to "
            f"log t = {float(self.log_t_final):.6g}, result={self.result.name}, "
            f"metrics=[{names}], steps={self.stats.get('num_steps')})"
        )

    def save(self, path: str | Path) -> Path:
        """Write the trajectory to `path` (a single file; exact round trip)."""
        path = Path(path)
        payload = {
            "format": _FORMAT,
            "ts": self.ts,
            "log_ts": self.log_ts,
            "metrics": dict(self.metrics),
            "params": _to_numpy(self.params),
            "final": _to_numpy(self.final),
            "log_t_final": self.log_t_final,
            "result": self.result.name,
            "stats": dict(self.stats),
            "info": dict(self.info),
            "results": None if self.results is None else [r.name for r in self.results],
        }
        try:
            data = _dumps(payload)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            # A part of the model that is not an array (a lambda as activation, as in
            # eqx.nn.MLP's default final activation) cannot be pickled. Keep the
            # arrays, which are everything the run computed; `load(path, like=model)`
            # puts them back into the model's structure.
            warnings.warn(
                f"{type(self.final).__name__}'s non-array parts cannot be pickled ({e}); "
                "saved its arrays only. Load with `fs.Trajectory.load(path, like=model)` "
                "to get models back.",
                UserWarning,
                stacklevel=2,
            )
            payload["params"] = _leaves_record(self.params)
            payload["final"] = _leaves_record(self.final)
            data = _dumps(payload)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, like: Any = None) -> "Trajectory":
        """Read a trajectory written by `save`. Only load files you trust (pickle).

        `like`: a model of the same structure (θ0, say), to rebuild the models of a
        trajectory whose model could not be pickled whole (`save` then keeps its
        arrays and warns); without it their arrays come back as a list."""
        path = Path(path)
        with path.open("rb") as f:
            try:
                payload = pickle.load(f)
            except (pickle.UnpicklingError, EOFError, ValueError, IndexError) as e:
                raise ValueError(f"{path} is not a flowsolve trajectory file ({e}).") from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a flowsolve trajectory file.")
        return cls(
            ts=payload["ts"],
            log_ts=payload["log_ts"],
            metrics=payload["metrics"],
            params=_from_record(payload["params"], like, path),
            final=_from_record(payload["final"], like, path),
            log_t_final=payload["log_t_final"],
            result=RESULTS[payload["result"]],
            stats=payload["stats"],
            info=payload["info"],
            results=None
            if payload.get("results") is None
            else tuple(RESULTS[r] for r in payload["results"]),
        )
