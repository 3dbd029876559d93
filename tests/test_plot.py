import dataclasses
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import flowsolve as fs


LN10 = math.log(10.0)


def _traj(log_ts, metrics, *, method="GradientFlow", solver="kvaerno5"):
    """A trajectory built directly from numpy arrays (no solve)."""
    log_ts = np.asarray(log_ts, dtype=float)
    with np.errstate(over="ignore"):
        ts = np.exp(log_ts)
    return fs.Trajectory(
        ts=ts,
        log_ts=log_ts,
        metrics={k: np.asarray(v, dtype=float) for k, v in metrics.items()},
        params=None,
        final=None,
        log_t_final=float(log_ts[-1]),
        result=fs.RESULTS.successful,
        stats={},
        info={"kind": "flow", "method": method, "clock": "log", "solver": solver},
    )


def _long_traj(log_t1=1e4, num=60):
    """Logistic-like asymptotics: log L ≈ -log t, margin → 0.25 at rate 1/log t.
    The first save point is t = 0."""
    log_ts = np.concatenate([[-np.inf], np.linspace(1.0, log_t1, num - 1)])
    log_loss = np.concatenate([[math.log(math.log(2.0))], -log_ts[1:]])
    with np.errstate(under="ignore"):
        loss = np.exp(log_loss)  # underflows to 0 past log t ≈ 745
    margin = np.concatenate([[0.0], 0.25 - 1.0 / log_ts[1:]])
    return _traj(log_ts, {"loss": loss, "log_loss": log_loss, "margin": margin})


def _data_lines(ax):
    return [line for line in ax.get_lines() if line.get_gid() != "reference"]


def _reference_lines(ax):
    return [line for line in ax.get_lines() if line.get_gid() == "reference"]


def test_long_horizon_plots_log10_t_and_log10_loss():
    traj = _long_traj(log_t1=1e4)
    assert not np.all(np.isfinite(traj.ts))  # t itself overflows here
    fig, ax = fs.plot.convergence(traj, "loss")
    assert ax.get_xscale() == "linear"
    assert ax.get_yscale() == "linear"
    assert "log₁₀ t" in ax.get_xlabel()
    assert "log₁₀ loss" in ax.get_ylabel()
    (line,) = _data_lines(ax)
    x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    # t = 0 is dropped; everything else is exact log10 t, with no overflow.
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))
    np.testing.assert_allclose(x, traj.log_ts[1:] / LN10, rtol=1e-14)
    np.testing.assert_allclose(y, traj.metrics["log_loss"][1:] / LN10, rtol=1e-14)
    assert x[-1] == pytest.approx(1e4 / LN10)
    assert y[-1] == pytest.approx(-1e4 / LN10)
    assert ax.get_legend() is not None
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "GradientFlow (kvaerno5)"
    ]


def test_switch_to_log10_t_past_1e250():
    below = _long_traj(log_t1=math.log(1e249))
    above = _long_traj(log_t1=math.log(1e251))
    assert fs.plot.convergence(below, "margin")[1].get_xscale() == "log"
    _, ax = fs.plot.convergence(above, "margin")
    assert ax.get_xscale() == "linear" and "log₁₀ t" in ax.get_xlabel()
    # One long trajectory puts every trajectory on the log10 t axis.
    _, ax = fs.plot.convergence([below, above], "margin")
    assert ax.get_xscale() == "linear"
    for line, traj in zip(_data_lines(ax), [below, above], strict=True):
        np.testing.assert_allclose(line.get_xdata(), traj.log_ts[1:] / LN10)


def test_loss_underflow_without_log_loss_uses_log10():
    log_ts = np.linspace(0.0, 800.0, 9)
    with np.errstate(under="ignore"):
        loss = np.exp(-log_ts)  # the last points underflow to 0.0
    assert loss[-1] == 0.0
    traj = _traj(log_ts, {"loss": loss})
    _, ax = fs.plot.convergence(traj, "loss")
    assert "log₁₀ loss" in ax.get_ylabel() and ax.get_yscale() == "linear"
    (line,) = _data_lines(ax)
    y = np.asarray(line.get_ydata())
    finite = np.isfinite(y)
    assert not finite[-1]  # log10(0) is not drawn
    np.testing.assert_allclose(y[finite], -log_ts[finite] / LN10, rtol=1e-12)


