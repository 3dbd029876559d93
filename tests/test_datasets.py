import copy
import pickle

import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import flowsolve as fs


ds = fs.datasets

# One call per generator, with arguments small enough to be quick.
GENERATORS = {
    "separable_gaussian": lambda seed: ds.separable_gaussian(50, 10, seed=seed),
    "separable_gaussian_margin": lambda seed: ds.separable_gaussian(
        50, 10, seed=seed, margin=0.5
    ),
    "sparse_regression": lambda seed: ds.sparse_regression(20, 30, k=3, seed=seed),
    "sparse_teacher_classification": lambda seed: ds.sparse_teacher_classification(
        20, 30, k=3, seed=seed, n_test=50
    ),
    "low_rank_completion": lambda seed: ds.low_rank_completion((16, 12), 1, seed=seed),
    "low_rank_sensing": lambda seed: ds.low_rank_sensing((5, 4), 2, seed=seed),
    "clusters": lambda seed: ds.two_d_nonlinear(40, seed=seed, n_test=10),
    "circles": lambda seed: ds.two_d_nonlinear(40, kind="circles", seed=seed),
    "xor": lambda seed: ds.two_d_nonlinear(40, kind="xor", seed=seed, spurious_dims=3),
}


def _arrays(d: fs.datasets.Dataset) -> list[np.ndarray]:
    out = [d.X, d.y]
    if d.X_test is not None:
        out += [d.X_test, d.y_test]
    if isinstance(d.truth, np.ndarray):
        out.append(d.truth)
    return out


@pytest.mark.parametrize("name", list(GENERATORS))
def test_determinism_by_seed(name):
    make = GENERATORS[name]
    a, b, c = make(0), make(0), make(1)
    for u, v in zip(_arrays(a), _arrays(b), strict=True):
        np.testing.assert_array_equal(u, v)
    # A different seed gives different inputs (shapes may match, contents not).
    assert not np.array_equal(a.X, c.X)


@pytest.mark.parametrize("name", list(GENERATORS))
def test_dataset_is_a_pair(name):
    d = GENERATORS[name](0)
    assert isinstance(d, tuple) and len(d) == 2
    X, y = d
    assert X is d.X and y is d.y
    assert X.shape[0] == y.shape[0] and y.ndim == 1
    assert y.dtype == np.float64
    if name == "low_rank_completion":
        assert X.dtype == np.int64
    else:
        assert X.dtype == np.float64
    assert isinstance(d.info, dict)
    # Pickling and copying keep the pair and its attributes.
    for e in (pickle.loads(pickle.dumps(d)), copy.deepcopy(d)):
        assert type(e) is type(d)
        np.testing.assert_array_equal(e.X, d.X)
        np.testing.assert_array_equal(e.y, d.y)
        assert e.info.keys() == d.info.keys()
        assert (e.X_test is None) == (d.X_test is None)


# --------------------------------------------------------------- separable_gaussian


def test_separable_gaussian_is_separable_through_origin():
    X, y = d = ds.separable_gaussian(200, 20, seed=3)
    assert set(np.unique(y)) == {-1.0, 1.0}
    w_star = d.truth
    np.testing.assert_allclose(np.linalg.norm(w_star), 1.0, rtol=1e-14)
    # The teacher itself separates the data...
    assert np.all(y * (X @ w_star) > 0)
    # ...and, independently of the teacher, an LP finds w with y_i x_i^T w >= 1.
    Z = y[:, None] * X
    lp = scipy.optimize.linprog(
        np.zeros(20), A_ub=-Z, b_ub=-np.ones(200), bounds=(None, None), method="highs"
    )
    assert lp.status == 0


