r"""Long-horizon convergence plots.

Flows on the log clock reach $t = e^{1000}$ and beyond, where matplotlib's log axes
(which break past about $10^{250}$) and `t` itself (which overflows float64 past
$e^{709}$) cannot follow. These plots therefore draw from `Trajectory.log_ts` and,
for the loss, from the log-domain `log_loss` metric, switching to $\log_{10}$ values
on linear axes where the raw numbers would overflow or underflow.

matplotlib is imported lazily and only through its object-oriented API
(`matplotlib.figure.Figure`): no pyplot global state, no backend to configure, so
the plots work headless.
"""

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._reference import MaxMargin
from ._trajectory import Trajectory


_LN10 = math.log(10.0)
#: Past this `log t`, matplotlib's log axis stops working: plot `log10 t` linearly.
_LOG_AXIS_MAX_LOG_T = math.log(1e250)
#: A log y axis is used while every positive value lies within [1/_LOG_AXIS_MAX,
#: _LOG_AXIS_MAX]; beyond, matplotlib's log axis breaks and log10 values are
#: drawn on a linear axis instead.
_LOG_AXIS_MAX = 1e250
#: Below this, a loss value has (nearly) underflowed: plot `log10 L` from `log_loss`.
_UNDERFLOW = 1e-300

_LABEL_SIZE = 11
_TICK_SIZE = 10
_LEGEND_SIZE = 9
_TITLE_SIZE = 12
_LINEWIDTH = 1.8
#: Flows are drawn solid, discrete optimisers dash-dotted (they often sit on top of
#: the flow they discretise), references dashed grey.
_DESCENT_STYLE = "-."
_REFERENCE_STYLE = "--"
#: `Line2D.get_gid()` of reference lines, so they can be told apart from data.
REFERENCE_GID = "reference"

_YLABELS = {
    "loss": "loss",
    "margin": "normalised margin",
    "margin_l1": "normalised ℓ1 margin",
    "homogeneous_margin": "normalised margin",
    "smoothed_margin": "smoothed margin",
    "param_norm": "‖θ‖",
    "train_error": "training error",
    "singular_values": "singular values",
    "effective_rank": "effective rank",
    "conserved": "conserved quantities",
    "conserved_scale": "conserved-quantity scale",
    "margin_gap": "relative margin gap (γ* − γ) / γ*",
    "margin_l1_gap": "relative ℓ1 margin gap (γ* − γ) / γ*",
    "conserved_drift": "relative drift max |c(t) − c(0)| / scale",
}

#: Metrics derived from recorded ones at plot time: name → what must be recorded.
DERIVED = {
    "margin_gap": "margin",
    "margin_l1_gap": "margin_l1",
    "conserved_drift": "conserved",
}
_GAPS = ("margin_gap", "margin_l1_gap")

#: Metrics drawn on a log y axis (or as log10 values past its range).
_LOG_Y = ("loss", "margin_gap", "margin_l1_gap", "singular_values", "conserved_drift")

#: Metrics next to which a margin reference line makes sense (used by `overview`).
_MARGIN_METRICS = (
    "margin",
    "margin_l1",
    "homogeneous_margin",
    "smoothed_margin",
    "margin_gap",
    "margin_l1_gap",
)

_SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def _as_list(trajectories) -> list[Trajectory]:
    if isinstance(trajectories, Trajectory):
        return [trajectories]
    if isinstance(trajectories, (str, bytes)) or not isinstance(trajectories, Sequence):
        raise ValueError(
            "`trajectories` must be a fs.Trajectory or a list of them, got "
            f"{type(trajectories).__name__}."
        )
    out = list(trajectories)
    if not out:
        raise ValueError("`trajectories` is empty: pass at least one fs.Trajectory.")
    for i, traj in enumerate(out):
        if not isinstance(traj, Trajectory):
            raise ValueError(
                f"`trajectories[{i}]` must be a fs.Trajectory (from fs.solve or "
                f"fs.descend), got {type(traj).__name__}."
            )
    return out


