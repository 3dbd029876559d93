"""The diagonal-network reference (`diagonal_regularizer`, `diagonal_scale`,
`diagonal_implicit_bias`) against independent ground truths: quadrature of q_k' and
hand-derived asymptotics, the KKT conditions, an entropy-form primal solved by
cvxpy, the ℓ2 and ℓ1 limits, and the limit of an actual gradient flow."""

import warnings

import cvxpy as cp
import numpy as np
import pytest
import scipy.integrate

import flowsolve as fs


ref = fs.reference


def _q(x: float, k: float) -> float:
    return ref.diagonal_regularizer(np.array([x]), k)


def _sparse_problem(n: int, d: int, seed: int, support=(2, 7, 13)):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w_star = np.zeros(d)
    w_star[list(support)] = [1.0, -2.0, 1.5]
    return X, X @ w_star, w_star


def _row_space_defect(X: np.ndarray, v: np.ndarray) -> float:
    """‖(I - P)v‖ / ‖v‖, P the orthogonal projector onto range(Xᵀ)."""
    Q = np.linalg.qr(X.T)[0]
    return float(np.linalg.norm(v - Q @ (Q.T @ v)) / np.linalg.norm(v))


# ------------------------------------------------------------------ the regulariser


@pytest.mark.parametrize("k", [1e-3, 0.5, 3.0, 1e3])
def test_regularizer_is_integral_of_half_arcsinh(k):
    # q_k is defined by q_k' = ½ arcsinh(2x/k), q_k(0) = 0. quad at relative 1e-13 on
    # a smooth integrand; the closed form is accurate to a few ulps, so 1e-11
    # relative leaves room for both.
    for x in [-7.0, -0.3, 1e-4, 0.01, 0.7, 2.0, 40.0]:
        exact, _ = scipy.integrate.quad(
            lambda s: 0.5 * np.arcsinh(2 * s / k), 0.0, x, epsabs=0.0, epsrel=1e-13
        )
        np.testing.assert_allclose(_q(x, k), exact, rtol=1e-11)
    assert _q(0.0, k) == 0.0


def test_regularizer_sums_per_coordinate():
    rng = np.random.default_rng(0)
    w, k = rng.standard_normal(7), rng.uniform(0.01, 5.0, 7)
    total = sum(_q(wi, ki) for wi, ki in zip(w, k))
    np.testing.assert_allclose(ref.diagonal_regularizer(w, k), total, rtol=1e-14)
    np.testing.assert_allclose(
        ref.diagonal_regularizer(w, 0.3),
        ref.diagonal_regularizer(w, np.full(7, 0.3)),
        rtol=1e-15,
    )


@pytest.mark.parametrize("k", [1e-4, 1.0, 1e4])
def test_regularizer_small_x_taylor(k):
    # Expanding √(1+z²) and z·arcsinh z at z = 2x/k:
    # q_k(x) = (k/4)(z²/2 - z⁴/24 + O(z⁶)) = x²/(2k) - x⁴/(6k³) + O(x⁶/k⁵).
    # The quartic term, isolated, agrees to O((x/k)²) relative; subtracting the
    # quadratic loses ~(k/x)² of q's ~1e-16 accuracy, so x/k ∈ [3e-3, 3e-2] keeps
    # both errors below the 2e-3 tolerance.
    for r in [3e-3, 1e-2, 3e-2]:
        x = r * k
        quartic = (_q(x, k) - x**2 / (2 * k)) / (-(x**4) / (6 * k**3))
        np.testing.assert_allclose(quartic, 1.0, atol=2e-3)
        assert _q(-x, k) == _q(x, k)


