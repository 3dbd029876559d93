import dataclasses
import pickle
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.tree_util as jtu
import numpy as np

from ._results import RESULTS


_FORMAT = "flowsolve.Trajectory/1"


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
            data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            raise ValueError(
                "This trajectory's model cannot be saved: a part of it (for example a "
                "lambda used as activation) cannot be pickled. Use a function defined "
                f"at module level instead. ({e})"
            ) from e
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Trajectory":
        """Read a trajectory written by `save`. Only load files you trust (pickle)."""
        path = Path(path)
        with path.open("rb") as f:
            payload = pickle.load(f)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a flowsolve trajectory file.")
        return cls(
            ts=payload["ts"],
            log_ts=payload["log_ts"],
            metrics=payload["metrics"],
            params=payload["params"],
            final=payload["final"],
            log_t_final=payload["log_t_final"],
            result=RESULTS[payload["result"]],
            stats=payload["stats"],
            info=payload["info"],
            results=None
            if payload.get("results") is None
            else tuple(RESULTS[r] for r in payload["results"]),
        )