def test_separable_gaussian_margin():
    margin = 1.0
    X, y = d = ds.separable_gaussian(4000, 5, seed=0, margin=margin)
    s = X @ d.truth
    assert np.all(np.abs(s) >= margin)
    np.testing.assert_array_equal(y, np.sign(s))
    # |x^T w*| must follow the Gaussian tail beyond the margin. Its mean under
    # scipy's truncated normal is 1.525 and its std 0.446, so the standard error
    # over 4000 points is 0.007: 0.03 is a > 4-sigma tolerance.
    expected = scipy.stats.truncnorm(margin, np.inf).mean()
    assert abs(np.mean(np.abs(s)) - expected) < 0.03
    # The orthogonal part is untouched standard Gaussian: per-coordinate variance
    # within 4 standard errors (sqrt(2/4000) = 0.022) of the projector's trace share.
    P = np.eye(5) - np.outer(d.truth, d.truth)
    cov = np.cov((X @ P).T)
    np.testing.assert_allclose(cov, P, atol=0.09)
    # Huge margins are exact too, with no rejection loop.
    X, y = d = ds.separable_gaussian(10, 3, seed=0, margin=8.0)
    assert np.min(np.abs(X @ d.truth)) >= 8.0


# --------------------------------------------------------------------- sparse


def test_sparse_regression():
    X, y = d = ds.sparse_regression(30, 50, k=4, seed=1)
    assert X.shape == (30, 50)
    assert np.count_nonzero(d.truth) == 4
    np.testing.assert_array_equal(d.info["support"], np.flatnonzero(d.truth))
    assert np.min(np.abs(d.truth[d.truth != 0])) >= 0.5
    np.testing.assert_allclose(y, X @ d.truth, rtol=1e-14, atol=1e-14)
    # With noise, the residual has the requested standard deviation (2000 samples:
    # relative standard error ~1.6%, tolerance 10%).
    X, y = d = ds.sparse_regression(2000, 10, k=2, seed=1, noise=0.3)
    assert abs(np.std(y - X @ d.truth) / 0.3 - 1) < 0.1


def test_sparse_teacher_classification():
    X, y = d = ds.sparse_teacher_classification(25, 40, k=3, seed=2, n_test=100)
    assert np.count_nonzero(d.truth) == 3
    np.testing.assert_array_equal(y, np.sign(X @ d.truth))
    assert d.X_test.shape == (100, 40)
    np.testing.assert_array_equal(d.y_test, np.sign(d.X_test @ d.truth))
    assert ds.sparse_teacher_classification(5, 10, n_test=0).X_test is None


# ------------------------------------------------------------------- low rank


def _numerical_rank(M: np.ndarray) -> int:
    s = np.linalg.svd(M, compute_uv=False)
    # Rank-r products of O(1) factors: the (r+1)-th singular value is roundoff
    # (~1e-15 relative), the r-th is O(1); 1e-10 separates them safely.
    return int(np.sum(s > 1e-10 * s[0]))


@pytest.mark.parametrize("rank", [1, 2])
def test_low_rank_completion(rank):
    shape = (20, 15)
    X, y = d = ds.low_rank_completion(shape, rank, seed=4)
    M = d.truth
    assert M.shape == shape and _numerical_rank(M) == rank
    # Entries are O(1) by construction (unit variance).
    assert 0.3 < np.std(M) < 3
    np.testing.assert_array_equal(y, M[X[:, 0], X[:, 1]])
    np.testing.assert_array_equal(d.y_test, M[d.X_test[:, 0], d.X_test[:, 1]])
    # Train and test are disjoint, without duplicates, and cover every entry.
    flat = np.ravel_multi_index(X.T, shape)
    flat_test = np.ravel_multi_index(d.X_test.T, shape)
    assert len(np.unique(flat)) == len(flat)
    assert np.intersect1d(flat, flat_test).size == 0
    assert np.union1d(flat, flat_test).size == shape[0] * shape[1]
    # Default: a third of the entries, or four times the degrees of freedom if
    # more, at most all entries.
    dof = rank * (sum(shape) - rank)
    assert len(y) == min(300, max(100, 4 * dof))


def test_low_rank_completion_sizes():
    d = ds.low_rank_completion((6, 5), 1, n_observed=10, n_test=7, seed=0)
    assert d.X.shape == (10, 2) and d.X_test.shape == (7, 2)
    d = ds.low_rank_completion((6, 5), 1, n_observed=30)
    assert d.X_test is None