def test_regularizer_large_k_is_l2():
    # k·Q_k(w) = ½‖w‖² - Σw⁴/(6k²) + O(k⁻⁴): the kernel (ℓ2) regime, with the
    # O(1/k²) correction checked to 1e-3 relative at k ≥ 100 (next term O(1/k²)
    # relative to it).
    w = np.array([0.5, -1.0, 2.0, 0.0])
    for k in [1e2, 1e3, 1e4]:
        gap = k * ref.diagonal_regularizer(w, k) - 0.5 * np.sum(w**2)
        np.testing.assert_allclose(gap, -np.sum(w**4) / (6 * k**2), rtol=1e-3)


def test_regularizer_small_k_is_l1():
    # With a = arcsinh z, z = 2|x|/k: a = log 2z + 1/(4z²) + …, tanh(a/2) =
    # 1 - 1/z + 1/(2z²) + …, so q_k(x) = (|x|/2)(a - tanh(a/2)) is
    # (|x|/2)(log(4|x|/k) - 1) + k/4 - k²/(32|x|) + O(k³/x²).
    # The last term, isolated, agrees to O(k/|x|) relative (measured ≤ 1.3e-5 at
    # k/|x| = 0.02): tolerance k/|x|, far below the O(1) miss of a wrong coefficient.
    for x in [-3.0, 0.5, 2.0]:
        for k in [1e-2, 1e-3]:
            lead = 0.5 * abs(x) * (np.log(4 * abs(x) / k) - 1) + k / 4
            ratio = (_q(x, k) - lead) / (-(k**2) / (32 * abs(x)))
            np.testing.assert_allclose(ratio, 1.0, atol=k / abs(x))
    # Hence Q_k / (½ log(1/k)) → ‖w‖₁, at rate O(1/log(1/k)).
    w = np.array([0.5, -1.0, 2.0])
    for k in [1e-10, 1e-50, 1e-200]:
        scaled = ref.diagonal_regularizer(w, k) / (0.5 * np.log(1 / k))
        np.testing.assert_allclose(scaled, 3.5, rtol=4 / np.log(1 / k))


def test_regularizer_no_overflow():
    # 2|x|/k overflows float64 here, and z² would long before; the closed form must
    # stay finite and agree with the small-k expansion, which is exact in float64
    # at k/|x| ~ 1e-310 (corrections ~1e-310).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, k in [(1e10, 1e-300), (1e300, 1e-300), (1.0, 5e-324), (-1e-300, 1e300)]:
            q = _q(x, k)
            assert np.isfinite(q)
            if abs(x) > k:
                lead = 0.5 * abs(x) * (np.log(4 * abs(x)) - np.log(k) - 1)
                np.testing.assert_allclose(q, lead, rtol=1e-14)
            else:
                assert 0.0 <= q <= x**2 / (2 * k) * (1 + 1e-15)


# ------------------------------------------------------------------------- scale k


def test_scale_formula():
    # k = 2(u1(0)² + u2(0)²) = 2α²(λ1² + λ2²); balanced: 4α².
    assert ref.diagonal_scale(0.3) == pytest.approx(4 * 0.09, rel=1e-15)
    assert ref.diagonal_scale(0.3, (1.0, 2.0)) == pytest.approx(2 * 0.09 * 5, rel=1e-15)
    alpha = np.array([0.1, 0.2, 0.5])
    lam = np.array([[1.0, -2.0, 0.0], [3.0, 1.0, 2.0]])
    np.testing.assert_allclose(
        ref.diagonal_scale(alpha, lam), 2 * alpha**2 * (lam[0] ** 2 + lam[1] ** 2)
    )
    np.testing.assert_allclose(ref.diagonal_scale(alpha), 4 * alpha**2)
    np.testing.assert_allclose(ref.diagonal_scale(0.5, lam), 0.5 * (lam**2).sum(0))