def _reference_values(reference, label: str | None) -> tuple[np.ndarray, str] | None:
    """`(values, legend label)` of a reference given as a number, a sequence of
    numbers (e.g. reference singular values) or an object with a `.margin` (e.g.
    `fs.reference.max_margin(X, y)`)."""
    if reference is None:
        return None
    if isinstance(reference, numbers.Real) or (
        isinstance(reference, np.ndarray) and reference.size == 1
    ):
        values = np.array([float(reference)])
        default = f"reference = {values[0]:.4g}"
    elif isinstance(reference, MaxMargin):
        values = np.array([float(reference.margin)])
        default = f"max-margin (ℓ{reference.norm}) γ* = {values[0]:.4g}"
    elif isinstance(reference, (Sequence, np.ndarray)) and not isinstance(
        reference, (str, bytes)
    ):
        try:
            values = np.asarray(reference, dtype=float).ravel()
        except (TypeError, ValueError):
            raise ValueError(
                "`reference` must be a number, a sequence of numbers or a reference "
                "solution with a `.margin`; got a sequence that is not numeric."
            ) from None
        if values.size == 0:
            raise ValueError("`reference` is an empty sequence.")
        default = "reference"
    else:
        # Any other reference solution that states its margin.
        try:
            values = np.array([float(reference.margin)])
        except (AttributeError, TypeError, ValueError):
            raise ValueError(
                "`reference` must be a number, a sequence of numbers or a reference "
                "solution with a `.margin` (e.g. fs.reference.max_margin(X, y)), got "
                f"{type(reference).__name__}."
            ) from None
        default = f"max-margin γ* = {values[0]:.4g}"
    if not np.all(np.isfinite(values)):
        raise ValueError(f"`reference` must be finite, got {values.tolist()}.")
    return values, default if label is None else str(label)


def _default_label(traj: Trajectory) -> str:
    info = traj.info
    method = info.get("method", "trajectory")
    # Flows name a solver; descents may name an optimizer instead.
    how = info.get("solver", info.get("optimizer"))
    return f"{method} ({how})" if how is not None else str(method)


def _labels(trajs: list[Trajectory], labels) -> list[str]:
    if labels is None:
        return [_default_label(t) for t in trajs]
    if isinstance(labels, str):
        labels = [labels]
    labels = list(labels)
    if len(labels) != len(trajs):
        raise ValueError(
            f"Got {len(labels)} labels for {len(trajs)} trajectories; give one label "
            "per trajectory."
        )
    return [str(label) for label in labels]


def _time_axis(trajs: list[Trajectory], log_time: bool) -> str:
    """`"log"` (t on a log axis), `"log10"` (log10 t on a linear axis) or `"linear"`."""
    finite = [
        lt[np.isfinite(lt)] for lt in (np.asarray(t.log_ts, float) for t in trajs)
    ]
    largest = max((float(np.max(f)) for f in finite if f.size), default=-math.inf)
    if largest > _LOG_AXIS_MAX_LOG_T:
        if not log_time:
            raise ValueError(
                f"These trajectories reach log t = {largest:.6g}, where t cannot be "
                "drawn on a linear axis (it overflows float64 past log t ≈ 709); use "
                "`log_time=True`, which plots log₁₀ t."
            )
        return "log10"
    return "log" if log_time else "linear"


