"""Seeded synthetic data sets for the implicit-bias experiments (pure numpy, float64).

Every generator draws from `np.random.default_rng(seed)` only, so the same arguments
give bit-identical arrays on every platform and no JAX state is touched.
"""

from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri


class Dataset(tuple):
    """A data set that unpacks as `X, y = dataset` and carries its provenance.

    A `tuple` of length 2 so that the common case stays one line, with extra
    attributes for everything else.

    **Attributes:**

    - `X`: inputs, shape `(n, ...)` (float64, or int64 index pairs for completion).
    - `y`: targets, shape `(n,)`, float64 (labels are `±1.0`).
    - `truth`: the ground truth the data were generated from (a teacher vector or
        matrix), or `None`.
    - `info`: a dict of generator arguments and derived quantities.
    - `X_test`, `y_test`: a held-out split from the same distribution, or `None`
        when the generator made none.
    """

    truth: Any
    info: dict[str, Any]
    X_test: np.ndarray | None
    y_test: np.ndarray | None

    def __new__(
        cls,
        X: np.ndarray,
        y: np.ndarray,
        *,
        truth: Any = None,
        info: dict[str, Any] | None = None,
        X_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None,
    ) -> "Dataset":
        self = super().__new__(cls, (X, y))
        self.truth = truth
        self.info = {} if info is None else dict(info)
        self.X_test = X_test
        self.y_test = y_test
        return self

    # `tuple.__getnewargs__` would hand the whole pair to `__new__` as one
    # argument; pickling and copying need the two positional arguments instead
    # (the attributes then come back through `__dict__`).
    def __getnewargs__(self) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[override]
        return (self[0], self[1])

    @property
    def X(self) -> np.ndarray:
        return self[0]

    @property
    def y(self) -> np.ndarray:
        return self[1]

    def __repr__(self) -> str:
        test = "" if self.X_test is None else f", X_test={self.X_test.shape}"
        name = self.info.get("name", "Dataset")
        return f"Dataset[{name}](X={self.X.shape}, y={self.y.shape}{test})"


# --------------------------------------------------------------------------- checks


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def _nonnegative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")
    return int(value)


