"""Stopping rules, checkpoint/resume and long log-clock horizons for homogeneous
networks."""

import pickle

import jax.random as jr
import numpy as np
import pytest
from helpers import separable_data

import flowsolve as fs
import flowsolve._chunked as chunked


@pytest.fixture(scope="module")
def logistic():
    X, y = separable_data(n=60, d=10, seed=0)
    problem = fs.Problem(fs.models.Linear(10), fs.losses.Logistic(), X, y)
    return fs.GradientFlow(problem)


KW = dict(log_t1=1000.0, clock="log", metrics=("log_loss", "margin"), saveat=fs.SaveAt(num=40))


def test_stop_when_the_loss_falls_below_a_target_past_float64(logistic):
    sol = fs.solve(logistic, stop=fs.Stop(log_loss_below=-300.0), **KW)
    assert sol.result == fs.RESULTS.event_occurred and sol.success
    assert sol.info["stopped_by"] == "loss"
    assert sol.log_t_final < 1000.0
    # The crossing is located on the dense output; log L ≈ −log t + O(1) puts it
    # near log t ≈ 300.
    final_log_loss = float(fs.metrics.log_loss(logistic.problem, sol.final))
    assert 250.0 < sol.log_t_final < 400.0
    assert final_log_loss == pytest.approx(-300.0, abs=1e-3)  # located by root finding
    full = fs.solve(logistic, **KW)
    assert full.info["stopped_by"] == "horizon" and full.result == fs.RESULTS.successful
    # A crossing inside a long implicit step (Newton from the step's end once
    # failed to locate this one; the bracketing bisection must not).
    early = fs.solve(logistic, stop=fs.Stop(log_loss_below=-50.0), **KW)
    assert early.result == fs.RESULTS.event_occurred
    assert float(fs.metrics.log_loss(logistic.problem, early.final)) == pytest.approx(-50.0, abs=1e-3)


def test_stop_when_a_metric_plateaus(logistic):
    stop = fs.Stop(metric="margin", rtol=1e-3, over=100.0)
    sol = fs.solve(logistic, stop=stop, **KW)
    assert sol.info["stopped_by"] == "plateau"
    assert sol.result == fs.RESULTS.event_occurred
    m = sol.metrics["margin"]
    window = np.log1p(np.exp(np.minimum(sol.log_ts, 700))) >= np.log1p(np.exp(min(sol.log_t_final, 700))) - 100.0
    assert np.max(np.abs(m[window] - m[-1])) <= 1e-3 * abs(m[-1])
    assert sol.log_t_final < 1000.0


def test_checkpoint_resume_after_interrupt_is_bitwise_identical(logistic, tmp_path, monkeypatch):
    reference = fs.solve(logistic, checkpoint=tmp_path / "a.ckpt", **KW)
    assert reference.result == fs.RESULTS.successful

    calls = {"n": 0}
    real = chunked.compile_and_run

    def interrupt_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked, "compile_and_run", interrupt_on_third)
    partial = fs.solve(logistic, checkpoint=tmp_path / "b.ckpt", **KW)
    assert partial.result == fs.RESULTS.interrupted
    assert 0 < len(partial.log_ts) < len(reference.log_ts)  # kept what it had
    monkeypatch.setattr(chunked, "compile_and_run", real)

    resumed = fs.solve(logistic, checkpoint=tmp_path / "b.ckpt", **KW)
    assert resumed.result == fs.RESULTS.successful
    np.testing.assert_array_equal(resumed.final.weight, reference.final.weight)
    for name in reference.metrics:
        np.testing.assert_array_equal(resumed.metrics[name], reference.metrics[name])
    np.testing.assert_array_equal(resumed.log_ts, reference.log_ts)
    # "auto" switched to its implicit method in an early chunk; the switch is part
    # of the checkpointed state.
    assert resumed.info["solver"] == reference.info["solver"] == "tsit5→rodas5p"
    assert resumed.info["switched_at"] == reference.info["switched_at"]