def test_low_rank_sensing():
    shape = (6, 5)
    X, y = d = ds.low_rank_sensing(shape, 2, n_measurements=17, seed=5)
    M = d.truth
    assert X.shape == (17, 30) and _numerical_rank(M) == 2
    expected = np.array([np.sum(row.reshape(shape) * M) for row in X])
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    # Default: 2.5 times the 12 + 10 - 1 = 21 degrees of freedom, rounded up
    # (under the 120 entries), capped at the number of entries.
    assert ds.low_rank_sensing((12, 10), 1).X.shape == (53, 120)
    assert ds.low_rank_sensing(shape, 2).X.shape == (30, 30)


# ------------------------------------------------------------------ 2-D nonlinear


@pytest.mark.parametrize("kind", ["clusters", "circles", "xor"])
@pytest.mark.parametrize("spurious_dims", [0, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_two_d_layout(kind, spurious_dims, bias):
    X, y = d = ds.two_d_nonlinear(
        60, kind=kind, seed=0, spurious_dims=spurious_dims, bias=bias, n_test=20
    )
    width = 2 + spurious_dims + int(bias)
    assert X.shape == (60, width) and d.X_test.shape == (20, width)
    assert set(np.unique(y)) == {-1.0, 1.0}
    for Xs in (X, d.X_test):
        if bias:
            np.testing.assert_array_equal(Xs[:, -1], 1.0)
        spurious = Xs[:, 2 : 2 + spurious_dims]
        assert np.all(np.abs(spurious) <= 1.0)


def test_two_d_clusters_labels():
    X, y = d = ds.two_d_nonlinear(300, seed=1, n_test=300, spurious_dims=2)
    centres, labels = d.info["centres"], d.info["cluster_labels"]
    assert centres.shape == (9, 2) and set(labels) == {-1.0, 1.0}
    np.testing.assert_array_equal(np.unique(centres), [-1.0, 0.0, 1.0])
    # Every point (train and test) carries the label of its nearest centre:
    # std 0.1 against centres 1 apart.
    for Xs, ys in ((X, y), (d.X_test, d.y_test)):
        nearest = np.argmin(
            np.linalg.norm(Xs[:, None, :2] - centres[None], axis=-1), axis=1
        )
        np.testing.assert_array_equal(ys, labels[nearest])


def test_two_d_circles_and_xor():
    X, y = ds.two_d_nonlinear(200, kind="circles", seed=2, bias=False)
    r = np.linalg.norm(X, axis=1)
    assert np.all(np.abs(r[y > 0] - 0.5) <= 0.05)
    assert np.all(np.abs(r[y < 0] - 1.0) <= 0.05)
    X, y = ds.two_d_nonlinear(200, kind="xor", seed=2, bias=False)
    np.testing.assert_array_equal(y, np.sign(X[:, 0] * X[:, 1]))
    assert np.all(np.abs(X) >= 0.1) and np.all(np.abs(X) <= 1.0)


# -------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ds.sparse_regression(10, 5, k=6), "k <= d"),
        (lambda: ds.sparse_teacher_classification(10, 5, k=0), "positive integer"),
        (lambda: ds.separable_gaussian(10, 5, margin=-1.0), ">= 0"),
        (lambda: ds.separable_gaussian(0, 5), "positive integer"),
        (lambda: ds.separable_gaussian(10, 5, seed=-1), "seed"),
        (lambda: ds.low_rank_completion((4, 4), 5), "lower the rank"),
        (lambda: ds.low_rank_completion((4, 4), 1, n_observed=17), "n_observed <= 16"),
        (lambda: ds.low_rank_completion((4, 4), 1, n_observed=10, n_test=7), "n_test"),
        (lambda: ds.low_rank_completion((4, 4, 4), 1), "pair"),
        (lambda: ds.low_rank_sensing((3, 2), 3), "lower the rank"),
        (lambda: ds.two_d_nonlinear(10, kind="moons"), "clusters, circles, xor"),
        (lambda: ds.two_d_nonlinear(10, spurious_dims=-1), "non-negative"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
