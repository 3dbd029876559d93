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
from ._problem import Problem, check_data
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
        the end-to-end predictor, or Lyu & Li's for other homogeneous models; ℓ1
        when the reference is the ℓ1 max-margin classifier), `margin_gap`
        (relative to the reference margin, in the reference's norm), `cosine`
        (end-to-end vs reference direction), `one_minus_cosine` (1 − cosine,
        computed without cancellation, what shows convergence in direction),
        `distance` (relative, to a reference vector/matrix),
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
        ("one_minus_cosine", "1 − cos", ".2e"),
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
        """`fs.plot.convergence` of all runs on one time axis, with the reference:
        a max-margin classifier's margin, or for `"singular_values"` the singular
        values of a reference matrix (a `reference=` given here replaces it)."""
        from ._plot import convergence

        if "reference" in kwargs:
            ref = kwargs.pop("reference")
        elif isinstance(self.reference, MaxMargin):
            ref = self.reference
        elif (
            metric == "singular_values" and self.reference is not None
            and np.ndim(self.reference) == 2
        ):
            s = np.linalg.svd(np.asarray(self.reference, dtype=float), compute_uv=False)
            # Only the singular values that are really there (a convex solver's
            # solution leaves ~1e-8 where the exact one has zeros).
            ref = s[s > 1e-6 * s[0]].tolist() if s.size and s[0] > 0 else None
            kwargs.setdefault("reference_label", "reference singular values")
        else:
            ref = None
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
    if "flow" in spec and "optimizer" in spec:
        raise ValueError(
            "A run spec has both 'flow' (a flow for fs.solve) and 'optimizer' (for "
            "fs.descend); give one of them per run."
        )
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


def _cosine(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    """`(cos, 1 − cos)` of the angle between `a` and `b`; `1 − cos` as
    ‖â − b̂‖²/2, which keeps its digits where `1 − cos` computed from `cos` rounds to 0."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0 or not (np.isfinite(na) and np.isfinite(nb)):
        return None, None
    return float(np.vdot(a, b) / (na * nb)), float(np.sum((a / na - b / nb) ** 2) / 2)


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
        "margin": None, "margin_gap": None, "cosine": None, "one_minus_cosine": None,
        "distance": None,
        "effective_rank": None, "singular_values": None, "test_error": None,
    }
    w = _end_to_end(model)
    if problem.loss.classification:
        # In the reference's norm: an ℓ1 max-margin reference is compared with the ℓ1
        # margin (the ℓ2 one against the ℓ1 optimum gave "gaps" like −1.29).
        norm = reference.norm if isinstance(reference, MaxMargin) else 2
        try:
            row["margin"] = float(_metrics.margin(problem, model, norm=norm))
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
            row["cosine"], row["one_minus_cosine"] = _cosine(w, reference.w)
    elif reference is not None:
        ref = np.asarray(reference)
        if w is not None:
            _check_reference_shape(ref, w, f"run {label!r} ends with")
            row["cosine"], row["one_minus_cosine"] = _cosine(w, ref)
            row["distance"] = float(np.linalg.norm(w - ref) / np.linalg.norm(ref))
    if X_test is not None:
        f = np.asarray(predict_batch(model, jnp.asarray(X_test, dtype=problem.X.dtype)))
        if problem.loss.classification:
            row["test_error"] = float(np.mean(np.sign(f) != np.asarray(y_test)))
        else:
            row["test_error"] = float(np.mean((f - np.asarray(y_test)) ** 2))
    return row


def _check_reference_shape(ref: np.ndarray, w: np.ndarray, whose: str) -> None:
    if w.shape != ref.shape:
        raise ValueError(
            f"The reference has shape {ref.shape}, but {whose} an end-to-end predictor "
            f"of shape {w.shape}: pass a reference of that shape (e.g. "
            "fs.reference.min_nuclear_norm_completion(...) for a completed matrix)."
        )


def _check_test_data(problem: Problem, X_test, y_test):
    """The test data as arrays, checked as training data is (a {0, 1} label was
    counted as an error on every point) and against the training rows' shape."""
    X_np, y_np = check_data(X_test, y_test, problem.loss, names=("X_test", "y_test"))
    if X_np.shape[1:] != tuple(problem.X.shape[1:]):
        raise ValueError(
            f"`X_test` has rows of shape {X_np.shape[1:]}, but the training rows have "
            f"shape {tuple(problem.X.shape[1:])}: the test data must have the same features."
        )
    return X_np, y_np


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
    if X_test is not None:
        X_test, y_test = _check_test_data(problem, X_test, y_test)
    if isinstance(reference, str):
        if reference not in ("l2", "l1"):
            raise ValueError(f"`reference` must be 'l2', 'l1', an array or a MaxMargin; got {reference!r}.")
        problem.require_classification("A max-margin reference")
        from ._reference import max_margin

        reference = max_margin(np.asarray(problem.X), np.asarray(problem.y), norm=int(reference[1]))
    for label, spec in runs.items():
        if isinstance(spec, Trajectory) and spec.num_members is not None:
            raise ValueError(
                f"Run {label!r} is an ensemble of {spec.num_members} members "
                "(fs.ensemble): compare its members one by one, e.g. "
                f"`{{f'{label} {{i}}': traj[i] for i in range(len(traj))}}`."
            )
    if reference is not None and not isinstance(reference, MaxMargin):
        ref = np.asarray(reference, dtype=float)
        if ref.size == 0 or not np.all(np.isfinite(ref)) or not np.any(ref):
            raise ValueError(
                "The reference vector/matrix must be finite and not all zeros (the "
                "distance and cosine are relative to it)."
            )
        # Before any run is made, from the shared initial model (a trajectory
        # given as is is checked with its own final model, in `_row`).
        w0 = _end_to_end(problem.model if model is None else model)
        if w0 is not None:
            _check_reference_shape(ref, w0, "the initial model has")
    trajectories = {label: _run(problem, model, spec) for label, spec in runs.items()}
    rows = [_row(label, tr, problem, reference, X_test, y_test) for label, tr in trajectories.items()]
    return Comparison(trajectories=trajectories, rows=rows, reference=reference)