def test_failed_run_resumes_with_more_steps(logistic, tmp_path):
    reference = fs.solve(logistic, checkpoint=tmp_path / "ref.ckpt", solver="tsit5", **{**KW, "log_t1": 60.0})
    failed = fs.solve(logistic, checkpoint=tmp_path / "run.ckpt", solver="tsit5", max_steps=150,
                      **{**KW, "log_t1": 60.0})
    assert failed.result == fs.RESULTS.max_steps_reached
    resumed = fs.solve(logistic, checkpoint=tmp_path / "run.ckpt", solver="tsit5", **{**KW, "log_t1": 60.0})
    assert resumed.result == fs.RESULTS.successful
    np.testing.assert_array_equal(resumed.final.weight, reference.final.weight)


def test_checkpoint_of_another_solve_is_refused(logistic, tmp_path):
    path = tmp_path / "x.ckpt"
    fs.solve(logistic, checkpoint=path, **{**KW, "log_t1": 50.0})
    with pytest.raises(ValueError, match="different solve"):
        fs.solve(logistic, checkpoint=path, **{**KW, "log_t1": 60.0})
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a flowsolve checkpoint"):
        fs.solve(logistic, checkpoint=path, **{**KW, "log_t1": 50.0})
    path.write_bytes(pickle.dumps({"format": "flowsolve.checkpoint/1", "fingerprint": "x"}))
    with pytest.raises(ValueError, match="another version of flowsolve"):
        fs.solve(logistic, checkpoint=path, **{**KW, "log_t1": 50.0})
    # A flow that differs only in an array field (the damping of a natural-gradient
    # flow: the same structure, other dynamics) is another solve too.
    ngf = tmp_path / "ngf.ckpt"
    kw = dict(t1=5.0, solver="tsit5", metrics=("loss",), saveat=fs.SaveAt(num=4), checkpoint=ngf)
    fs.solve(fs.NaturalGradientFlow(logistic.problem, damping=0.1), **kw)
    with pytest.raises(ValueError, match="different solve"):
        fs.solve(fs.NaturalGradientFlow(logistic.problem, damping=10.0), **kw)