def _nonnegative_float(name: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number >= 0, got {value!r}.") from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    return value


def _seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    return int(seed)


def _shape(shape: Any) -> tuple[int, int]:
    try:
        m, n = shape
    except (TypeError, ValueError):
        raise ValueError(f"`shape` must be a pair (m, n), got {shape!r}.") from None
    return _positive_int("shape[0]", m), _positive_int("shape[1]", n)


def _rank(rank: Any, shape: tuple[int, int]) -> int:
    rank = _positive_int("rank", rank)
    if rank > min(shape):
        raise ValueError(
            f"`rank={rank}` exceeds min(shape) = {min(shape)} for shape {shape}; "
            "lower the rank or enlarge the matrix."
        )
    return rank


def _sign(z: np.ndarray) -> np.ndarray:
    # `np.sign(0) = 0` is not a label. Exact zeros have probability zero under
    # the continuous distributions below, but a label must be ±1 regardless.
    return np.where(z >= 0, 1.0, -1.0)


# ------------------------------------------------------------------ linear teachers


def separable_gaussian(
    n: int = 200, d: int = 50, *, seed: int = 0, margin: float = 0.0
) -> Dataset:
    r"""Gaussian inputs labelled by a random unit teacher through the origin.

    $x_i \sim \mathcal N(0, I_d)$, $y_i = \operatorname{sign}(x_i^\top w^*)$ with
    $\|w^*\|_2 = 1$: linearly separable without an intercept, the setting of
    Soudry et al. 2018 (gradient flow on the logistic loss tends to the hard-margin
    SVM direction).

    With `margin > 0`, points with $|x_i^\top w^*| < $ `margin` are resampled. Since
    $x^\top w^*$ is independent of the orthogonal part of $x$, this is done exactly
    (and in constant time, however large the margin) by redrawing only the
    component along $w^*$ from the Gaussian tail $|s| \ge$ `margin`; the result has
    the same distribution as rejection sampling.

    **Arguments:**

    - `n`: number of points.
    - `d`: dimension.
    - `seed`: seed for `np.random.default_rng`.
    - `margin`: minimal teacher margin $|x_i^\top w^*|$ (default `0`: plain
        Gaussian data).

    **Returns:**

    A [`Dataset`][] `(X, y)` with `X` of shape `(n, d)`, labels `±1.0`,
    `truth = w*` and `info["teacher_margin"]` $= \min_i y_i x_i^\top w^*$ (a lower
    bound on the max-margin of the data).
    """
    n = _positive_int("n", n)
    d = _positive_int("d", d)
    margin = _nonnegative_float("margin", margin)
    rng = np.random.default_rng(_seed(seed))
    w_star = rng.standard_normal(d)
    w_star /= np.linalg.norm(w_star)
    X = rng.standard_normal((n, d))
    proj = X @ w_star
    redraw = np.abs(proj) < margin
    if margin > 0 and np.any(redraw):
        k = int(redraw.sum())
        # Inverse-CDF of |N(0,1)| restricted to [margin, inf): |s| = -ndtri(u Φ(-margin)),
        # with u in (0, 1] so the quantile stays finite.
        u = 1.0 - rng.random(k)
        new = -ndtri(u * ndtr(-margin)) * rng.choice([-1.0, 1.0], size=k)
        # Guard against the last ulp of the quantile rounding below the margin.
        new = np.sign(new) * np.maximum(np.abs(new), margin)
        X[redraw] += np.outer(new - proj[redraw], w_star)
        proj = X @ w_star
    y = _sign(proj)
    info = {
        "name": "separable_gaussian",
        "n": n,
        "d": d,
        "seed": seed,
        "margin": margin,
        "teacher_margin": float(np.min(y * proj)),
    }
    return Dataset(X, y, truth=w_star, info=info)


def _sparse_teacher(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    # Magnitudes bounded away from zero so that the support is unambiguous for
    # tests of sparse recovery.
    w = np.zeros(d)
    support = np.sort(rng.choice(d, size=k, replace=False))
    w[support] = rng.choice([-1.0, 1.0], size=k) * rng.uniform(0.5, 1.5, size=k)
    return w


def _check_k(k: Any, d: int) -> int:
    k = _positive_int("k", k)
    if k > d:
        raise ValueError(f"Sparsity `k={k}` exceeds the dimension `d={d}`; use k <= d.")
    return k


def sparse_regression(
    n: int = 40, d: int = 100, *, k: int = 5, seed: int = 0, noise: float = 0.0
) -> Dataset:
    r"""Under-determined regression with a $k$-sparse teacher.

    $X_{ij} \sim \mathcal N(0, 1)$, $y = X w^* + \sigma\varepsilon$ with $w^*$ supported
    on $k$ random coordinates, entries $\pm U[0.5, 1.5]$. The setting of Woodworth
    et al. 2020 (diagonal networks interpolate towards the minimum-$\ell_1$ solution
    at small initialisation and the minimum-$\ell_2$ one at large).

    **Arguments:**

    - `n`: number of measurements.
    - `d`: dimension.
    - `k`: number of non-zeros of the teacher ($1 \le k \le d$).
    - `seed`: seed for `np.random.default_rng`.
    - `noise`: standard deviation $\sigma$ of additive Gaussian noise on `y`.

    **Returns:**

    A [`Dataset`][] `(X, y)`, `X` of shape `(n, d)`, with `truth = w*` and
    `info["support"]` the sorted indices of its non-zeros.
    """
    n = _positive_int("n", n)
    d = _positive_int("d", d)
    k = _check_k(k, d)
    noise = _nonnegative_float("noise", noise)
    rng = np.random.default_rng(_seed(seed))
    w_star = _sparse_teacher(rng, d, k)
    X = rng.standard_normal((n, d))
    y = X @ w_star
    if noise > 0:
        y = y + noise * rng.standard_normal(n)
    info = {
        "name": "sparse_regression",
        "n": n,
        "d": d,
        "k": k,
        "seed": seed,
        "noise": noise,
        "support": np.flatnonzero(w_star),
    }
    return Dataset(X, y, truth=w_star, info=info)


def sparse_teacher_classification(
    n: int = 40, d: int = 100, *, k: int = 3, seed: int = 0, n_test: int = 1000
) -> Dataset:
    r"""Binary classification by a $k$-sparse linear teacher through the origin.

    $X_{ij} \sim \mathcal N(0, 1)$, $y = \operatorname{sign}(X w^*)$, $w^*$ as in
    [`sparse_regression`][]. With $n < d$ the $\ell_2$ max-margin classifier
    generalises poorly while the $\ell_1$ one (the limit for deep diagonal networks)
    adapts to the sparsity.

    **Arguments:**

    - `n`: number of training points.
    - `d`: dimension.
    - `k`: number of non-zeros of the teacher.
    - `seed`: seed for `np.random.default_rng`.
    - `n_test`: size of the test split (`0` for none).

    **Returns:**

    A [`Dataset`][] `(X, y)` with labels `±1.0`, `truth = w*`, and `X_test`,
    `y_test` drawn from the same distribution.
    """
    n = _positive_int("n", n)
    d = _positive_int("d", d)
    k = _check_k(k, d)
    n_test = _nonnegative_int("n_test", n_test)
    rng = np.random.default_rng(_seed(seed))
    w_star = _sparse_teacher(rng, d, k)
    X = rng.standard_normal((n, d))
    y = _sign(X @ w_star)
    X_test = y_test = None
    if n_test > 0:
        X_test = rng.standard_normal((n_test, d))
        y_test = _sign(X_test @ w_star)
    info = {
        "name": "sparse_teacher_classification",
        "n": n,
        "d": d,
        "k": k,
        "seed": seed,
        "n_test": n_test,
        "support": np.flatnonzero(w_star),
    }
    return Dataset(X, y, truth=w_star, info=info, X_test=X_test, y_test=y_test)


# ---------------------------------------------------------------------- low rank


def _low_rank(
    rng: np.random.Generator, shape: tuple[int, int], rank: int
) -> np.ndarray:
    U = rng.standard_normal((shape[0], rank))
    V = rng.standard_normal((shape[1], rank))
    # Each entry is a sum of `rank` products of unit Gaussians: dividing by
    # sqrt(rank) makes its variance 1 whatever the rank.
    return U @ V.T / np.sqrt(rank)


def _degrees_of_freedom(shape: tuple[int, int], rank: int) -> int:
    return rank * (shape[0] + shape[1] - rank)


def low_rank_completion(
    shape: tuple[int, int] = (30, 30),
    rank: int = 2,
    *,
    n_observed: int | None = None,
    seed: int = 0,
    n_test: int | None = None,
) -> Dataset:
    r"""Matrix completion: observe random entries of a random low-rank matrix.

    $M = U V^\top / \sqrt r$ with Gaussian factors (entries of unit variance). The
    setting of Gunasekar et al. 2017 and Arora et al. 2019 (deep matrix
    factorisation at small initialisation completes $M$ with low rank, close to the
    minimum-nuclear-norm completion).

    **Arguments:**

    - `shape`: `(m, n)`.
    - `rank`: $1 \le r \le \min(m, n)$.
    - `n_observed`: number of entries observed, drawn uniformly without
        replacement. Default: a third of the entries, but at least four times the
        $r(m + n - r)$ degrees of freedom of a rank-$r$ matrix (capped at $mn$),
        so that the minimum-nuclear-norm completion recovers $M$: for $30\times 30$,
        rank 2 (default 464 entries) it does for 0/8 seeds at 300 entries, 6/8 at
        400 and 8/8 at 450. Fewer entries are the interesting regime for deep
        factorisations (Arora et al. 2019), which can beat the nuclear norm there.
    - `seed`: seed for `np.random.default_rng`.
    - `n_test`: number of unobserved entries in the test split, drawn at random
        (default: all of them).

    **Returns:**

    A [`Dataset`][] `(X, y)` with `X` the int64 index pairs `(i, j)` of shape
    `(n_observed, 2)` in row-major order, `y = M[i, j]`, `truth = M`, and
    `X_test`, `y_test` the same for unobserved entries (`None` if every entry is
    observed or `n_test=0`).
    """
    shape = _shape(shape)
    rank = _rank(rank, shape)
    total = shape[0] * shape[1]
    dof = _degrees_of_freedom(shape, rank)
    if n_observed is None:
        n_observed = min(total, max(round(total / 3), 4 * dof))
    n_observed = _positive_int("n_observed", n_observed)
    if n_observed > total:
        raise ValueError(
            f"`n_observed={n_observed}` exceeds the {total} entries of a {shape} "
            f"matrix; use n_observed <= {total}."
        )
    n_unobserved = total - n_observed
    if n_test is None:
        n_test = n_unobserved
    n_test = _nonnegative_int("n_test", n_test)
    if n_test > n_unobserved:
        raise ValueError(
            f"`n_test={n_test}` exceeds the {n_unobserved} unobserved entries; use "
            f"n_test <= {n_unobserved}, or n_test=None for all of them."
        )
    rng = np.random.default_rng(_seed(seed))
    M = _low_rank(rng, shape, rank)
    flat = rng.permutation(total)
    observed = np.sort(flat[:n_observed])
    X = np.stack(np.unravel_index(observed, shape), axis=1).astype(np.int64)
    y = M[X[:, 0], X[:, 1]]
    X_test = y_test = None
    if n_test > 0:
        held_out = np.sort(flat[n_observed : n_observed + n_test])
        X_test = np.stack(np.unravel_index(held_out, shape), axis=1).astype(np.int64)
        y_test = M[X_test[:, 0], X_test[:, 1]]
    info = {
        "name": "low_rank_completion",
        "shape": shape,
        "rank": rank,
        "n_observed": n_observed,
        "degrees_of_freedom": dof,
        "seed": seed,
    }
    return Dataset(X, y, truth=M, info=info, X_test=X_test, y_test=y_test)


def low_rank_sensing(
    shape: tuple[int, int] = (10, 10),
    rank: int = 2,
    *,
    n_measurements: int | None = None,
    seed: int = 0,
) -> Dataset:
    r"""Matrix sensing: Gaussian linear measurements $y_k = \langle A_k, M\rangle$ of a
    random low-rank matrix.

    $M$ as in [`low_rank_completion`][]; $A_k$ has i.i.d. $\mathcal N(0, 1)$ entries.
    The setting of Gunasekar et al. 2017.

    **Arguments:**

    - `shape`: `(m, n)`.
    - `rank`: $1 \le r \le \min(m, n)$.
    - `n_measurements`: number of measurements. Default: 2.5 times the
        $r(m + n - r)$ degrees of freedom (rounded up), capped at $mn$: for the
        default $10\times 10$, rank 2, 90 — under-determined, and enough for the
        minimum-nuclear-norm solution to recover $M$ (10/10 seeds for this and for
        rank 1 at $10\times10$, $12\times12$, $15\times10$; at twice the degrees
        of freedom rank 1 fails for 3-4 seeds in 10).
    - `seed`: seed for `np.random.default_rng`.

    **Returns:**

    A [`Dataset`][] `(X, y)` with `X` of shape `(n_measurements, m * n)`, row $k$
    the row-major flattening of $A_k$ (`A_k = X[k].reshape(shape)`), `y = X @
    M.ravel()` and `truth = M`.
    """
    shape = _shape(shape)
    rank = _rank(rank, shape)
    total = shape[0] * shape[1]
    dof = _degrees_of_freedom(shape, rank)
    if n_measurements is None:
        n_measurements = min(total, (5 * dof + 1) // 2)
    n_measurements = _positive_int("n_measurements", n_measurements)
    rng = np.random.default_rng(_seed(seed))
    M = _low_rank(rng, shape, rank)
    X = rng.standard_normal((n_measurements, total))
    y = X @ M.ravel()
    info = {
        "name": "low_rank_sensing",
        "shape": shape,
        "rank": rank,
        "n_measurements": n_measurements,
        "degrees_of_freedom": dof,
        "seed": seed,
    }
    return Dataset(X, y, truth=M, info=info)


# ------------------------------------------------------------------ 2-D nonlinear

_KINDS = ("clusters", "circles", "xor")
# Clusters: a 3x3 grid of centres on [-1, 1]^2 (spacing 1), standard deviation
# small enough (10 std between neighbouring centres) that clusters do not mix.
_GRID = 3
_CLUSTER_STD = 0.1
# XOR: a gap around both axes gives the classes a positive margin.
_XOR_GAP = 0.1
# Circles: radii and uniform radial jitter; the annuli stay 0.4 apart.
_RADII = (0.5, 1.0)
_RADIAL_JITTER = 0.05


def _draw_2d(
    rng: np.random.Generator, n: int, kind: str, cluster_labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if kind == "clusters":
        assert cluster_labels is not None
        centres = _grid_centres()
        which = rng.integers(len(centres), size=n)
        x = centres[which] + _CLUSTER_STD * rng.standard_normal((n, 2))
        return x, cluster_labels[which]
    if kind == "circles":
        y = rng.choice([-1.0, 1.0], size=n)
        # Label +1 on the inner circle, -1 on the outer one.
        radius = np.where(y > 0, _RADII[0], _RADII[1])
        radius = radius + rng.uniform(-_RADIAL_JITTER, _RADIAL_JITTER, size=n)
        angle = rng.uniform(0.0, 2 * np.pi, size=n)
        return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1), y
    # xor: |x_1|, |x_2| uniform on [gap, 1] with independent signs, i.e. uniform on
    # [-1, 1]^2 conditioned on staying `gap` away from both axes.
    x = rng.uniform(_XOR_GAP, 1.0, size=(n, 2)) * rng.choice([-1.0, 1.0], size=(n, 2))
    return x, _sign(x[:, 0] * x[:, 1])


def _grid_centres() -> np.ndarray:
    g = np.linspace(-1.0, 1.0, _GRID)
    return np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1).reshape(-1, 2)


def two_d_nonlinear(
    n: int = 100,
    *,
    kind: str = "clusters",
    seed: int = 0,
    spurious_dims: int = 0,
    bias: bool = True,
    n_test: int = 0,
) -> Dataset:
    r"""Two-dimensional nonlinear classification, optionally padded with noise
    dimensions and a bias coordinate.

    Kinds:

    - `"clusters"` (Chizat & Bach 2020): a $3\times 3$ grid of Gaussian clusters
        (centres on $[-1, 1]^2$, std 0.1), each with a random $\pm 1$ label (both
        labels always occur); points pick a cluster uniformly.
    - `"circles"`: label $+1$ on the circle of radius 0.5, $-1$ on radius 1, with
        uniform radial jitter $\pm 0.05$.
    - `"xor"`: uniform on $[-1, 1]^2$ away from the axes by 0.1, label
        $\operatorname{sign}(x_1 x_2)$.

    Then `spurious_dims` coordinates uniform on $[-1, 1]$ are appended (irrelevant
    to the label: two-layer networks trained in both layers ignore them, random
    features do not), and, with `bias=True`, a constant $1$ coordinate last, so
    that a homogeneous unit $(a^\top x)_+$ has an intercept.

    **Arguments:**

    - `n`: number of training points.
    - `kind`: `"clusters"`, `"circles"` or `"xor"`.
    - `seed`: seed for `np.random.default_rng`.
    - `spurious_dims`: number of irrelevant uniform coordinates.
    - `bias`: whether to append the constant coordinate.
    - `n_test`: size of a test split from the same distribution (same cluster
        labels); `0` for none.

    **Returns:**

    A [`Dataset`][] `(X, y)` with `X` of shape `(n, 2 + spurious_dims + bias)`,
    labels `±1.0`, `truth = None`; for clusters `info["centres"]` and
    `info["cluster_labels"]`.
    """
    n = _positive_int("n", n)
    if kind not in _KINDS:
        raise ValueError(f"Unknown `kind={kind!r}`; use one of {', '.join(_KINDS)}.")
    spurious_dims = _nonnegative_int("spurious_dims", spurious_dims)
    n_test = _nonnegative_int("n_test", n_test)
    bias = bool(bias)
    rng = np.random.default_rng(_seed(seed))
    info: dict[str, Any] = {
        "name": f"two_d_nonlinear/{kind}",
        "kind": kind,
        "n": n,
        "seed": seed,
        "spurious_dims": spurious_dims,
        "bias": bias,
        "n_test": n_test,
    }
    cluster_labels = None
    if kind == "clusters":
        # Redraw until both labels occur: a one-class problem is useless and, with
        # nine clusters, would otherwise happen for 2 seeds in 512.
        while True:
            cluster_labels = rng.choice([-1.0, 1.0], size=_GRID**2)
            if np.unique(cluster_labels).size == 2:
                break
        info["centres"] = _grid_centres()
        info["cluster_labels"] = cluster_labels
        info["cluster_std"] = _CLUSTER_STD

    def pad(x: np.ndarray) -> np.ndarray:
        cols = [x, rng.uniform(-1.0, 1.0, size=(len(x), spurious_dims))]
        if bias:
            cols.append(np.ones((len(x), 1)))
        return np.concatenate(cols, axis=1)

    x, y = _draw_2d(rng, n, kind, cluster_labels)
    X = pad(x)
    X_test = y_test = None
    if n_test > 0:
        x_test, y_test = _draw_2d(rng, n_test, kind, cluster_labels)
        X_test = pad(x_test)
    return Dataset(X, y, truth=None, info=info, X_test=X_test, y_test=y_test)
