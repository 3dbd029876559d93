"""Metrics against closed forms and the monotonicity theorem of Lyu & Li (2019)."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import separable_data

import flowsolve as fs


def _toy_problem(weight):
    # x1 = (1, 0) labelled +1, x2 = (0, 1) labelled −1.
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([1.0, -1.0])
    model = fs.models.Linear(2, weight=weight)
    return fs.Problem(model, fs.losses.Logistic(), X, y), model


def test_margins_of_a_known_predictor():
    problem, model = _toy_problem([1.0, -1.0])
    # min_i y_i wᵀx_i = 1; ‖w‖₂ = √2, ‖w‖₁ = 2.
    assert float(fs.metrics.margin(problem, model)) == pytest.approx(1 / np.sqrt(2), rel=1e-15)
    assert float(fs.metrics.margin(problem, model, norm=1)) == pytest.approx(0.5, rel=1e-15)
    # A linear model is 1-homogeneous with θ = w: the two definitions agree.
    assert float(fs.metrics.homogeneous_margin(problem, model)) == pytest.approx(1 / np.sqrt(2), rel=1e-15)
    assert float(fs.metrics.train_error(problem, model)) == 0.0
    problem, model = _toy_problem([1.0, 1.0])
    assert float(fs.metrics.train_error(problem, model)) == 0.5


def test_margin_of_the_zero_predictor_is_zero_not_nan():
    problem, model = _toy_problem([0.0, 0.0])
    for fn in (fs.metrics.margin, fs.metrics.margin_l1, fs.metrics.homogeneous_margin,
               fs.metrics.smoothed_margin):
        assert float(fn(problem, model)) == 0.0, fn.__name__


def test_effective_rank_and_singular_values_closed_form(getkey):
    model = fs.models.MatrixFactorization((3, 3), depth=1, key=getkey())
    W = np.diag([3.0, 1.0, 0.0])
    model = eqx.tree_at(lambda m: m.layers, model, (jnp.asarray(W),))
    X = np.array([[0, 0], [1, 1]])
    problem = fs.Problem(model, fs.losses.Squared(), X, np.array([3.0, 1.0]))
    np.testing.assert_allclose(fs.metrics.singular_values(problem, model), [3.0, 1.0, 0.0], atol=1e-15)
    p = np.array([0.75, 0.25])  # σ_k / Σσ
    want = np.exp(-np.sum(p * np.log(p)))  # Roy & Vetterli
    assert float(fs.metrics.effective_rank(problem, model)) == pytest.approx(want, rel=1e-14)
    # A rank-one matrix has effective rank exactly 1.
    model1 = eqx.tree_at(lambda m: m.layers, model, (jnp.outer(jnp.arange(1.0, 4.0), jnp.ones(3)),))
    assert float(fs.metrics.effective_rank(problem, model1)) == pytest.approx(1.0, abs=1e-12)


def test_log_loss_metric_matches_the_loss_where_representable():
    X, y = separable_data(n=20, d=3, seed=1)
    model = fs.models.Linear(3, weight=[0.3, -0.2, 0.1])
    problem = fs.Problem(model, fs.losses.Logistic(), X, y)
    loss = np.mean(np.log1p(np.exp(-y * (X @ np.array([0.3, -0.2, 0.1])))))
    assert float(fs.metrics.loss(problem, model)) == pytest.approx(loss, rel=1e-14)
    assert float(fs.metrics.log_loss(problem, model)) == pytest.approx(np.log(loss), rel=1e-14)


@pytest.mark.parametrize("loss", [fs.losses.Exponential(), fs.losses.Logistic()])
@pytest.mark.parametrize("arch", ["deep_linear", "diagonal"])
def test_smoothed_margin_is_monotone_along_gradient_flow(loss, arch):
    """Lyu & Li (2019), Theorem 4.1: for an L-homogeneous model, once the loss is
    small the smoothed margin never decreases along gradient flow; it is a lower
    bound on the normalised margin. Checked to log t = 60 on the log clock.
    (ReLU networks are homogeneous too, but their flows can slide along kinks
    where adaptive solvers stall; they are left to the non-smooth solver work.)"""
    if arch == "deep_linear":
        X, y = separable_data(n=30, d=4, seed=2)
        model = fs.models.DeepLinear(4, depth=2, width=3, key=jr.key(1), init_scale=0.5)
        solver = "auto"
    else:
        X, y = separable_data(n=30, d=4, seed=3)
        model = fs.models.DiagonalLinear(4, depth=3, init_scale=0.5, layer_scales=(1.0, 1.5, 0.8))
        solver = "auto"
    problem = fs.Problem(model, loss, X, y)
    sol = fs.solve(fs.GradientFlow(problem), model, log_t1=60.0, clock="log", solver=solver,
                   rtol=1e-9, atol=1e-12, saveat=fs.SaveAt(num=80), max_steps=50_000,
                   metrics=("loss", "log_loss", "smoothed_margin", "homogeneous_margin"))
    assert sol.result == fs.RESULTS.successful, sol.result
    sm = sol.metrics["smoothed_margin"]
    hm = sol.metrics["homogeneous_margin"]
    assert np.all(np.isfinite(sm)) and np.all(np.isfinite(hm))
    n = len(y)
    # The theorem's threshold, with the sum loss nL: nL < 1 (exp) or log 2 (logistic).
    threshold = 1.0 if isinstance(loss, fs.losses.Exponential) else np.log(2.0)
    after = np.nonzero(n * np.exp(sol.metrics["log_loss"]) < threshold)[0]
    assert len(after) > 10, "the loss never got small: the test would be vacuous"
    tail = sm[after[0]:]
    # Non-decreasing up to integration error (tolerances 1e-9 on O(1) margins).
    assert np.all(np.diff(tail) >= -1e-7 * np.abs(tail[1:])), np.diff(tail).min()
    assert tail[-1] > tail[0]
    # Lower bound on the normalised margin.
    assert np.all(sm[after[0]:] <= hm[after[0]:] + 1e-12)


def test_homogeneous_margin_needs_a_degree(getkey):
    mlp = eqx.nn.MLP(2, "scalar", width_size=4, depth=1, key=getkey())
    X, y = separable_data(n=6, d=2)
    problem = fs.Problem(mlp, fs.losses.Logistic(), X, y)
    with pytest.raises(ValueError, match="homogeneity"):
        fs.metrics.homogeneous_margin(problem, mlp)
    # ... which a user can declare.
    problem = fs.Problem(mlp, fs.losses.Logistic(), X, y, homogeneity=2)
    assert np.isfinite(float(fs.metrics.homogeneous_margin(problem, mlp)))


def test_output_only_two_layer_margins_normalise_by_the_output_layer(getkey):
    # With the hidden layer frozen the model is 1-homogeneous in the output layer b
    # alone, so the normalised margin is min_i y_i f(x_i) / ‖b‖ (Chizat & Bach's
    # random-features regime), computed here in NumPy from the layers.
    X, y = separable_data(n=12, d=3)
    model = fs.models.TwoLayer(3, 8, key=getkey(), activation="relu", train="output")
    problem = fs.Problem(model, fs.losses.Logistic(), X, y)
    A, b = np.asarray(model.hidden), np.asarray(model.output)
    u = y * (np.maximum(X @ A.T, 0.0) @ b) * float(model.scale)
    nb = np.linalg.norm(b)
    assert model.homogeneity == 1
    assert float(fs.metrics.param_norm(problem, model)) == pytest.approx(nb, rel=1e-14)
    assert float(fs.metrics.margin(problem, model)) == pytest.approx(u.min() / nb, rel=1e-13)
    log_sum = np.log(np.sum(np.logaddexp(0.0, -u)))
    want = -np.log(np.expm1(np.exp(log_sum))) / nb  # Lyu & Li, sum loss 𝓛 = e^{log_sum}
    assert float(fs.metrics.smoothed_margin(problem, model)) == pytest.approx(want, rel=1e-12)


def test_smoothed_margin_is_finite_when_the_summed_loss_is_large():
    # 𝓛 = Σ log(1 + e^{−u_i}) ≈ 1386 for 2 000 points at u = 0.01 (ℓ = log 2 −
    # u/2 + ...): log(e^𝓛 − 1) = 𝓛 to float64 precision (e^−𝓛 ≈ 1e-602), so the
    # smoothed margin is −𝓛/‖w‖; forming e^𝓛 overflowed to −inf.
    n = 2000
    X = np.ones((n, 1))
    y = np.ones(n)
    model = fs.models.Linear(1, weight=[0.01])
    problem = fs.Problem(model, fs.losses.Logistic(), X, y)
    total = n * np.logaddexp(0.0, -0.01)
    assert total > 709
    assert float(fs.metrics.smoothed_margin(problem, model)) == pytest.approx(-total / 0.01, rel=1e-13)


@pytest.mark.parametrize("scale", [1e-160, 1e160])
def test_margins_are_scale_invariant_past_the_square_range(scale):
    # A normalised margin is invariant under w → c·w (c > 0); the norm ‖cw‖ must
    # not square c (c² overflows past 1e154 and underflows below 1e-154).
    problem, model = _toy_problem([3.0, -4.0])
    big = fs.models.Linear(2, weight=[3.0 * scale, -4.0 * scale])
    assert float(fs.metrics.param_norm(problem, big)) == pytest.approx(5.0 * scale, rel=1e-15)
    for fn in (fs.metrics.margin, fs.metrics.margin_l1):
        assert float(fn(problem, big)) == pytest.approx(float(fn(problem, model)), rel=1e-14), fn.__name__


def test_norm_gradient_is_x_over_norm_and_zero_at_zero():
    # d‖x‖/dx = x/‖x‖ (here (3, −4, 0)/5), and the documented 0 at x = 0 (not NaN:
    # sqrt's derivative at 0 is infinite), also for entries past the square range.
    import jax

    from flowsolve._misc import safe_norm

    np.testing.assert_array_equal(jax.grad(safe_norm)(jnp.zeros(3)), np.zeros(3))
    for scale in (1.0, 1e160, 1e-160):
        g = jax.grad(safe_norm)(scale * jnp.array([3.0, -4.0, 0.0]))
        np.testing.assert_allclose(g, [0.6, -0.8, 0.0], rtol=1e-15)