def test_a_plateau_stopped_checkpoint_is_returned_as_it_was(logistic, tmp_path):
    # The run is finished: calling it again with the same path must not go on by a
    # chunk per call (it did: log t 452 → 955 → 1457).
    stop = fs.Stop(metric="margin", rtol=1e-3, over=100.0)
    kw = dict(KW, log_t1=3000.0, saveat=fs.SaveAt(num=60), stop=stop, checkpoint=tmp_path / "p.ckpt",
              checkpoint_every=5)
    first = fs.solve(logistic, **kw)
    assert first.info["stopped_by"] == "plateau" and first.log_t_final < 3000.0
    again = fs.solve(logistic, **kw)
    assert again.result == fs.RESULTS.event_occurred and again.info["stopped_by"] == "plateau"
    assert again.log_t_final == first.log_t_final
    np.testing.assert_array_equal(again.metrics["margin"], first.metrics["margin"])
    np.testing.assert_array_equal(again.final.weight, first.final.weight)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "needs"),
        (dict(loss_below=-1.0), "positive"),
        (dict(loss_below=1e-3, log_loss_below=-5.0), "not both"),
        (dict(metric="margin", rtol=0.0), "positive"),
    ],
)
def test_bad_stop(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fs.Stop(**kwargs)


def test_stop_already_met_at_the_start_is_an_error(logistic):
    # L(θ0) = log 2 at w = 0: a target above it can never be crossed (the event
    # fires on a sign change), and the run went silently to the horizon.
    with pytest.raises(ValueError, match="already meets the stopping rule"):
        fs.solve(logistic, stop=fs.Stop(loss_below=2.0), **KW)
    with pytest.raises(ValueError, match="already meets the stopping rule"):
        fs.solve(logistic, stop=fs.Stop(log_loss_below=0.0), **KW)


def test_stop_metric_must_be_recorded(logistic):
    with pytest.raises(ValueError, match="not recorded"):
        fs.solve(logistic, stop=fs.Stop(metric="param_norm"), **KW)


@pytest.mark.parametrize("arch", ["deep_linear", "diagonal"])
def test_homogeneous_margins_keep_increasing_to_log_t_1000(arch):
    """Lyu & Li: the normalised margin of a homogeneous network keeps increasing
    (here: non-decreasing to solver accuracy) and stays finite at s ≥ 1000."""
    X, y = separable_data(n=20, d=4, seed=5)
    if arch == "deep_linear":
        model = fs.models.DeepLinear(4, depth=2, width=3, key=jr.key(0), init_scale=0.5)
    else:
        model = fs.models.DiagonalLinear(4, depth=3, init_scale=0.5)
    problem = fs.Problem(model, fs.losses.Logistic(), X, y)
    sol = fs.solve(fs.GradientFlow(problem), model, log_t1=1000.0, clock="log",
                   metrics=("log_loss", "homogeneous_margin", "margin"), saveat=fs.SaveAt(num=40))
    assert sol.result == fs.RESULTS.successful
    for name, values in sol.metrics.items():
        assert np.all(np.isfinite(values)), name
    late = sol.metrics["homogeneous_margin"][10:]
    assert np.all(np.diff(late) >= -1e-8 * np.abs(late[1:]))
    assert sol.metrics["log_loss"][-1] < -900


def test_stiffness_estimate_is_exact_for_a_linear_field():
    # y' = A y with A = diag(−1, −10, −1000): the last-stage difference of one Tsit5
    # step sees A's dominant eigenvalue, ρh = 1000·h, to within the weight of the
    # other modes (the test flow is the closed form, not flowsolve's own output).
    import diffrax
    import jax.numpy as jnp

    from flowsolve._solver import _D_EXPLICIT, last_stage_rho_h

    lam = jnp.array([-1.0, -10.0, -1000.0])
    term = diffrax.ODETerm(lambda t, y, args: lam * y)
    y0 = jnp.array([1.0, 1.0, 1.0])
    h = 2e-3
    out = diffrax.diffeqsolve(term, diffrax.Tsit5(), 0.0, h, h, y0, saveat=diffrax.SaveAt(dense=True))
    k = out.interpolation.infos["k"][0]
    assert float(last_stage_rho_h(k, _D_EXPLICIT)) == pytest.approx(1000.0 * h, rel=1e-2)


def test_auto_on_the_log_clock_switches_only_when_the_rest_is_stiff(logistic):
    # Short horizon: an explicit solver is cheapest and auto stays on Tsit5, taking
    # exactly its steps.
    short = dict(KW, log_t1=9.0)
    a = fs.solve(logistic, solver="auto", **short)
    b = fs.solve(logistic, solver="tsit5", **short)
    assert a.info["solver"] == "tsit5" and a.info["switched_at"] is None
    assert a.stats["num_accepted_steps"] == b.stats["num_accepted_steps"]
    np.testing.assert_allclose(a.final.weight, b.final.weight, rtol=1e-13)

    # Long horizon: the explicit solver's stability limit would need > 300 more
    # steps, so auto goes implicit early and finishes in a few hundred steps where
    # Tsit5 needs tens of thousands; both land on the same margin.
    c = fs.solve(logistic, solver="auto", **KW)
    assert c.info["solver"] == "tsit5→rodas5p"
    assert 0.0 < np.exp(c.info["switched_at"]) and c.info["switched_at"] < 20.0
    assert c.stats["num_accepted_steps"] < 400
    d = fs.solve(logistic, solver="tsit5", max_steps=200_000, **KW)
    assert d.stats["num_accepted_steps"] > 10 * c.stats["num_accepted_steps"]
    assert c.metrics["margin"][-1] == pytest.approx(d.metrics["margin"][-1], rel=1e-7)


def test_auto_on_the_linear_clock_goes_implicit_after_convergence_and_back_for_an_escape():
    """Deep matrix factorisation from a small initialisation learns a rank-2 matrix
    in two steps separated by a plateau (Arora et al. 2019's incremental learning):
    the first learned direction makes Tsit5 stability-limited from the plateau on
    (ρ ≈ 0.33), the second escape is a transient an implicit method can only
    follow in short steps. Every entry is observed, so the flow's limit is the
    matrix itself: a closed-form target."""
    data = fs.datasets.low_rank_completion((10, 10), 2, seed=0)
    assert data.X.shape[0] == 100  # every entry observed
    model = fs.models.MatrixFactorization((10, 10), depth=3, key=jr.key(0), init_scale=1e-4)
    flow = fs.GradientFlow(fs.Problem(model, fs.losses.Squared(), data.X, data.y))
    sol = fs.solve(flow, model, t1=1e7, rtol=1e-8, atol=1e-10, metrics=("loss",))
    # Squared loss, n = 100 < p = 300: the implicit side is the Gauss–Newton W-method.
    assert sol.success and sol.info["solver"] == "tsit5→ros34pw2-gn"
    # Measured: implicit first on the plateau, back to Tsit5 for the escape, implicit
    # for good from t ≈ 2.30e5: 4 switches (each switch back doubles the wait before
    # the next, so there can only be a few), 662 + 191 steps. With Rodas5P as the
    # implicit side: 2 switches, 683 + 181 steps. Tsit5 alone would need
    # ~ρ·t/3.3 = 1e6 steps (it stops at max_steps near t = 2.7e6 with 2e5).
    assert 2 <= sol.info["switches"] <= 6
    assert 1e5 < np.exp(sol.info["switched_at"]) < 1e6
    assert sol.stats["num_steps"] < 2000
    W = np.asarray(sol.final.end_to_end())
    # Converged (loss 2e-23): the end-to-end matrix is the observed one to ~1e-11
    # relative; 1e-8 is the bound rtol allows.
    assert np.linalg.norm(W - data.truth) <= 1e-8 * np.linalg.norm(data.truth)


def test_auto_on_a_relu_network_is_low_order_and_accurate():
    # A ReLU flow jumps at every kink crossing and from this initialisation units
    # slide along kinks (Filippov): a tight-tolerance adaptive reference stalls.
    # Explicit Euler converges to the Filippov solution at first order, so the
    # reference is fine-step GD (η = 0.005; η = 0.01 agrees to ~1e-5, measured).
    # auto picks Bosh3 and at rtol 1e-4 stays within 1e-3 relative (measured 2.3e-4).
    X, y = fs.datasets.two_d_nonlinear(n=40, seed=0)
    model = fs.models.TwoLayer(X.shape[1], 30, key=jr.key(0))
    assert not model.smooth
    assert fs.models.TwoLayer(X.shape[1], 30, key=jr.key(0), train="output").smooth
    problem = fs.Problem(model, fs.losses.Logistic(), X, y)
    kw = dict(metrics=("loss",), saveat=fs.SaveAt(ts=np.linspace(0, 300, 7)[1:], params=True))
    fine = fs.descend(problem, model, lr=0.005, steps=60_000, **kw)
    coarse = fs.descend(problem, model, lr=0.01, steps=30_000, **kw)
    sol = fs.solve(fs.GradientFlow(problem), model, t1=300.0, rtol=1e-4, atol=1e-6, **kw)
    assert sol.success and sol.info["solver"] == "bosh3"

    def rel(a, b):
        diff = np.linalg.norm(a.params.hidden - b.params.hidden, axis=(1, 2))
        return (diff / np.linalg.norm(b.params.hidden, axis=(1, 2))).max()

    assert rel(coarse, fine) <= 1e-4  # the reference is converged to this level
    assert rel(sol, fine) <= 1e-3