@pytest.fixture(scope="module")
def real_runs():
    """A short real gradient flow and gradient descent on one small problem."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 3))
    y = np.sign(X @ np.array([1.0, -0.5, 0.25]))
    model = fs.models.Linear(3)
    problem = fs.Problem(model, fs.losses.Logistic(), X, y)
    sol = fs.solve(
        fs.GradientFlow(problem),
        model,
        t1=1e4,
        solver="tsit5",
        metrics=("loss", "margin"),
        saveat=fs.SaveAt(num=30),
    )
    gd = fs.descend(problem, model, optimizer="gd", lr=0.5, steps=200,
                    metrics=("loss", "margin"), saveat=fs.SaveAt(num=30))
    return sol, gd


def test_short_real_solve_uses_log_axes(real_runs):
    sol, _ = real_runs
    assert sol.ts[0] == 0.0
    fig, ax = fs.plot.convergence(sol, "loss")
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "t"
    # Only "loss" was recorded and it does not underflow: a log loss axis.
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "loss"
    (line,) = _data_lines(ax)
    np.testing.assert_allclose(line.get_xdata(), sol.ts[1:])  # t = 0 dropped
    np.testing.assert_allclose(line.get_ydata(), sol.metrics["loss"][1:])
    assert line.get_label() == "GradientFlow (tsit5)"
    # A linear time axis keeps t = 0.
    _, ax = fs.plot.convergence(sol, "margin", log_time=False)
    assert ax.get_xscale() == "linear"
    np.testing.assert_allclose(_data_lines(ax)[0].get_xdata(), sol.ts)


def test_reference_line_number_and_max_margin():
    traj = _long_traj(log_t1=100.0)
    _, ax = fs.plot.convergence(traj, "margin", reference=0.25)
    (ref,) = _reference_lines(ax)
    np.testing.assert_array_equal(ref.get_ydata(), [0.25, 0.25])
    assert ax.get_ylabel() == "normalised margin" and ax.get_yscale() == "linear"
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("0.25" in t for t in texts)

    X = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    y = np.array([1.0, 1.0, -1.0])
    svm = fs.reference.max_margin(X, y, norm=2)
    _, ax = fs.plot.convergence(traj, "margin", reference=svm)
    (ref,) = _reference_lines(ax)
    np.testing.assert_allclose(ref.get_ydata(), [svm.margin, svm.margin])
    assert any("γ*" in t.get_text() for t in ax.get_legend().get_texts())
    # The ℓ1 optimum is another quantity than the ℓ2 margin (here 2/3 against
    # 2/√5: drawn on an ℓ2 panel it reads as a wrong optimum).
    lp = fs.reference.max_margin(X, y, norm=1)
    for metric in ("margin", "margin_gap"):
        with pytest.raises(ValueError, match="ℓ1 max margin"):
            fs.plot.convergence(traj, metric, reference=lp)
    with pytest.raises(ValueError, match="ℓ2 max margin"):
        fs.plot.convergence(traj, "margin_l1", reference=svm)


def test_margin_gap():
    traj = _long_traj(log_t1=1e4)
    gamma = 0.25
    _, ax = fs.plot.convergence(traj, "margin_gap", reference=gamma)
    assert ax.get_yscale() == "log"
    assert "log₁₀ t" in ax.get_xlabel()
    (line,) = _data_lines(ax)
    expected = (gamma - traj.metrics["margin"][1:]) / gamma  # = 4 / log t
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
    np.testing.assert_allclose(line.get_ydata(), 4.0 / traj.log_ts[1:], rtol=1e-10)
    # A margin above the reference has no place on a log axis: not drawn.
    _, ax = fs.plot.convergence(traj, "margin_gap", reference=0.2)
    y = np.asarray(_data_lines(ax)[0].get_ydata())
    assert np.all(np.isnan(y[traj.metrics["margin"][1:] >= 0.2]))
    with pytest.raises(ValueError, match="reference"):
        fs.plot.convergence(traj, "margin_gap")


def test_multi_component_metric_one_line_each():
    log_ts = np.linspace(0.0, 5.0, 11)
    sv = np.stack([np.exp(log_ts), np.ones(11), np.zeros(11)], axis=1)
    traj = _traj(log_ts, {"singular_values": sv})
    _, ax = fs.plot.convergence(traj, "singular_values")
    assert ax.get_yscale() == "log"
    lines = _data_lines(ax)
    assert len(lines) == 3
    for j, line in enumerate(lines):
        # A zero singular value has no place on the log axis: not drawn.
        np.testing.assert_allclose(line.get_ydata(), np.where(sv[:, j] > 0, sv[:, j], np.nan))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["σ₁", "σ₂", "σ₃"]
    # Two trajectories: one colour each, one legend entry each.
    _, ax = fs.plot.convergence([traj, traj], "singular_values", labels=["a", "b"])
    lines = _data_lines(ax)
    assert len(lines) == 6
    assert len({line.get_color() for line in lines}) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]


def test_overlay_labels_and_given_axes():
    from matplotlib.figure import Figure

    a = _long_traj(log_t1=50.0)
    b = _traj(a.log_ts, dict(a.metrics), method="gd", solver=None)
    fig = Figure()
    ax = fig.add_subplot()
    out_fig, out_ax = fs.plot.convergence([a, b], "log_loss", ax=ax, title="T")
    assert out_fig is fig and out_ax is ax
    assert ax.get_title() == "T"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["GradientFlow (kvaerno5)", "gd"]
    with pytest.raises(ValueError, match="labels"):
        fs.plot.convergence([a, b], "margin", labels=["only one"])


def test_overview_panels(tmp_path):
    traj = _long_traj(log_t1=1e3)
    fig, axes = fs.plot.overview(
        traj, metrics=("log_loss", "margin", "margin_gap"), reference=0.25
    )
    assert len(axes) == 3
    assert "log₁₀ loss" in axes[0].get_ylabel()
    assert not _reference_lines(axes[0])  # the reference belongs to margins only
    assert len(_reference_lines(axes[1])) == 1
    assert axes[2].get_yscale() == "log"
    path = tmp_path / "overview.png"
    fig.savefig(path, dpi=60)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_clear():
    traj = _long_traj(log_t1=10.0)
    with pytest.raises(ValueError, match="recorded"):
        fs.plot.convergence(traj, "effective_rank")
    with pytest.raises(ValueError, match="fs.Trajectory"):
        fs.plot.convergence([traj, "not a trajectory"])
    with pytest.raises(ValueError, match="empty"):
        fs.plot.convergence([])
    with pytest.raises(ValueError, match="reference"):
        fs.plot.convergence(traj, "margin", reference="big")
    with pytest.raises(ValueError, match="log_time=True"):
        fs.plot.convergence(_long_traj(log_t1=1e3), "margin", log_time=False)


def test_headless_without_pyplot(tmp_path):
    # Fresh interpreter: plotting and saving must not need pyplot or a backend.
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import flowsolve as fs
        log_ts = np.linspace(0.0, 2000.0, 20)
        traj = fs.Trajectory(ts=np.full(20, np.inf), log_ts=log_ts,
            metrics={{"log_loss": -log_ts}}, params=None, final=None,
            log_t_final=2000.0, result=fs.RESULTS.successful, stats={{}},
            info={{"method": "GradientFlow", "solver": "kvaerno5"}})
        fig, ax = fs.plot.convergence(traj, "loss")
        fig.savefig({str(tmp_path / "h.png")!r})
        assert "matplotlib.pyplot" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_ensemble_is_drawn_as_median_and_range():
    import jax.random as jr

    X, y = fs.datasets.separable_gaussian(n=20, d=3, seed=0)
    models = [fs.models.Linear(3, key=jr.key(i), init_scale=0.5) for i in range(4)]
    problem = fs.Problem(models[0], fs.losses.Logistic(), X, y)
    ens = fs.ensemble.solve(fs.GradientFlow(problem), models, t1=10.0, solver="tsit5",
                            metrics=("margin",), saveat=fs.SaveAt(num=6))
    fig, ax = fs.plot.convergence(ens, "margin")
    (line,) = [ln for ln in ax.lines if "median" in str(ln.get_label())]
    keep = ens.ts > 0  # t = 0 is dropped on the log axis
    np.testing.assert_allclose(line.get_ydata(), np.median(ens.metrics["margin"][:, keep], axis=0))
    assert len(ax.collections) == 1  # the shaded min–max band


def test_ensemble_band_spans_the_finite_members_where_one_diverged():
    # Member 2's loss overflows to inf at the third point: the band there spans the
    # other members (it was blank: inf has no place on the axis).
    log_ts = np.linspace(0.0, 3.0, 4)
    loss = np.array([[1.0, 0.5, 0.2, 0.1], [2.0, 1.0, 0.4, 0.3], [1.5, 9.0, np.inf, np.nan]])
    base = _traj(log_ts, {"loss": loss[0]})
    ens = dataclasses.replace(base, metrics={"loss": loss}, results=(fs.RESULTS.successful,) * 2
                              + (fs.RESULTS.nonfinite,))
    _, ax = fs.plot.convergence(ens, "loss")
    (band,) = ax.collections
    verts = band.get_paths()[0].vertices
    at = np.isclose(verts[:, 0], np.exp(log_ts[2]))
    np.testing.assert_allclose(sorted(set(verts[at, 1])), [0.2, 0.4])


def _rich_long_traj(log_t1=1e4, num=60, method="GradientFlow", kind="flow"):
    """`_long_traj` plus singular values spanning 1e-300 … 1e300, effective rank and
    conserved quantities with a known drift."""
    base = _long_traj(log_t1=log_t1, num=num)
    lt = np.where(np.isfinite(base.log_ts), base.log_ts, 0.0)
    frac = lt / log_t1
    sv = np.stack([10.0 ** (300 * frac), np.ones(num), 10.0 ** (-300 * frac)], axis=1)
    conserved = np.stack([1.0 + 1e-9 * frac, -2.0 - 3e-9 * frac], axis=1)
    scale = 2.0 + frac
    metrics = dict(base.metrics)
    metrics.update(singular_values=sv, effective_rank=1.0 + frac, conserved=conserved,
                   conserved_scale=scale)
    traj = _traj(base.log_ts, metrics, method=method)
    traj.info["kind"] = kind
    return traj


def test_log_y_becomes_log10_on_linear_axis_past_1e250():
    traj = _rich_long_traj()
    _, ax = fs.plot.convergence(traj, "singular_values")
    assert ax.get_yscale() == "linear" and ax.get_xscale() == "linear"
    assert ax.get_ylabel() == "log₁₀ singular values"
    lines = _data_lines(ax)
    assert len(lines) == 3
    sv = traj.metrics["singular_values"][1:]  # t = 0 dropped
    for j, line in enumerate(lines):
        np.testing.assert_allclose(line.get_ydata(), np.log10(sv[:, j]), atol=1e-12)
    # Within range, the same metric keeps a true log axis with the raw values.
    short = _traj(traj.log_ts, {"singular_values": np.clip(traj.metrics["singular_values"], 1e-200, 1e200)})
    _, ax = fs.plot.convergence(short, "singular_values")
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "singular values"
    # A margin gap past 1e250 (a tiny positive reference, negative margins).
    neg = _traj(traj.log_ts[:5], {"margin": -np.logspace(0, 4, 5)})
    _, ax = fs.plot.convergence(neg, "margin_gap", reference=1e-300)
    assert ax.get_yscale() == "linear" and ax.get_ylabel().startswith("log₁₀ relative margin gap")
    y = np.asarray(_data_lines(ax)[0].get_ydata())
    np.testing.assert_allclose(y, np.log10((1e-300 + np.logspace(0, 4, 5)[1:]) / 1e-300))


def test_conserved_drift():
    traj = _rich_long_traj(log_t1=100.0)
    _, ax = fs.plot.convergence(traj, "conserved_drift")
    assert ax.get_yscale() == "log"
    assert "relative drift" in ax.get_ylabel()
    (line,) = _data_lines(ax)
    c = traj.metrics["conserved"]
    expected = np.max(np.abs(c - c[0]), axis=1) / traj.metrics["conserved_scale"]
    # t = 0 is dropped on the log time axis; the drift there is 0 anyway.
    np.testing.assert_allclose(line.get_ydata(), expected[1:], rtol=1e-12)
    # Without the scale: the absolute drift, labelled as such.
    bare = _traj(traj.log_ts, {"conserved": c})
    _, ax = fs.plot.convergence(bare, "conserved_drift")
    assert ax.get_ylabel().startswith("drift")
    np.testing.assert_allclose(_data_lines(ax)[0].get_ydata(), np.max(np.abs(c - c[0]), axis=1)[1:])
    with pytest.raises(ValueError, match="'conserved_drift' is computed from 'conserved'"):
        fs.plot.convergence(_long_traj(), "conserved_drift")


@pytest.mark.parametrize("log_t1", [math.log(1e249), math.log(1e251), 1e6])
def test_every_panel_finite_and_renders_at_extreme_horizons(log_t1, tmp_path):
    flow = _rich_long_traj(log_t1=log_t1)
    descent = _rich_long_traj(log_t1=min(log_t1, 20.0), method="gd", kind="descent")
    metrics = ("loss", "log_loss", "margin", "margin_gap", "singular_values",
               "effective_rank", "conserved_drift")
    fig, axes = fs.plot.overview([flow, descent], metrics, reference=0.25,
                                 labels=["GF", "GD"])
    assert len(axes) == len(metrics)
    for ax, metric in zip(axes, metrics):
        for line in _data_lines(ax):
            x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
            assert x.size and np.all(np.isfinite(x)), metric
            # NaN only where a log axis cannot show a value (gap ≤ 0, drift 0).
            assert not np.any(np.isinf(y)), metric
            assert np.any(np.isfinite(y)), metric
        lo, hi = ax.get_ylim()
        assert np.isfinite(lo) and np.isfinite(hi)
        assert ax.get_xlabel() == ("log₁₀ t" if log_t1 > math.log(1e250) else "t")
    path = tmp_path / "overview.png"
    fig.savefig(path, dpi=50)  # no overflow while drawing ticks or grid lines
    assert path.stat().st_size > 10_000


def test_descents_overlay_flows_on_one_time_axis(real_runs):
    gf, gd = real_runs
    _, ax = fs.plot.convergence([gf, gd], "loss", labels=["GF", "GD"])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    flow_line, gd_line = _data_lines(ax)
    assert flow_line.get_linestyle() == "-" and gd_line.get_linestyle() == "-."
    # Step k of GD with step η sits at t = kη, on the flow's axis.
    k = np.round(gd.ts / 0.5)
    assert np.all(np.abs(gd.ts / 0.5 - k) < 1e-9) and k[-1] == 200
    np.testing.assert_allclose(gd_line.get_xdata(), (k * 0.5)[k > 0])
    np.testing.assert_allclose(gd_line.get_ydata(), gd.metrics["loss"][k > 0])
    np.testing.assert_allclose(flow_line.get_xdata(), gf.ts[1:])
    # GD discretises GF: at t = 100 the losses agree to O(η).
    gf_at_100 = np.exp(np.interp(np.log(100.0), gf.log_ts[1:], np.log(gf.metrics["loss"][1:])))
    assert gd.metrics["loss"][-1] == pytest.approx(gf_at_100, rel=0.1)


def test_reference_lines_several_values_and_label():
    traj = _rich_long_traj(log_t1=10.0)
    short = _traj(traj.log_ts, {"singular_values": np.clip(traj.metrics["singular_values"], 1e-3, 10.0)})
    _, ax = fs.plot.convergence(short, "singular_values", reference=[3.0, 0.5],
                                reference_label="σ(W*)")
    refs = _reference_lines(ax)
    assert [line.get_ydata()[0] for line in refs] == [3.0, 0.5]
    assert all(line.get_linestyle() == "--" for line in refs)
    assert [t.get_text() for t in ax.get_legend().get_texts()].count("σ(W*)") == 1
    # The margin gap uses the reference as γ*, without drawing a line.
    _, ax = fs.plot.convergence(traj, "margin_gap", reference=0.25)
    assert not _reference_lines(ax)
    with pytest.raises(ValueError, match="one positive reference"):
        fs.plot.convergence(traj, "margin_gap", reference=[0.25, 0.3])


def test_a_run_with_nothing_to_draw_stays_in_the_legend():
    ok = _long_traj(log_t1=50.0)
    failed = _traj(ok.log_ts[:1], {k: v[:1] for k, v in ok.metrics.items()})  # t = 0 only
    _, ax = fs.plot.convergence([ok, failed], "margin", labels=["ok", "failed"])
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["ok", "failed (nothing to draw)"]


def test_log10_t_axis_can_be_log_scaled():
    flow = _long_traj(log_t1=1e4)
    short = _long_traj(log_t1=10.0)
    _, ax = fs.plot.convergence([flow, short], "margin_gap", reference=0.25,
                                log10_t_scale="log")
    # A symmetric-log axis of log10 t: both horizons readable, the data unchanged.
    assert ax.get_xscale() == "symlog" and ax.get_xlabel() == "log₁₀ t"
    for line, traj in zip(_data_lines(ax), [flow, short]):
        np.testing.assert_allclose(line.get_xdata(), traj.log_ts[1:] / LN10)
    # Below 1e250 the time axis is a plain log axis of t, whatever log10_t_scale says.
    _, ax = fs.plot.convergence(short, "margin", log10_t_scale="log")
    assert ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="log10_t_scale"):
        fs.plot.convergence(flow, "margin", log10_t_scale="symlog")
