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
#: Below this, a loss value has (nearly) underflowed: plot `log10 L` from `log_loss`.
_UNDERFLOW = 1e-300

_LABEL_SIZE = 11
_TICK_SIZE = 10
_LEGEND_SIZE = 9
_TITLE_SIZE = 12

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
}

#: Metrics next to which a margin reference line makes sense (used by `overview`).
_MARGIN_METRICS = (
    "margin",
    "margin_l1",
    "homogeneous_margin",
    "smoothed_margin",
    "margin_gap",
)


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


def _reference_value(reference) -> tuple[float, str] | None:
    """`(value, legend label)` of a reference given as a number or as an object with
    a `.margin` (e.g. `fs.reference.max_margin(X, y)`)."""
    if reference is None:
        return None
    if isinstance(reference, numbers.Real) or (
        isinstance(reference, np.ndarray) and reference.size == 1
    ):
        value = float(reference)
        label = f"reference = {value:.4g}"
    elif isinstance(reference, MaxMargin):
        value = float(reference.margin)
        label = f"max-margin (ℓ{reference.norm}) γ* = {value:.4g}"
    else:
        # Any other reference solution that states its margin.
        try:
            value = float(reference.margin)
        except (AttributeError, TypeError, ValueError):
            raise ValueError(
                "`reference` must be a number or a reference solution with a `.margin` "
                f"(e.g. fs.reference.max_margin(X, y)), got {type(reference).__name__}."
            ) from None
        label = f"max-margin γ* = {value:.4g}"
    if not math.isfinite(value):
        raise ValueError(f"`reference` must be finite, got {value}.")
    return value, label


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


