import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _metrics
from ._descend import descend
from ._flow import AbstractFlow
from ._models import AbstractModel
from ._models.base import predict_batch
from ._problem import Problem
from ._reference import MaxMargin
from ._solve import solve
from ._trajectory import Trajectory


_LN10 = math.log(10.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Comparison:
    """The result of `fs.compare`: the trajectories and a row of asymptotic
    quantities for each, at the horizon each reached.

    **Attributes:**

    - `trajectories`: dict label → `Trajectory`.
    - `rows`: list of dicts (one per run), keys: `label`, `kind`, `method`,
        `log10_t` (horizon reached), `log10_loss`, `margin` (normalised; ℓ2 of
        the end-to-end predictor, or Lyu & Li's for other homogeneous models),
        `margin_gap` (relative to the reference margin), `cosine` (end-to-end vs
        reference direction), `distance` (relative, to a reference vector/matrix),
        `effective_rank`, `singular_values` (of an end-to-end matrix), `test_error`
        (classification error or mean squared error on the test data), `steps`,
        `wall_time`, `result`. Quantities that do not apply are `None`.
    - `reference`: what the runs were compared with.
    """

    trajectories: dict[str, Trajectory]
    rows: list[dict[str, Any]]
    reference: Any

    _COLUMNS = (
        ("label", "run", "s"),
        ("log10_t", "log₁₀ t", ".4g"),
        ("log10_loss", "log₁₀ loss", ".4g"),
        ("margin", "margin", ".6f"),
        ("margin_gap", "margin gap", ".2e"),
        ("cosine", "cos(w, ref)", ".8f"),
        ("distance", "dist(ref)", ".2e"),
        ("effective_rank", "eff. rank", ".4f"),
        ("test_error", "test err", ".4f"),
        ("steps", "steps", "d"),
        ("wall_time", "wall [s]", ".3f"),
        ("result", "result", "s"),
    )

    def table(self) -> str:
        """A Markdown table of the rows (columns that are empty everywhere dropped)."""
        cols = [c for c in self._COLUMNS if any(r.get(c[0]) is not None for r in self.rows)]
        head = "| " + " | ".join(c[1] for c in cols) + " |"
        sep = "|" + "|".join("---" for _ in cols) + "|"
        lines = [head, sep]
        for r in self.rows:
            cells = []
            for key, _, spec in cols:
                v = r.get(key)
                cells.append("—" if v is None else (str(v) if spec == "s" else format(v, spec)))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, metric: str = "margin", **kwargs):
        """`fs.plot.convergence` of all runs on one time axis, with the reference."""
        from ._plot import convergence

        ref = self.reference if isinstance(self.reference, MaxMargin) else kwargs.pop("reference", None)
        return convergence(
            list(self.trajectories.values()), metric, reference=ref,
            labels=list(self.trajectories), **kwargs,
        )


def _run(problem: Problem, model, spec) -> Trajectory:
    if isinstance(spec, Trajectory):
        return spec
    if not isinstance(spec, Mapping):
        raise ValueError(
            "Each run must be a Trajectory or a dict of arguments: "
            "{'flow': fs.GradientFlow(problem), 'log_t1': 100.0, 'clock': 'log'} for "
            "fs.solve, or {'optimizer': 'gd', 'lr': 1.0, 'steps': 10_000} for fs.descend; "
            f"got {type(spec).__name__}."
        )
    spec = dict(spec)
    if "flow" in spec:
        flow = spec.pop("flow")
        if not isinstance(flow, AbstractFlow):
            raise ValueError(f"'flow' must be a flow, got {type(flow).__name__}.")
        return solve(flow, spec.pop("model", model), **spec)
    if "optimizer" in spec:
        return descend(problem, spec.pop("model", model), **spec)
    raise ValueError(f"A run spec needs a 'flow' or an 'optimizer' key; got keys {sorted(spec)}.")


def _end_to_end(model) -> np.ndarray | None:
    if not isinstance(model, AbstractModel):
        return None
    try:
        return np.asarray(model.end_to_end())
    except NotImplementedError:
        return None


def _cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return None
    return float(np.vdot(a, b) / (na * nb))