def test_scale_errors():
    with pytest.raises(ValueError, match="known only up to scaling"):
        ref.diagonal_scale(0.1, depth=3)
    with pytest.raises(ValueError, match="never moves"):
        ref.diagonal_scale(np.array([0.1, 0.0]))
    with pytest.raises(ValueError, match="non-negative"):
        ref.diagonal_scale(-0.1)
    with pytest.raises(ValueError, match="shape"):
        ref.diagonal_scale(0.1, (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="same d"):
        ref.diagonal_scale(np.ones(3), np.ones((2, 4)))


# ---------------------------------------------------------------- implicit bias


@pytest.mark.parametrize(
    "k", [1e4, 1.0, 1e-2, 1e-6, 1e-12, "per-coordinate"], ids=lambda k: str(k)
)
@pytest.mark.parametrize("n, d", [(8, 20), (20, 40), (30, 31)])
def test_implicit_bias_kkt(k, n, d):
    # The problem is strictly convex with affine constraints, so Xw = y together with
    # ∇Q_k(w) = ½ arcsinh(2w/k) ∈ range(Xᵀ) certifies the minimiser. Newton
    # reaches ~1e-15 on both; 1e-10 is the brief's bar, with headroom.
    X, y, _ = _sparse_problem(n, d, seed=n + d)
    if k == "per-coordinate":
        k = np.geomspace(1e-4, 10.0, d)
    result = ref.diagonal_implicit_bias(X, y, k)
    assert result.w.shape == (d,) and result.nu.shape == (n,)
    np.testing.assert_array_equal(result.k, np.broadcast_to(k, (d,)))
    relative_residual = np.linalg.norm(X @ result.w - y) / np.linalg.norm(y)
    assert relative_residual <= 1e-10
    np.testing.assert_allclose(result.residual, relative_residual, rtol=1e-12)
    grad = 0.5 * np.arcsinh(2 * result.w / k)
    assert _row_space_defect(X, grad) <= 1e-10
    np.testing.assert_allclose(X.T @ result.nu, grad, atol=1e-10 * np.max(abs(grad)))


def test_implicit_bias_dependent_rows():
    # A consistent system with a duplicated row: the dual loses strict convexity in
    # ν but not in Xᵀν; the answer must equal the one without the duplicate.
    X, y, _ = _sparse_problem(8, 20, seed=3)
    Xd, yd = np.vstack([X, X[:2]]), np.concatenate([y, y[:2]])
    k = np.linspace(0.05, 2.0, 20)
    w = ref.diagonal_implicit_bias(X, y, k).w
    np.testing.assert_allclose(ref.diagonal_implicit_bias(Xd, yd, k).w, w, rtol=1e-12)


@pytest.mark.parametrize("k", [10.0, 1.0, 0.1, "per-coordinate"], ids=str)
def test_implicit_bias_matches_entropy_primal(k):
    # An independent primal: q_k is the conjugate of (k/4)(cosh 2s - 1) =
    # (k/8)e^{2s} + (k/8)e^{-2s} - k/4, and the conjugate of a sum is the infimal
    # convolution, so q_k(x) = k/4 + min_{p - m = x; p, m ≥ 0}
    # Σ [(p/2)log(4p/k) - p/2] + [same in m] — an exponential-cone program
    # (Woodworth's u² - v² parametrisation). Clarabel stops at ~1e-10 gap; the
    # primal optimum is flat, measured 5e-8 off at k = 10, so 1e-6.
    rng = np.random.default_rng(1)
    n, d = 6, 12
    X, y = rng.standard_normal((n, d)), rng.standard_normal(n)
    if k == "per-coordinate":
        k = np.linspace(0.2, 3.0, d)
    kd = np.broadcast_to(k, (d,))
    p, m = cp.Variable(d, nonneg=True), cp.Variable(d, nonneg=True)
    c = (np.log(4 / kd) - 1) / 2
    objective = cp.sum(-cp.entr(p) / 2 - cp.entr(m) / 2 + cp.multiply(c, p + m))
    problem = cp.Problem(cp.Minimize(objective), [X @ (p - m) == y])
    problem.solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
    )
    assert problem.status == cp.OPTIMAL
    w_cvx = p.value - m.value
    result = ref.diagonal_implicit_bias(X, y, k)
    np.testing.assert_allclose(
        result.w, w_cvx, rtol=0, atol=1e-6 * np.linalg.norm(w_cvx)
    )
    # And the optimal values agree: Q_k(ŵ) = Σk/4 + the exponential-cone optimum.
    np.testing.assert_allclose(
        ref.diagonal_regularizer(result.w, kd), problem.value + kd.sum() / 4, rtol=1e-8
    )


