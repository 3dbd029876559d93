import itertools
import warnings

import numpy as np
import pytest
import scipy.optimize

import flowsolve as fs


ref = fs.reference
ds = fs.datasets

# Tolerances. The LP/QP solutions are solved to 1e-10 by Clarabel and then
# re-solved on the active set to ~1e-14; 1e-9 leaves headroom on top of both.
# Nuclear-norm SDPs stop at Clarabel's ~1e-8, hence 1e-6 for recovery.
KKT_TOL = 1e-9
SDP_TOL = 1e-6


def _linprog_l1_margin(Z: np.ndarray) -> float:
    """‖ŵ‖₁ from scipy's HiGHS, an independent LP solver: min Σ(p + q) s.t.
    Z(p - q) >= 1, p, q >= 0."""
    n, d = Z.shape
    lp = scipy.optimize.linprog(
        np.ones(2 * d),
        A_ub=-np.hstack([Z, -Z]),
        b_ub=-np.ones(n),
        bounds=(0, None),
        method="highs",
    )
    assert lp.status == 0
    return lp.fun


# ---------------------------------------------------------------------- max margin


def test_max_margin_hand_made():
    # (1, 0) labelled +1 and (0, 1) labelled -1: z = (1, 0), (0, -1), so
    # ŵ = (1, -1) with both constraints tight and ŵ = 1·z_1 + 1·z_2, i.e. α = (1, 1).
    # The third point (2, 0), +1, has margin 2 > 1: not a support vector, α = 0.
    X = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    y = np.array([1.0, -1.0, 1.0])
    mm = ref.max_margin(X, y)
    np.testing.assert_allclose(mm.w, [1.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(mm.direction, [2**-0.5, -(2**-0.5)], atol=1e-12)
    np.testing.assert_allclose(mm.margin, 2**-0.5, atol=1e-12)
    np.testing.assert_allclose(mm.dual, [1.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_array_equal(mm.support, [0, 1])
    assert mm.norm == 2 and mm.residual < 1e-12
    # ℓ1: min |w1| + |w2| s.t. w1 >= 1, -w2 >= 1 is the same point, ‖ŵ‖₁ = 2.
    mm1 = ref.max_margin(X, y, norm=1)
    np.testing.assert_allclose(mm1.w, [1.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(mm1.margin, 0.5, atol=1e-12)


def test_max_margin_single_point_l1_vs_l2():
    # One point x = (1, 2), y = +1. ℓ2: ŵ = x/‖x‖² = (0.2, 0.4), margin ‖x‖₂ = √5.
    # ℓ1: all weight on the largest coordinate, ŵ = (0, 0.5), margin ‖x‖∞ = 2, and
    # the LP dual is α = ‖ŵ‖₁ = 0.5.
    X, y = np.array([[1.0, 2.0]]), np.array([1.0])
    mm = ref.max_margin(X, y)
    np.testing.assert_allclose(mm.w, [0.2, 0.4], atol=1e-12)
    np.testing.assert_allclose(mm.margin, np.sqrt(5), atol=1e-12)
    mm1 = ref.max_margin(X, y, norm=1)
    np.testing.assert_allclose(mm1.w, [0.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(mm1.margin, 2.0, atol=1e-12)
    np.testing.assert_allclose(mm1.dual, [0.5], atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n, d", [(200, 50), (30, 60)])
def test_max_margin_l2_kkt(seed, n, d):
    X, y = data = ds.separable_gaussian(n, d, seed=seed)
    mm = ref.max_margin(X, y)
    Z = y[:, None] * X
    slack = Z @ mm.w - 1
    alpha = mm.dual
    # KKT for min ½‖w‖² s.t. Zw >= 1 certify optimality of the convex QP:
    assert np.min(slack) >= -KKT_TOL  # primal feasibility
    assert np.min(alpha) >= 0  # dual feasibility
    np.testing.assert_allclose(mm.w, Z.T @ alpha, atol=KKT_TOL)  # stationarity
    assert np.max(np.abs(alpha * slack)) <= KKT_TOL  # complementary slackness
    # Reported quantities agree with their definitions.
    np.testing.assert_allclose(mm.margin, 1 / np.linalg.norm(mm.w), rtol=1e-12)
    np.testing.assert_allclose(np.min(Z @ mm.direction), mm.margin, rtol=1e-9)
    np.testing.assert_array_equal(mm.support, np.flatnonzero(slack <= 1e-6))
    assert set(np.flatnonzero(alpha > 0)) <= set(mm.support)
    # Strong duality: Σα = ‖ŵ‖².
    np.testing.assert_allclose(np.sum(alpha), mm.w @ mm.w, rtol=1e-9)
    # The unit teacher is feasible for the normalised problem: margin >= its margin.
    assert mm.margin >= data.info["teacher_margin"] - 1e-12
    # No random unit direction beats it.
    U = np.random.default_rng(0).standard_normal((2000, d))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    assert np.max(np.min(Z @ U.T, axis=0)) <= mm.margin


@pytest.mark.parametrize("seed", [0, 1])
def test_max_margin_l1_against_highs(seed):
    X, y = ds.sparse_teacher_classification(30, 60, k=3, seed=seed, n_test=0)
    mm = ref.max_margin(X, y, norm=1)
    Z = y[:, None] * X
    # Same optimal value from an independent LP solver (the minimiser itself may
    # not be unique, the value is).
    np.testing.assert_allclose(1 / mm.margin, _linprog_l1_margin(Z), rtol=1e-8)
    # LP optimality certificate: primal and dual feasible with equal objectives.
    assert np.min(Z @ mm.w) >= 1 - KKT_TOL
    assert np.min(mm.dual) >= 0
    assert np.max(np.abs(Z.T @ mm.dual)) <= 1 + KKT_TOL
    np.testing.assert_allclose(np.sum(mm.dual), np.sum(np.abs(mm.w)), rtol=KKT_TOL)
    np.testing.assert_allclose(np.sum(np.abs(mm.direction)), 1.0, rtol=1e-12)


def test_max_margin_l1_brute_force():
    # d = 3, a handful of points: grid the ℓ1 unit sphere (the octahedron's faces)
    # and take the best min-margin. The LP optimum is an upper bound for every
    # grid point and the grid (step 1/300, |z|∞ <= ~3) gets within 0.02 of it.
    X, y = ds.separable_gaussian(8, 3, seed=7)
    Z = y[:, None] * X
    mm = ref.max_margin(X, y, norm=1)
    steps = 300
    a, b = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    keep = a + b <= steps
    a, b = a[keep] / steps, b[keep] / steps
    face = np.stack([a, b, 1 - a - b], axis=1)
    best = -np.inf
    for signs in itertools.product([-1.0, 1.0], repeat=3):
        U = face * np.array(signs)
        best = max(best, float(np.max(np.min(Z @ U.T, axis=0))))
    assert best <= mm.margin + 1e-12
    assert best >= mm.margin - 0.02


def test_max_margin_errors():
    xor = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    y_xor = np.array([1.0, 1.0, -1.0, -1.0])
    for norm in (1, 2):
        with pytest.raises(ValueError, match="not linearly separable"):
            ref.max_margin(xor, y_xor, norm=norm)
    X = np.eye(2)
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        ref.max_margin(X, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="NaN or inf"):
        ref.max_margin(np.array([[np.nan, 1.0], [1.0, 0.0]]), np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="one entry per row"):
        ref.max_margin(X, np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="norm"):
        ref.max_margin(X, np.array([1.0, -1.0]), norm=3)


def test_max_margin_needs_bias_for_offset_data():
    # Separable only with an intercept: x in {1, 2} labelled -1 / +1 in 1-D. An
    # appended constant coordinate makes it separable through the origin.
    X = np.array([[1.0], [2.0]])
    y = np.array([-1.0, 1.0])
    with pytest.raises(ValueError, match="constant-1 column"):
        ref.max_margin(X, y)
    mm = ref.max_margin(np.hstack([X, np.ones((2, 1))]), y)
    # Hand-derived: w = (2, -3) puts both points at margin exactly 1.
    np.testing.assert_allclose(mm.w, [2.0, -3.0], atol=1e-10)


@pytest.mark.parametrize("norm", [1, 2])
def test_max_margin_scales_with_the_data(norm):
    # An invariance of the problem: for data c·X the optimum is ŵ/c, the margin
    # c·γ and the duals α/c² (ℓ2, w = Zᵀα) or α/c (ℓ1, Σα = ‖w‖₁). The solver's
    # tolerances are absolute, so this fails unless the data are rescaled first
    # (unscaled, c = 1e6 gave a third of the ℓ2 margin and c = 1e-6 "not
    # separable"). Compared against c = 1 and HiGHS's ℓ1 optimum at KKT_TOL.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 3))
    y = np.sign(X[:, 0])
    base = ref.max_margin(X, y, norm=norm)
    if norm == 1:
        np.testing.assert_allclose(1.0 / base.margin, _linprog_l1_margin(y[:, None] * X), rtol=KKT_TOL)
    power = 2 if norm == 2 else 1
    for c in (1e-8, 1e-5, 1e5, 1e8):
        mm = ref.max_margin(c * X, y, norm=norm)
        np.testing.assert_allclose(mm.margin, c * base.margin, rtol=KKT_TOL)
        np.testing.assert_allclose(mm.w, base.w / c, rtol=KKT_TOL, atol=KKT_TOL * np.abs(base.w).max() / c)
        np.testing.assert_allclose(mm.direction, base.direction, atol=KKT_TOL)
        np.testing.assert_allclose(mm.dual, base.dual / c**power, atol=KKT_TOL * base.dual.max() / c**power)
        assert list(mm.support) == list(base.support)
        assert mm.residual <= KKT_TOL


# -------------------------------------------------------------- min-norm interpolant


@pytest.mark.parametrize("seed", [0, 1])
def test_min_l2_interpolant_closed_form(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((15, 40))
    y = rng.standard_normal(15)
    w = ref.min_norm_interpolant(X, y)
    closed = X.T @ np.linalg.solve(X @ X.T, y)
    # Both are backward stable on a well-conditioned 15 x 40 Gaussian matrix.
    np.testing.assert_allclose(w, closed, rtol=1e-10, atol=1e-12)


def test_min_l2_interpolant_rank_deficient():
    # A duplicated row with the same target is consistent; the answer is X⁺y.
    rng = np.random.default_rng(3)
    X = rng.standard_normal((4, 6))
    X = np.vstack([X, X[0]])
    y = rng.standard_normal(4)
    y = np.append(y, y[0])
    w = ref.min_norm_interpolant(X, y)
    np.testing.assert_allclose(w, np.linalg.pinv(X) @ y, atol=1e-12)
    np.testing.assert_allclose(X @ w, y, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_l1_interpolant_recovers_sparse_teacher(seed):
    # Compressed sensing: k = 3 of d = 100 from n = ceil(4 k log d) = 56 Gaussian
    # measurements, well past the Donoho-Tanner phase transition.
    k, d = 3, 100
    n = int(np.ceil(4 * k * np.log(d)))
    X, y = data = ds.sparse_regression(n, d, k=k, seed=seed)
    w = ref.min_norm_interpolant(X, y, norm=1)
    # The vertex polish makes recovery exact to roundoff.
    np.testing.assert_allclose(w, data.truth, atol=1e-10)
    # The min-ℓ2 interpolant is dense instead.
    assert np.count_nonzero(np.abs(ref.min_norm_interpolant(X, y)) > 1e-3) > 50


def test_min_l1_interpolant_hand_made_and_highs():
    # w1 + 2 w2 = 2: cheapest in ℓ1 through the larger coefficient, w = (0, 1).
    w = ref.min_norm_interpolant(np.array([[1.0, 2.0]]), np.array([2.0]), norm=1)
    np.testing.assert_allclose(w, [0.0, 1.0], atol=1e-12)
    # Under-sampled (no recovery): the optimal value agrees with HiGHS.
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((10, 30)), rng.standard_normal(10)
    w = ref.min_norm_interpolant(X, y, norm=1)
    lp = scipy.optimize.linprog(
        np.ones(60), A_eq=np.hstack([X, -X]), b_eq=y, bounds=(0, None), method="highs"
    )
    np.testing.assert_allclose(np.sum(np.abs(w)), lp.fun, rtol=1e-8)
    np.testing.assert_allclose(X @ w, y, atol=1e-9)



def test_min_l1_interpolant_scales_with_the_data():
    # X w = y with X → a·X and y → b·y has the solution (b/a)·w: checked against
    # a = b = 1 over twelve orders of magnitude (unscaled, X·1e6 was 1.5e-5 off).
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((5, 12)), rng.standard_normal(5)
    base = ref.min_norm_interpolant(X, y, norm=1)
    for a, b in itertools.product((1e-6, 1e6), (1e-4, 1e4)):
        w = ref.min_norm_interpolant(a * X, b * y, norm=1)
        np.testing.assert_allclose(w, base * b / a, rtol=1e-9, atol=1e-9 * np.abs(base).max() * b / a)
    np.testing.assert_array_equal(ref.min_norm_interpolant(X, 0.0 * y, norm=1), np.zeros(12))

@pytest.mark.parametrize("norm", [1, 2])
def test_min_norm_interpolant_inconsistent(norm):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((10, 3)), rng.standard_normal(10)
    with pytest.raises(ValueError, match="No interpolant exists"):
        ref.min_norm_interpolant(X, y, norm=norm)


# -------------------------------------------------------------------- nuclear norm


def test_nuclear_completion_hand_made():
    # [[1, 1], [1, ?]]: the symmetric completion with ? = t has eigenvalues
    # ((1 + t) ± √((1 - t)² + 4)) / 2, so ‖W‖_* = 1 + t for t >= 1 and
    # √((1 - t)² + 4) > 2 for t < 1: the minimum, 2, is at t = 1 (all ones).
    # The objective is only quadratic for t < 1, so an objective error ε moves t
    # by ~√ε: this is a test of the solver tolerances, not just of the model.
    X = np.array([[0, 0], [0, 1], [1, 0]])
    W = ref.min_nuclear_norm_completion((2, 2), X, np.ones(3))
    np.testing.assert_allclose(W, np.ones((2, 2)), atol=SDP_TOL)


def test_nuclear_completion_recovers_rank_one():
    # An incoherent rank-1 matrix (entries of u, v of size 1 to 2, so no row or
    # column dominates), 12 x 10 with 21 degrees of freedom, from 60 random
    # entries: recovered for each of 20 seeds tried while writing this test.
    rng = np.random.default_rng(0)
    u = rng.choice([-1.0, 1.0], 12) * rng.uniform(1, 2, 12)
    v = rng.choice([-1.0, 1.0], 10) * rng.uniform(1, 2, 10)
    M = np.outer(u, v)
    X = np.stack(np.unravel_index(rng.choice(120, 60, replace=False), M.shape), 1)
    W = ref.min_nuclear_norm_completion(M.shape, X, M[X[:, 0], X[:, 1]])
    np.testing.assert_allclose(W, M, atol=SDP_TOL * np.max(np.abs(M)))
    s = np.linalg.svd(W, compute_uv=False)
    assert s[1] <= SDP_TOL * s[0]


def test_nuclear_completion_of_dataset():
    # A generated data set with its default number of entries (4x the degrees of
    # freedom here) is recovered; the test split is predicted.
    X, y = data = ds.low_rank_completion((12, 10), 1, seed=1)
    W = ref.min_nuclear_norm_completion((12, 10), X, y)
    pred = W[data.X_test[:, 0], data.X_test[:, 1]]
    np.testing.assert_allclose(pred, data.y_test, atol=SDP_TOL * np.max(np.abs(y)))


def test_nuclear_sensing_recovers_low_rank():
    # Default 10 x 10 rank-2 sensing: 90 Gaussian measurements of 36 degrees of
    # freedom.
    X, y = data = ds.low_rank_sensing((10, 10), 2, seed=0)
    W = ref.min_nuclear_norm_sensing((10, 10), X, y)
    M = data.truth
    np.testing.assert_allclose(W, M, atol=SDP_TOL * np.max(np.abs(M)))


def test_nuclear_sensing_below_recovery_is_still_optimal():
    # Too few measurements to recover M: the solution must still be feasible and
    # no larger in nuclear norm than M, which is itself feasible.
    X, y = data = ds.low_rank_sensing((6, 6), 2, n_measurements=10, seed=1)
    W = ref.min_nuclear_norm_sensing((6, 6), X, y)
    np.testing.assert_allclose(X @ W.ravel(), y, atol=SDP_TOL * np.max(np.abs(y)))
    nuc = lambda A: np.sum(np.linalg.svd(A, compute_uv=False))
    assert nuc(W) <= nuc(data.truth) * (1 + SDP_TOL)


def test_nuclear_errors():
    with pytest.raises(ValueError, match="different values"):
        ref.min_nuclear_norm_completion((2, 2), np.array([[0, 0], [0, 0]]), [1.0, 2.0])
    with pytest.raises(ValueError, match="out of range"):
        ref.min_nuclear_norm_completion((2, 2), np.array([[2, 0]]), [1.0])
    with pytest.raises(ValueError, match="integer index pairs"):
        ref.min_nuclear_norm_completion((2, 2), np.array([[0.5, 0.0]]), [1.0])
    with pytest.raises(ValueError, match="columns"):
        ref.min_nuclear_norm_sensing((2, 2), np.ones((3, 5)), np.ones(3))
    # Two identical measurement matrices with different values are inconsistent.
    X = np.vstack([np.eye(4)[0], np.eye(4)[0]])
    with pytest.raises(ValueError, match="inconsistent"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref.min_nuclear_norm_sensing((2, 2), X, np.array([1.0, 2.0]))