def _time_data(traj: Trajectory, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """`(x, keep)`: the x values and the mask of save points that can be drawn."""
    log_ts = np.asarray(traj.log_ts, dtype=float)
    if mode == "log10":
        keep = np.isfinite(log_ts)
        return log_ts[keep] / _LN10, keep
    ts = np.asarray(traj.ts, dtype=float)
    if mode == "log":
        # t = 0 (log t = -inf) has no place on a log axis.
        keep = np.isfinite(log_ts) & np.isfinite(ts) & (ts > 0)
    else:
        keep = np.isfinite(ts)
    return ts[keep], keep


def _require(
    traj: Trajectory, name: str, index: int, derived: str | None = None
) -> np.ndarray:
    if name not in traj.metrics:
        what = (
            f"{derived!r} is computed from {name!r}, which was not recorded"
            if derived
            else f"no metric {name!r} was recorded"
        )
        raise ValueError(
            f"Trajectory {index} ({_default_label(traj)}): {what}; it recorded "
            f"{sorted(traj.metrics)}. Add {name!r} to `metrics=` in fs.solve / "
            "fs.descend."
        )
    return np.asarray(traj.metrics[name], dtype=float)


def _loss_in_log10(trajs: list[Trajectory]) -> bool:
    for traj in trajs:
        if "log_loss" in traj.metrics:
            return True
        if "loss" in traj.metrics:
            loss = np.asarray(traj.metrics["loss"], dtype=float)
            if np.any(loss[np.isfinite(loss)] <= _UNDERFLOW):
                return True
    return False


def _log10_loss(traj: Trajectory, index: int) -> np.ndarray:
    if "log_loss" in traj.metrics:
        return np.asarray(traj.metrics["log_loss"], dtype=float) / _LN10
    loss = _require(traj, "loss", index)
    # Without `log_loss`, an underflowed loss (0) has no finite log: it is not drawn.
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(loss)
    return np.where(np.isfinite(out), out, np.nan)


def margin_gap(
    traj: Trajectory, reference: float, index: int = 0, metric: str = "margin_gap"
) -> np.ndarray:
    """Relative gap `(γ* − γ(t)) / γ*` of the recorded `"margin"` (or `"margin_l1"`
    for `metric="margin_l1_gap"`) to `reference`."""
    margin = _require(traj, DERIVED[metric], index, derived=metric)
    return (reference - margin) / reference


def conserved_drift(traj: Trajectory, index: int = 0) -> tuple[np.ndarray, bool]:
    r"""`(drift, relative)`: $\max_j |c_j(t) - c_j(t_0)|$ over the recorded
    `"conserved"` quantities, relative to the start ($t_0$, the first save point),
    divided by the recorded `"conserved_scale"` at $t$ when there is one
    (`relative=True`); absolute otherwise."""
    c = _require(traj, "conserved", index, derived="conserved_drift")
    if c.ndim == (1 if traj.num_members is None else 2):
        c = c[..., None]  # one conserved quantity
    if c.shape[-2] == 0 or c.shape[-1] == 0:
        drift = np.zeros(c.shape[:-1])
    else:
        drift = np.max(np.abs(c - c[..., :1, :]), axis=-1)
    if "conserved_scale" in traj.metrics:
        scale = np.asarray(traj.metrics["conserved_scale"], dtype=float)
        scale = scale.reshape(drift.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(scale > 0, drift / np.where(scale > 0, scale, 1.0), np.nan), True
    return drift, False


def _style(ax, *, xlabel: str, ylabel: str, title: str | None) -> None:
    ax.set_xlabel(xlabel, fontsize=_LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=_LABEL_SIZE)
    ax.tick_params(labelsize=_TICK_SIZE)
    ax.grid(True, which="major", alpha=0.35, linewidth=0.8)
    if ax.get_xscale() == "log" or ax.get_yscale() == "log":
        ax.grid(True, which="minor", alpha=0.12, linewidth=0.5)
    if title is not None:
        ax.set_title(title, fontsize=_TITLE_SIZE)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=_LEGEND_SIZE, framealpha=0.85)


def _new_axes(figsize=(6.4, 4.4)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _is_descent(traj: Trajectory) -> bool:
    return str(traj.info.get("kind", "")).endswith("descent")


def _sequential_color(j: int, k: int):
    import matplotlib

    return matplotlib.colormaps["viridis"](0.85 * j / max(k - 1, 1))


def _positive_log10(y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(np.where(y > 0, y, np.nan))
    return np.where(np.isfinite(out), out, np.nan)


def _outside_log_axis(ys: list[np.ndarray]) -> bool:
    """Whether some positive value is beyond what a log axis can draw."""
    for y in ys:
        pos = y[np.isfinite(y) & (y > 0)]
        if pos.size and (pos.min() < 1 / _LOG_AXIS_MAX or pos.max() > _LOG_AXIS_MAX):
            return True
    return False


def convergence(
    trajectories: Trajectory | Sequence[Trajectory],
    metric: str = "loss",
    *,
    reference: Any = None,
    reference_label: str | None = None,
    labels: Sequence[str] | None = None,
    ax: Any = None,
    log_time: bool = True,
    log10_t_scale: str = "linear",
    title: str | None = None,
):
    r"""Plot one metric of one or more trajectories against time, at any horizon.

    Flows (`fs.solve`) and discrete optimizers (`fs.descend`) share the time axis
    $t$ (step $k$ of GD with step $\eta$ sits at $t = k\eta$), so they overlay:
    flows are drawn solid, descents dash-dotted, references dashed grey.

    **Arguments:**

    - `trajectories`: a `fs.Trajectory` or a list of them.
    - `metric`: a name the trajectories recorded, or one derived from them:

        - `"loss"`: on a log axis, or as $\log_{10} L$ (from the log-domain
            `log_loss`) on a linear axis when the trajectories recorded
            `"log_loss"` or the loss underflows; `"log_loss"` is drawn as
            $\log_{10} L$ too.
        - `"margin_gap"`: the relative gap $(\gamma^* - \gamma)/\gamma^*$ of the
            recorded `"margin"` to `reference`, on a log axis (gaps $\le 0$ are
            not drawn); `"margin_l1_gap"` the same for `"margin_l1"` (compare with
            `fs.reference.max_margin(X, y, norm=1)`).
        - `"singular_values"`: one line per singular value (of the end-to-end
            matrix), on a log axis.
        - `"conserved_drift"`: $\max_j |c_j(t) - c_j(t_0)|$ of the recorded
            `"conserved"` quantities, divided by `"conserved_scale"` when that
            was recorded too, on a log axis: how well a solver conserves the
            invariants of gradient flow (a discrete optimiser drifts by
            $O(\eta)$).
        - anything else (`"margin"`, `"effective_rank"`, ...): a linear axis; a
            metric with several components per save point gets one line each.

        A log y axis whose values would leave $[10^{-250}, 10^{250}]$ (where
        matplotlib's log axes fail) becomes $\log_{10}$ values on a linear axis,
        labelled "log₁₀ …".
    - `reference`: a number, a sequence of numbers (e.g. the singular values of a
        reference matrix), or a reference solution with a `.margin` such as
        `fs.reference.max_margin(X, y)`: drawn as dashed horizontal lines (and
        required by the margin gaps, where it is the $\gamma^*$ and no line is
        drawn).
    - `reference_label`: the legend label of the reference line (default: says
        what the reference is and its value).
    - `labels`: one legend label per trajectory (default
        `"{method} ({solver})"` from `Trajectory.info`).
    - `ax`: a matplotlib `Axes` to draw into (default: a new `Figure`).
    - `log_time`: `True` (default) draws $t$ on a log axis, dropping $t = 0$, and
        switches to $\log_{10} t$ on a linear axis once a trajectory passes
        $t = 10^{250}$ (matplotlib's log axes fail beyond, and $t$ overflows float64
        past $e^{709}$). `False` draws $t$ on a linear axis.
    - `log10_t_scale`: how that $\log_{10} t$ axis is drawn: `"linear"` (default;
        $\log_{10} L \approx -\log_{10} t$ is a straight line) or `"log"` (a
        symmetric-log axis, linear for $|\log_{10} t| < 1$: runs with horizons of
        $10^{3}$ and $10^{4000}$ share one readable axis, and the $1/\log t$ rate of
        a margin gap is a straight line on its log y axis).
    - `title`: an axes title.

    **Returns:**

    `(fig, ax)`: the matplotlib `Figure` and `Axes`. Save with
    `fig.savefig("plot.png", dpi=150)`.
    """
    trajs = _as_list(trajectories)
    names = _labels(trajs, labels)
    if not isinstance(metric, str):
        raise ValueError(f"`metric` must be a metric name, got {metric!r}.")
    ref = _reference_values(reference, reference_label)
    want_norm = {"margin": 2, "margin_gap": 2, "margin_l1": 1, "margin_l1_gap": 1}.get(metric)
    if isinstance(reference, MaxMargin) and want_norm is not None and reference.norm != want_norm:
        # An ℓ1 optimum drawn against the ℓ2 margin (or the reverse) is another
        # quantity: the flow would seem to overshoot it, and a gap turn negative.
        right = "margin_l1" if reference.norm == 1 else "margin"
        raise ValueError(
            f"`reference` is the ℓ{reference.norm} max margin, but `metric={metric!r}` is "
            f"the ℓ{want_norm} margin. Compare it with metric={right!r}"
            f"{' (or ' + repr(right + '_gap') + ')'}, or pass "
            f"fs.reference.max_margin(X, y, norm={want_norm})."
        )
    if metric in _GAPS:
        if ref is None:
            norm = 1 if metric == "margin_l1_gap" else 2
            raise ValueError(
                f"`metric={metric!r}` needs `reference=`: the max-margin value, e.g. "
                f"fs.reference.max_margin(X, y, norm={norm})."
            )
        if ref[0].size != 1 or ref[0][0] <= 0:
            raise ValueError(
                "The margin gap needs one positive reference margin, got "
                f"{ref[0].tolist()}."
            )
    mode = _time_axis(trajs, bool(log_time))
    if log10_t_scale not in ("linear", "log"):
        raise ValueError(
            f"`log10_t_scale` must be 'linear' or 'log', got {log10_t_scale!r}."
        )

    # The y values of every trajectory first: the axis scale depends on all of them.
    relative_drift = True
    ys = []
    log10_loss = metric == "log_loss" or (metric == "loss" and _loss_in_log10(trajs))
    for i, traj in enumerate(trajs):
        if metric in _GAPS:
            y = margin_gap(traj, float(ref[0][0]), i, metric)
        elif metric == "conserved_drift":
            y, rel = conserved_drift(traj, i)
            relative_drift = relative_drift and rel
        elif log10_loss:
            y = _log10_loss(traj, i)
        else:
            y = _require(traj, metric, i)
        ys.append(y)
    ylabel = _YLABELS.get(metric, metric)
    if metric == "conserved_drift" and not relative_drift:
        ylabel = "drift max |c(t) − c(0)|"
    yscale = "linear"
    if log10_loss:
        ylabel = "log₁₀ loss"
    elif metric in _LOG_Y:
        if _outside_log_axis(ys):
            ys = [_positive_log10(y) for y in ys]
            ylabel = f"log₁₀ {ylabel}"
        else:
            # Values ≤ 0 (a margin at or numerically above γ*, an exact zero) have
            # no place on a log axis: not drawn.
            ys = [np.where(y > 0, y, np.nan) for y in ys]
            yscale = "log"

    if ax is None:
        fig, ax = _new_axes()
    else:
        fig = ax.figure
    if mode == "log":
        ax.set_xscale("log")
    elif mode == "log10" and log10_t_scale == "log":
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_yscale(yscale)
    xlabel = "log₁₀ t" if mode == "log10" else "t"

    single = len(trajs) == 1
    for i, (traj, name, y) in enumerate(zip(trajs, names, ys, strict=True)):
        x, keep = _time_data(traj, mode)
        color = None if single else f"C{i % 10}"
        style = _DESCENT_STYLE if _is_descent(traj) else "-"
        if traj.num_members is not None:
            # An ensemble: the median over members, with their min–max range shaded.
            if y.ndim != 2:
                raise ValueError(
                    f"Metric {metric!r} has several components per member; plot one "
                    "member with `traj[i]`."
                )
            y = np.moveaxis(y, 0, 1)[keep]  # (T, members)
            if x.size == 0:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
                med = np.nanmedian(y, axis=1)
                # The range over the drawable values: one diverged member's inf
                # would otherwise blank the whole band at that point.
                finite = np.where(np.isfinite(y), y, np.nan)
                lo, hi = np.nanmin(finite, axis=1), np.nanmax(finite, axis=1)
            (line,) = ax.plot(x, med, style, color=color, linewidth=_LINEWIDTH,
                              label=f"{name} (median, range of {traj.num_members})")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
            continue
        y = y.reshape(y.shape[0], -1)[keep]
        if x.size == 0 or not np.any(np.isfinite(y)):
            # Nothing drawable (e.g. a run that failed at its first step): keep it
            # in the legend, so it does not vanish silently.
            ax.plot([], [], style, color=color, linewidth=_LINEWIDTH,
                    label=f"{name} (nothing to draw)")
            continue
        k = y.shape[1]
        for j in range(k):
            line_color = color
            if k == 1:
                label = name
            elif single:
                # One trajectory, several components (e.g. singular values): a
                # sequential colour per component, first (largest) darkest.
                line_color = _sequential_color(j, k)
                if metric == "singular_values":
                    sub = lambda m: str(m).translate(_SUBSCRIPTS)
                    if k <= 10:
                        label = f"σ{sub(j + 1)}"
                    else:
                        label = f"σ{sub(1)} … σ{sub(k)}" if j == 0 else None
                else:
                    label = f"{name} [{j}]" if k <= 10 or j == 0 else None
            else:
                label = name if j == 0 else None
            ax.plot(x, y[:, j], style, color=line_color, linewidth=_LINEWIDTH,
                    label=label)

    if ref is not None and metric not in _GAPS:
        values, ref_label = ref
        for j, value in enumerate(values):
            ax.axhline(
                value,
                color="0.25",
                linestyle=_REFERENCE_STYLE,
                linewidth=1.3,
                label=ref_label if j == 0 else None,
                zorder=1,
                gid=REFERENCE_GID,
            )
    _style(ax, xlabel=xlabel, ylabel=ylabel, title=title)
    return fig, ax


def overview(
    trajectory_or_list: Trajectory | Sequence[Trajectory],
    metrics: Sequence[str] = ("log_loss", "margin"),
    reference: Any = None,
    *,
    reference_label: str | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    ncols: int = 3,
    log_time: bool = True,
    log10_t_scale: str = "linear",
):
    """One panel per metric, in rows of up to `ncols`, sharing the conventions of
    `convergence`.

    **Arguments:**

    - `trajectory_or_list`: a `fs.Trajectory` or a list of them.
    - `metrics`: the metrics to draw, one panel each (derived ones such as
        `"margin_gap"` and `"conserved_drift"` included).
    - `reference`: a margin reference (number or `fs.reference.max_margin(...)`),
        drawn on the margin panels only.
    - `reference_label`: its legend label.
    - `labels`: one legend label per trajectory.
    - `title`: a figure title.
    - `ncols`: panels per row.
    - `log_time`, `log10_t_scale`: as in `convergence`.

    **Returns:**

    `(fig, axes)`: the matplotlib `Figure` and a list of its `Axes`, one per
    metric, in order.
    """
    from matplotlib.figure import Figure

    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    if not metrics:
        raise ValueError("`metrics` is empty: name at least one metric to plot.")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"`ncols` must be a positive integer, got {ncols!r}.")
    cols = min(ncols, len(metrics))
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(5.2 * cols, 4.2 * rows), dpi=100, layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[len(metrics):]:
        ax.remove()
    axes = axes[: len(metrics)]
    for ax, metric in zip(axes, metrics, strict=True):
        convergence(
            trajectory_or_list,
            metric,
            reference=reference if metric in _MARGIN_METRICS else None,
            reference_label=reference_label,
            labels=labels,
            ax=ax,
            log_time=log_time,
            log10_t_scale=log10_t_scale,
        )
    if title is not None:
        fig.suptitle(title, fontsize=_TITLE_SIZE + 1)
    return fig, axes