def test_implicit_bias_large_k_is_min_l2():
    # KKT: w/k - (2/3)w³/k³ + … ∈ range(Xᵀ), so w = X⁺y + O(1/k²). Checked as the
    # error dropping 100x (within 10%) per 10x in k once k ≫ |w|.
    X, y, _ = _sparse_problem(20, 40, seed=0)
    w2 = ref.min_norm_interpolant(X, y, norm=2)
    errors = [
        np.linalg.norm(ref.diagonal_implicit_bias(X, y, k).w - w2) / np.linalg.norm(w2)
        for k in [1e2, 1e3, 1e4]
    ]
    assert errors[-1] < 1e-7
    for coarse, fine in zip(errors, errors[1:]):
        np.testing.assert_allclose(coarse / fine, 100.0, rtol=0.1)
    # Far into the kernel regime (α ≥ 1e7 in k = α²) the O(1/k²) term is below
    # rounding: X⁺y to 1e-12 (the Newton line search once stopped at its first step
    # there, its floor absolute while the dual shrinks like 1/k).
    for k in [1e14, 1e16]:
        np.testing.assert_allclose(ref.diagonal_implicit_bias(X, y, k).w, w2, atol=1e-12 * np.abs(w2).max())


def test_implicit_bias_small_k_is_min_l1():
    # Off the support of the ℓ1 solution |Xᵀν| stays a fraction ρ < 1 of its value
    # on the support (~½ log(1/k)), so those coordinates are O(k^{1-ρ}): the
    # error falls like a power of k (measured here ~k^0.6: 4.2e-4 at 1e-6, 1.3e-7 at
    # 1e-12; the exponent depends on the instance through ρ). The ℓ1 solution
    # itself (Clarabel, snapped to its vertex) is exact to ~1e-12. Tolerances:
    # ~10x above the measured errors, 5e-3 at k = 1e-6 and 2e-6 at 1e-12, plus a
    # monotone decrease over k = 1e-2 … 1e-12.
    X, y, w_star = _sparse_problem(20, 40, seed=0)
    w1 = ref.min_norm_interpolant(X, y, norm=1)
    # n = 20 Gaussian measurements recover a 3-sparse vector: ℓ1 finds the teacher.
    np.testing.assert_allclose(w1, w_star, atol=1e-9)
    errors = {
        k: np.linalg.norm(ref.diagonal_implicit_bias(X, y, k).w - w1)
        / np.linalg.norm(w1)
        for k in [1e-2, 1e-4, 1e-6, 1e-12]
    }
    assert errors[1e-6] < 5e-3
    assert errors[1e-12] < 2e-6
    values = list(errors.values())
    assert all(b < a for a, b in zip(values, values[1:]))
    # Far below any practical k it still converges and nothing overflows.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extreme = ref.diagonal_implicit_bias(X, y, 1e-300)
    assert extreme.residual < 1e-10
    np.testing.assert_allclose(extreme.w, w1, atol=1e-9)


def test_implicit_bias_zero_targets():
    X = np.random.default_rng(0).standard_normal((3, 5))
    result = ref.diagonal_implicit_bias(X, np.zeros(3), 1.0)
    assert not np.any(result.w) and not np.any(result.nu) and result.residual == 0.0


