"""`fs.descend`: discrete optimisers on the flows' time axis, checked against
gradient flow (first-order agreement), optax's own updates, and exact time sums."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from helpers import separable_data

import flowsolve as fs


@pytest.fixture(scope="module")
def logistic_problem():
    X, y = separable_data(n=20, d=5, seed=0)
    model = fs.models.Linear(5, key=jr.key(0), init_scale=0.3)
    return fs.Problem(model, fs.losses.Logistic(), X, y), model


def test_gd_agrees_with_gradient_flow_to_first_order(logistic_problem):
    """‖θ_GD(k = T/η) − θ_GF(T)‖ = O(η): the log-log slope over a sweep of η is 1."""
    problem, model = logistic_problem
    T = 10.0
    gf = fs.solve(fs.GradientFlow(problem), model, t1=T, solver="dopri8", rtol=1e-12, atol=1e-14, metrics=())
    w_gf = np.asarray(gf.final.weight)
    etas = np.array([0.2, 0.1, 0.05, 0.025, 0.0125])
    errs = []
    for eta in etas:
        gd = fs.descend(problem, model, optimizer="gd", lr=float(eta), steps=int(round(T / eta)),
                        saveat=fs.SaveAt(num=5), metrics=("loss",))
        assert gd.log_t_final == pytest.approx(np.log(T), rel=1e-14)
        errs.append(np.linalg.norm(np.asarray(gd.final.weight) - w_gf))
    slope = np.polyfit(np.log(etas), np.log(errs), 1)[0]
    assert 0.9 <= slope <= 1.1, (slope, errs)


def test_gd_breaks_the_conservation_law_by_order_eta(logistic_problem):
    """GF conserves deep-linear balancedness exactly; GD drifts by O(η²) per step,
    O(η) over a fixed time: halving η halves the drift."""
    X, y = separable_data(n=20, d=4, seed=1)
    model = fs.models.DeepLinear(4, depth=2, width=3, key=jr.key(1), init_scale=0.7)
    problem = fs.Problem(model, fs.losses.Logistic(), X, y)
    drifts = []
    for eta in (0.1, 0.05):
        gd = fs.descend(problem, model, optimizer="gd", lr=eta, steps=int(round(5.0 / eta)),
                        metrics=("conserved", "conserved_scale"), saveat=fs.SaveAt(num=5))
        c = gd.metrics["conserved"]
        drifts.append(np.max(np.abs(c[-1] - c[0])) / gd.metrics["conserved_scale"][-1])
    assert drifts[0] > 1e-4  # a visible violation, unlike the flow's ~1e-12
    assert drifts[0] / drifts[1] == pytest.approx(2.0, rel=0.1)


def test_optax_sgd_reproduces_gd(logistic_problem):
    """optax's own update rule and flowsolve's GD step give the same iterates."""
    problem, model = logistic_problem
    a = fs.descend(problem, model, optimizer="gd", lr=0.3, steps=200, metrics=("loss",))
    b = fs.descend(problem, model, optimizer=optax.sgd(0.3), lr=0.3, steps=200, metrics=("loss",))
    np.testing.assert_allclose(b.final.weight, a.final.weight, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(a.log_ts, b.log_ts)


def test_ngd_agrees_with_natural_gradient_flow(logistic_problem):
    problem, model = logistic_problem
    ngf = fs.solve(fs.NaturalGradientFlow(problem), model, t1=5.0, solver="tsit5", rtol=1e-11, atol=1e-13, metrics=())
    errs = []
    for eta in (0.05, 0.025):
        ngd = fs.descend(problem, model, optimizer="ngd", lr=eta, steps=int(round(5.0 / eta)), metrics=())
        errs.append(np.linalg.norm(np.asarray(ngd.final.weight) - np.asarray(ngf.final.weight)))
    assert errs[0] / errs[1] == pytest.approx(2.0, rel=0.15)  # first order in η


def test_loss_scaled_gd_reaches_losses_below_float64():
    """η_k = η/L(θ_k) (Lyu & Li): the loss falls far below 1e-308 and the time
    t_k = Σ η/L_j is accumulated in the log domain."""
    X, y = separable_data(n=50, d=5, seed=2)
    problem = fs.Problem(fs.models.Linear(5), fs.losses.Logistic(), X, y)
    tr = fs.descend(problem, optimizer="loss-scaled-gd", lr=20.0, steps=5000,
                    metrics=("log_loss", "margin"), saveat=fs.SaveAt(num=30))
    assert tr.result == fs.RESULTS.successful
    ll = tr.metrics["log_loss"]
    assert np.all(np.isfinite(ll)) and ll[-1] < -1000.0
    assert np.all(np.isfinite(tr.log_ts[1:])) and tr.log_t_final > 1000.0
    assert tr.metrics["margin"][-1] > 0
    # The time accounting, step by step: t_{k+1} − t_k = η / L(θ_k).
    short = fs.descend(problem, optimizer="loss-scaled-gd", lr=0.5, steps=40,
                       metrics=("log_loss",), saveat=fs.SaveAt(num=41, spacing="linear"))
    dt = np.diff(np.exp(short.log_ts))
    np.testing.assert_allclose(dt, 0.5 * np.exp(-short.metrics["log_loss"][:-1]), rtol=1e-10)


def test_schedule_times_are_the_sum_of_step_sizes(logistic_problem):
    problem, model = logistic_problem
    sched = optax.linear_schedule(0.5, 0.05, 100)
    tr = fs.descend(problem, model, optimizer="gd", lr=sched, steps=150, metrics=("loss",),
                    saveat=fs.SaveAt(num=151, spacing="linear"))
    etas = np.array([float(sched(k)) for k in range(150)])
    np.testing.assert_allclose(tr.ts, np.concatenate([[0.0], np.cumsum(etas)]), rtol=1e-12)


def test_save_times_on_the_flow_axis(logistic_problem):
    problem, model = logistic_problem
    tr = fs.descend(problem, model, lr=0.25, steps=400, saveat=fs.SaveAt(ts=[0.0, 1.0, 10.0, 100.0]),
                    metrics=("loss",))
    np.testing.assert_allclose(tr.ts, [0.0, 1.0, 10.0, 100.0], rtol=1e-14)
    assert np.isneginf(tr.log_ts[0])


def test_divergence_stops_with_the_last_finite_point():
    X = np.random.default_rng(0).normal(size=(10, 3)) * 10
    problem = fs.Problem(fs.models.Linear(3), fs.losses.Squared(), X, np.ones(10))
    tr = fs.descend(problem, optimizer="gd", lr=10.0, steps=10_000, metrics=("log_loss",))
    assert tr.result == fs.RESULTS.nonfinite
    assert tr.stats["num_steps"] < 10_000
    assert np.all(np.isfinite(np.asarray(tr.final.weight)))
    assert np.all(np.isfinite(tr.metrics["log_loss"]))  # the loss itself overflows



def test_a_schedule_turning_negative_stops_before_that_step(logistic_problem):
    # η_k = 0.1 for k < 5, then −0.1: gradient ascent on a time axis that runs
    # backwards (it came back "successful" with NaN times). The five steps before
    # it are kept, equal to a run of five steps.
    problem, model = logistic_problem
    kw = dict(optimizer="gd", metrics=("loss",), saveat=fs.SaveAt(num=20, spacing="linear"))
    tr = fs.descend(problem, model, lr=lambda k: jnp.where(k < 5, 0.1, -0.1), steps=40, **kw)
    five = fs.descend(problem, model, lr=0.1, steps=5, **kw)
    assert tr.result is fs.RESULTS.invalid_step_size and not tr.success
    assert tr.stats["num_steps"] == 5
    np.testing.assert_array_equal(tr.final.weight, five.final.weight)
    assert tr.log_t_final == pytest.approx(np.log(0.5), rel=1e-12)
    assert np.all(np.isfinite(tr.log_ts[1:])) and np.all(np.diff(tr.log_ts) > 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0.0), "lr"),
        (dict(lr=-1.0), "lr"),
        (dict(steps=0), "steps"),
        (dict(optimizer="adam"), "Unknown optimizer"),
        (dict(lr=optax.constant_schedule(0.1), saveat=fs.SaveAt(ts=[1.0])), "schedule"),
        (dict(lr=0.1, steps=10, saveat=fs.SaveAt(ts=[5.0])), "Save times"),
        (dict(optimizer="loss-scaled-gd", saveat=fs.SaveAt(ts=[0.0, 5.0])), "loss-scaled GD"),
        (dict(lr=0.1, saveat=fs.SaveAt(ts=[])), "not be empty"),
        (dict(lr=0.1, saveat=fs.SaveAt(ts=[3.0, 1.0])), "sorted"),
        (dict(lr=0.1, saveat=fs.SaveAt(ts=[0.0, np.nan])), "finite"),
        (dict(metrics=("nope",)), "Unknown metric"),
    ],
)
def test_bad_arguments(logistic_problem, kwargs, match):
    problem, model = logistic_problem
    with pytest.raises(ValueError, match=match):
        fs.descend(problem, model, **kwargs)


def test_descent_trajectory_round_trips(tmp_path, logistic_problem):
    problem, model = logistic_problem
    tr = fs.descend(problem, model, lr=0.1, steps=50, metrics=("loss", "margin"))
    back = fs.Trajectory.load(tr.save(tmp_path / "gd.traj"))
    np.testing.assert_array_equal(back.log_ts, tr.log_ts)
    np.testing.assert_array_equal(back.metrics["margin"], tr.metrics["margin"])
    assert back.info["kind"] == "descent"
    np.testing.assert_array_equal(jnp.asarray(back.final.weight), tr.final.weight)


def test_an_interrupted_descent_keeps_all_but_a_tenth(logistic_problem, monkeypatch):
    """Log-spaced save points put most of the steps in the last gap (here 251 →
    1000). A compiled call covers at most a tenth of the run (the floor of 50 000
    steps lowered to 1 for a small test), so Ctrl-C during the last call keeps ≥ 90 %
    of the steps. What is kept is bitwise an uninterrupted run of as many steps, and
    the save points before it are those of the full run."""
    from flowsolve import _descend

    problem, model = logistic_problem
    monkeypatch.setattr(_descend, "_MIN_STEPS_PER_CALL", 1)
    kw = dict(lr=0.5, metrics=("loss",), saveat=fs.SaveAt(num=6))
    real, calls = _descend.compile_and_run, []
    monkeypatch.setattr(_descend, "compile_and_run", lambda *a: (calls.append(1), real(*a))[1])
    full = fs.descend(problem, model, steps=1000, **kw)
    n_calls = len(calls)
    assert full.success and n_calls >= 10

    def interrupting(*args):
        calls.append(1)
        if len(calls) == n_calls:  # the last call
            raise KeyboardInterrupt
        return real(*args)

    calls.clear()
    monkeypatch.setattr(_descend, "compile_and_run", interrupting)
    cut = fs.descend(problem, model, steps=1000, **kw)
    k = cut.stats["num_steps"]
    assert cut.result is fs.RESULTS.interrupted and 900 <= k < 1000
    monkeypatch.setattr(_descend, "compile_and_run", real)
    same = fs.descend(problem, model, steps=k, **kw)
    np.testing.assert_array_equal(np.asarray(cut.final.weight), np.asarray(same.final.weight))
    kept = full.ts <= k * 0.5
    np.testing.assert_array_equal(cut.metrics["loss"], full.metrics["loss"][kept])
    np.testing.assert_array_equal(cut.ts, full.ts[kept])