def _require(traj: Trajectory, name: str, index: int) -> np.ndarray:
    if name not in traj.metrics:
        raise ValueError(
            f"Trajectory {index} ({_default_label(traj)}) has no metric {name!r}; it "
            f"recorded {sorted(traj.metrics)}. Add {name!r} to `metrics=` in "
            "fs.solve / fs.descend."
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


def convergence(
    trajectories: Trajectory | Sequence[Trajectory],
    metric: str = "loss",
    *,
    reference: Any = None,
    labels: Sequence[str] | None = None,
    ax: Any = None,
    log_time: bool = True,
    title: str | None = None,
):
    r"""Plot one metric of one or more trajectories against time, at any horizon.

    Flows (`fs.solve`) and discrete optimizers (`fs.descend`) share the time axis
    $t$ (step $k$ of GD with step $\eta$ sits at $t = k\eta$), so they overlay.

    **Arguments:**

    - `trajectories`: a `fs.Trajectory` or a list of them.
    - `metric`: a name the trajectories recorded. `"loss"` is drawn on a log axis,
        or as $\log_{10} L$ (from the log-domain `log_loss`) on a linear axis when
        the trajectories recorded `"log_loss"` or the loss underflows; `"log_loss"`
        is drawn as $\log_{10} L$ too. `"margin_gap"` is the relative gap
        $(\gamma^* - \gamma)/\gamma^*$ of the recorded `"margin"` to `reference`, on
        a log axis. Other metrics use a linear axis; a metric with several
        components per save point (e.g. `"singular_values"`) gets one line each.
    - `reference`: a number, or a reference solution with a `.margin` such as
        `fs.reference.max_margin(X, y)`: drawn as a dashed horizontal line (and
        required by `"margin_gap"`).
    - `labels`: one legend label per trajectory (default
        `"{method} ({solver})"` from `Trajectory.info`).
    - `ax`: a matplotlib `Axes` to draw into (default: a new `Figure`).
    - `log_time`: `True` (default) draws $t$ on a log axis, dropping $t = 0$, and
        switches to $\log_{10} t$ on a linear axis once a trajectory passes
        $t = 10^{250}$ (matplotlib's log axes fail beyond, and $t$ overflows float64
        past $e^{709}$). `False` draws $t$ on a linear axis.
    - `title`: an axes title.

    **Returns:**

    `(fig, ax)`: the matplotlib `Figure` and `Axes`. Save with
    `fig.savefig("plot.png", dpi=150)`.
    """
    trajs = _as_list(trajectories)
    names = _labels(trajs, labels)
    if not isinstance(metric, str):
        raise ValueError(f"`metric` must be a metric name, got {metric!r}.")
    ref = _reference_value(reference)
    if metric == "margin_gap" and ref is None:
        raise ValueError(
            "`metric='margin_gap'` needs `reference=`: the max-margin value, e.g. "
            "fs.reference.max_margin(X, y, norm=2)."
        )
    if metric == "margin_gap" and ref[0] <= 0:
        raise ValueError(
            f"The margin gap needs a positive reference margin, got {ref[0]}."
        )
    mode = _time_axis(trajs, bool(log_time))

    if ax is None:
        fig, ax = _new_axes()
    else:
        fig = ax.figure

    if mode == "log":
        ax.set_xscale("log")
        xlabel = "t"
    elif mode == "log10":
        xlabel = "log₁₀ t"
    else:
        xlabel = "t"

    log10_loss = metric == "log_loss" or (metric == "loss" and _loss_in_log10(trajs))
    if metric == "margin_gap":
        ax.set_yscale("log")
        ylabel = "relative margin gap (γ* − γ) / γ*"
    elif log10_loss:
        ylabel = "log₁₀ loss"
    elif metric == "loss":
        ax.set_yscale("log")
        ylabel = "loss"
    else:
        ylabel = _YLABELS.get(metric, metric)

    single = len(trajs) == 1
    for i, (traj, name) in enumerate(zip(trajs, names, strict=True)):
        if metric == "margin_gap":
            margin = _require(traj, "margin", i)
            y = (ref[0] - margin) / ref[0]
            # A gap ≤ 0 (margin at or numerically above the reference) has no place
            # on a log axis.
            y = np.where(y > 0, y, np.nan)
        elif log10_loss:
            y = _log10_loss(traj, i)
        else:
            y = _require(traj, metric, i)
            if metric == "loss":
                y = np.where(y > 0, y, np.nan)
        x, keep = _time_data(traj, mode)
        color = None if single else f"C{i % 10}"
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
                lo, hi = np.nanmin(y, axis=1), np.nanmax(y, axis=1)
            (line,) = ax.plot(x, med, color=color, linewidth=1.8,
                              label=f"{name} (median, range of {traj.num_members})")
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
            continue
        y = y.reshape(y.shape[0], -1)[keep]
        if x.size == 0:
            continue
        k = y.shape[1]
        for j in range(k):
            if k == 1:
                label = name
            elif single:
                label = f"{name} [{j}]" if k <= 10 or j == 0 else None
            else:
                label = name if j == 0 else None
            ax.plot(x, y[:, j], color=color, linewidth=1.8, label=label)

    if ref is not None:
        value, ref_label = ref
        if metric != "margin_gap":
            ax.axhline(
                value,
                color="0.25",
                linestyle="--",
                linewidth=1.3,
                label=ref_label,
                zorder=1,
            )
    _style(ax, xlabel=xlabel, ylabel=ylabel, title=title)
    return fig, ax


def overview(
    trajectory_or_list: Trajectory | Sequence[Trajectory],
    metrics: Sequence[str] = ("log_loss", "margin"),
    reference: Any = None,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
):
    """One panel per metric, side by side, sharing the conventions of `convergence`.

    **Arguments:**

    - `trajectory_or_list`: a `fs.Trajectory` or a list of them.
    - `metrics`: the metrics to draw, one panel each (`"margin_gap"` included).
    - `reference`: a margin reference (number or `fs.reference.max_margin(...)`),
        drawn on the margin panels only.
    - `labels`: one legend label per trajectory.
    - `title`: a figure title.

    **Returns:**

    The matplotlib `Figure`.
    """
    from matplotlib.figure import Figure

    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    if not metrics:
        raise ValueError("`metrics` is empty: name at least one metric to plot.")
    fig = Figure(figsize=(5.2 * len(metrics), 4.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        convergence(
            trajectory_or_list,
            metric,
            reference=reference if metric in _MARGIN_METRICS else None,
            labels=labels,
            ax=ax,
        )
    if title is not None:
        fig.suptitle(title, fontsize=_TITLE_SIZE + 1)
    return fig
