"""The work–precision matching of `scripts/compare_peers.py`: which flowsolve run a
peer is compared with "at equal accuracy", and the tolerance aimed at a peer's
error. Checked on hand-made rows whose answers are worked out by hand."""

import importlib.util
import math
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cp():
    path = Path(__file__).resolve().parent.parent / "scripts" / "compare_peers.py"
    spec = importlib.util.spec_from_file_location("compare_peers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(peer, error, wall, horizon="1e8", reached=True):
    return {"workload": "w", "horizon": horizon, "peer": peer, "error": error, "wall_s": wall,
            "reached": reached}


def test_equal_accuracy_takes_the_fastest_run_at_least_as_accurate(cp):
    rows = [
        _row("flowsolve (auto)", 2e-5, 0.1),                       # faster, less accurate: not eligible
        _row("flowsolve (auto, rtol 1e-05)", 5e-6, 0.2),           # the fastest eligible
        _row("flowsolve (auto, per-parameter error)", 1e-6, 0.5),  # eligible, slower
        _row("flowsolve (auto, rtol 1e-06)", 1e-6, 0.3, reached=False),  # did not finish: ignored
        _row("scipy RK45", 1e-5, 1.0),
        _row("scipy LSODA", 1e-7, 0.4),                            # more accurate than every run
        _row("torchdiffeq dopri5", 1e-5, 2.0, horizon="e^100"),    # no flowsolve run at that horizon
        _row("GD", float("nan"), 3.0),                             # no error measured: no speed-up
        _row("heuristic Euler", 0.6, 0.01),                        # a wrong answer: not compared
    ]
    cp.equal_accuracy(rows)
    rk45, lsoda, torch, gd, euler = rows[4:]
    assert rk45["speedup_equal_accuracy"] == pytest.approx(1.0 / 0.2)
    assert rk45["matched_by"] == "rtol 1e-05"
    assert lsoda["speedup_equal_accuracy"] is None
    assert lsoda["matched_by"].startswith("no flowsolve run this accurate (best 1.0e-06")
    assert torch["matched_by"] == "no flowsolve run reached the horizon"
    assert "matched_by" not in gd
    assert euler["speedup_equal_accuracy"] is None and euler["matched_by"].startswith("not compared")
    # An equal error counts as equally accurate; the default run is named so.
    rows = [_row("flowsolve (auto)", 1e-5, 0.1), _row("scipy RK45", 1e-5, 1.0)]
    cp.equal_accuracy(rows)
    assert rows[1]["speedup_equal_accuracy"] == pytest.approx(10.0)
    assert rows[1]["matched_by"] == "default"


def test_aim_interpolates_error_against_rtol_in_log_log(cp):
    # error = 0.1 · rtol (slope 1): the rtol for an error of 1e-6 is 1e-5.
    points = [(1e-4, 1e-5), (1e-6, 1e-7)]
    assert cp._aim(points, 1e-6) == pytest.approx(1e-5, rel=1e-12)
    # error ∝ rtol² between the points: halfway in log error is halfway in log rtol.
    points = [(1e-6, 1e-12), (1e-4, 1e-8)]
    assert cp._aim(points, 1e-10) == pytest.approx(1e-5, rel=1e-12)
    # Beyond the points: slope 1 from the nearest.
    assert cp._aim(points, 1e-6) == pytest.approx(1e-4 * 1e2, rel=1e-12)
    assert cp._aim(points, 1e-14) == pytest.approx(1e-6 * 1e-2, rel=1e-12)
    assert math.isfinite(cp._aim([(1e-5, 3e-6)], 1e-3))  # one point


def test_work_precision_figure_draws_each_run_where_it_was_measured(cp):
    rows = [
        _row("flowsolve (auto)", 2e-5, 0.1),
        _row("flowsolve (auto, rtol 1e-05)", 5e-6, 0.2),
        _row("flowsolve (auto, rtol 1e-06)", 1e-6, 0.3, reached=False),  # not finished: not drawn
        _row("scipy RK45", 1e-5, 1.0),
        _row("heuristic Euler", 0.6, 0.01),                                # a wrong answer: hollow
        _row("torchdiffeq dopri5", float("nan"), 20.0, reached=False),     # named, not drawn
        _row("scipy LSODA", float("nan"), 20.0, horizon="e^1000", reached=False),  # no panel
    ]
    fig = cp.work_precision_figure(rows)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 1 and axes[0].get_title() == "w, t = 1e8"
    ax = axes[0]
    (line,) = ax.get_lines()  # flowsolve's finished runs, by increasing error
    assert list(line.get_xdata()) == [5e-6, 2e-5] and list(line.get_ydata()) == [0.2, 0.1]
    points = {tuple(c.get_offsets()[0]): c for c in ax.collections}
    assert set(points) == {(2e-5, 0.1), (1e-5, 1.0), (0.6, 0.01)}  # the default run's star, RK45, Euler
    assert points[(0.6, 0.01)].get_facecolor().size == 0  # hollow
    assert points[(1e-5, 1.0)].get_facecolor().size > 0
    (text,) = ax.texts
    assert text.get_text() == "did not get there: torchdiffeq dopri5"
    assert "scipy RK45" in [t.get_text() for t in fig.legends[0].get_texts()]
    with pytest.raises(ValueError, match="nothing to plot"):
        cp.work_precision_figure([rows[-1]])