def _row(label, traj, problem, reference, X_test, y_test) -> dict[str, Any]:
    model = jax.tree_util.tree_map(lambda x: jnp.asarray(x) if eqx.is_array(x) else x, traj.final)
    row: dict[str, Any] = {
        "label": label,
        "kind": traj.info.get("kind"),
        "method": traj.info.get("method"),
        "log10_t": traj.log_t_final / _LN10 if math.isfinite(traj.log_t_final) else None,
        "log10_loss": float(problem.log_loss(model)) / _LN10,
        "steps": traj.stats.get("num_steps"),
        "wall_time": traj.stats.get("wall_time"),
        "result": traj.result.name,
        "margin": None, "margin_gap": None, "cosine": None, "distance": None,
        "effective_rank": None, "singular_values": None, "test_error": None,
    }
    w = _end_to_end(model)
    if problem.loss.classification:
        try:
            row["margin"] = float(_metrics.margin(problem, model))
        except ValueError:
            pass
    if w is not None and w.ndim == 2:
        s = np.linalg.svd(w, compute_uv=False)
        row["singular_values"] = s.tolist()
        row["effective_rank"] = float(_metrics.effective_rank(problem, model))
    if isinstance(reference, MaxMargin):
        if row["margin"] is not None:
            row["margin_gap"] = (reference.margin - row["margin"]) / reference.margin
        if w is not None and w.shape == reference.w.shape:
            row["cosine"] = _cosine(w, reference.w)
    elif reference is not None:
        ref = np.asarray(reference)
        if w is not None and w.shape == ref.shape:
            row["cosine"] = _cosine(w, ref)
            row["distance"] = float(np.linalg.norm(w - ref) / np.linalg.norm(ref))
    if X_test is not None:
        f = np.asarray(predict_batch(model, jnp.asarray(X_test)))
        if problem.loss.classification:
            row["test_error"] = float(np.mean(np.sign(f) != np.asarray(y_test)))
        else:
            row["test_error"] = float(np.mean((f - np.asarray(y_test)) ** 2))
    return row


def compare(
    problem: Problem,
    runs: Mapping[str, Trajectory | Mapping[str, Any]],
    model: eqx.Module | None = None,
    *,
    reference: Any = None,
    X_test: Any = None,
    y_test: Any = None,
) -> Comparison:
    """Run flows and optimisers on one problem and tabulate their asymptotic
    behaviour against a reference.

    **Arguments:**

    - `problem`: the `fs.Problem`.
    - `runs`: dict label → a `Trajectory` already computed, or the arguments of
        a run: `{"flow": fs.GradientFlow(problem), "log_t1": 1e3, "clock": "log"}`
        (passed to `fs.solve`) or `{"optimizer": "gd", "lr": 1.0, "steps": 10**5}`
        (passed to `fs.descend`). Each starts from `model` unless it names its own.
    - `model`: the shared initial model (default: the problem's).
    - `reference`: `"l2"` / `"l1"` (the hard max-margin classifier, computed with
        `fs.reference.max_margin`), a `MaxMargin`, or a vector/matrix to measure the
        end-to-end predictor against (e.g. `fs.reference.min_nuclear_norm_completion`).
    - `X_test`, `y_test`: test data for the test error (classification error, or
        mean squared error for regression).

    **Returns:**

    A `Comparison`: `.table()` (Markdown), `.rows`, `.trajectories`, `.plot()`.
    """
    if not isinstance(problem, Problem):
        raise ValueError(f"`problem` must be a fs.Problem, got {type(problem).__name__}.")
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("`runs` must be a non-empty dict label → run.")
    if (X_test is None) != (y_test is None):
        raise ValueError("Give both `X_test` and `y_test`, or neither.")
    if isinstance(reference, str):
        if reference not in ("l2", "l1"):
            raise ValueError(f"`reference` must be 'l2', 'l1', an array or a MaxMargin; got {reference!r}.")
        problem.require_classification("A max-margin reference")
        from ._reference import max_margin

        reference = max_margin(np.asarray(problem.X), np.asarray(problem.y), norm=int(reference[1]))
    trajectories = {label: _run(problem, model, spec) for label, spec in runs.items()}
    rows = [_row(label, tr, problem, reference, X_test, y_test) for label, tr in trajectories.items()]
    return Comparison(trajectories=trajectories, rows=rows, reference=reference)