def test_implicit_bias_errors():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 4)), rng.standard_normal(6)
    with pytest.raises(ValueError, match="No interpolant"):
        ref.diagonal_implicit_bias(X, y, 1.0)
    X, y = rng.standard_normal((3, 5)), rng.standard_normal(3)
    with pytest.raises(ValueError, match="k"):
        ref.diagonal_implicit_bias(X, y, 0.0)
    with pytest.raises(ValueError, match="k"):
        ref.diagonal_implicit_bias(X, y, np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        ref.diagonal_implicit_bias(np.where(X > 1, np.nan, X), y, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        ref.diagonal_implicit_bias(X, np.array([1.0, np.inf, 0.0]), 1.0)
    with pytest.raises(ValueError, match="one entry per row"):
        ref.diagonal_implicit_bias(X, y[:2], 1.0)
    with pytest.raises(ValueError, match="k"):
        ref.diagonal_regularizer(np.ones(3), -1.0)
    with pytest.raises(ValueError, match="NaN"):
        ref.diagonal_regularizer(np.array([np.nan]), 1.0)


# ------------------------------------------------------------------ gradient flow

# Gradient flow on the squared loss converges exponentially; measured: the loss
# reaches ~1e-20 (the controller's atol floor) by t ≈ 100 for α = 0.3 and by
# t ≈ 30 to 100 for the per-coordinate scales below, so t = 200 is past it
# everywhere. The limit then matches the reference to ~1e-11 to 1e-9 relative;
# rtol = 1e-10 along an O(1) trajectory bounds the integration error near that
# level, hence the brief's 1e-6 holds with three decades of headroom.
_T = 200.0
_GF_TOL = 1e-6


def _gradient_flow_limit(X, y, init_scale, layer_scales):
    model = fs.models.DiagonalLinear(
        X.shape[1], depth=2, init_scale=init_scale, layer_scales=layer_scales
    )
    problem = fs.Problem(model, fs.losses.Squared(), X, y)
    sol = fs.solve(
        fs.GradientFlow(problem),
        model,
        t1=_T,
        solver="tsit5",
        rtol=1e-10,
        atol=1e-12,
        metrics=("loss",),
    )
    assert sol.success
    assert sol.metrics["loss"][-1] < 1e-17
    return np.asarray(sol.final.end_to_end())


_D = 20
_INITS = {
    "shape (1, 2)": (0.3, (1.0, 2.0)),
    "balanced": (0.3, None),
    "per-coordinate alpha": (np.linspace(0.1, 0.6, _D), (1.0, 2.0)),
    "per-coordinate shape": (
        0.3,
        np.random.default_rng(5).uniform(0.5, 2.0, (2, _D)),
    ),
}


@pytest.fixture(scope="module")
def regression():
    X, y, _ = _sparse_problem(8, _D, seed=0)
    return X, y


@pytest.mark.parametrize("name", list(_INITS))
def test_gradient_flow_limit(regression, name):
    X, y = regression
    init_scale, layer_scales = _INITS[name]
    w_inf = _gradient_flow_limit(X, y, init_scale, layer_scales)
    w_ref = ref.diagonal_implicit_bias(
        X, y, ref.diagonal_scale(init_scale, layer_scales)
    ).w
    assert np.linalg.norm(w_inf - w_ref) / np.linalg.norm(w_ref) <= _GF_TOL


def test_gradient_flow_initialisation_shape(regression):
    # Azulay et al. (2021): the same α and the same initial products u1u2 = α²,
    # but shapes (1, 1) and (2, ½) give k = 4α² and 8.5α², and different limits,
    # each matching its own reference and not the other's.
    X, y = regression
    limits, refs = [], []
    for shape in [(1.0, 1.0), (2.0, 0.5)]:
        limits.append(_gradient_flow_limit(X, y, 0.3, shape))
        refs.append(ref.diagonal_implicit_bias(X, y, ref.diagonal_scale(0.3, shape)).w)
    for w_inf, w_ref in zip(limits, refs):
        assert np.linalg.norm(w_inf - w_ref) / np.linalg.norm(w_ref) <= _GF_TOL
    apart = np.linalg.norm(limits[0] - limits[1]) / np.linalg.norm(refs[0])
    assert apart > 1e3 * _GF_TOL
