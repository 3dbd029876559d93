"""Ground truths for implicit-bias limits, computed by convex optimisation (cvxpy +
Clarabel), independently of any flow. Numpy in, numpy out."""

import dataclasses
import warnings
from typing import Any

import cvxpy as cp
import numpy as np


# Clarabel's defaults stop at ~1e-8 relative gap/feasibility. Linear and quadratic
# programs reach 1e-10 in a few more iterations (and are then polished on their
# active set). Semidefinite ones (nuclear norm) usually stall and come back "almost
# solved" at ~1e-8, but the extra iterations matter where the optimum is flat: on a
# 2 x 2 completion whose objective grows quadratically away from the minimiser, the
# free entry ends 2e-5 off with the defaults, 2e-6 at 1e-10, 2e-8 at 1e-12 (for
# about 1.5x the iterations). Every solution is checked afterwards, so an
# "inaccurate" status is not by itself an error.
_TIGHT: dict[str, float] = {
    "tol_gap_abs": 1e-10,
    "tol_gap_rel": 1e-10,
    "tol_feas": 1e-10,
}
_TIGHTER: dict[str, float] = {
    "tol_gap_abs": 1e-12,
    "tol_gap_rel": 1e-12,
    "tol_feas": 1e-12,
}

# Relative constraint violation above which a returned solution is not trusted.
_FEAS_TOL = 1e-6


@dataclasses.dataclass(frozen=True, eq=False)
class MaxMargin:
    r"""The hard-margin (max-margin) linear classifier through the origin.

    **Attributes:**

    - `w`: $\hat w$, the minimum-norm vector with $y_i x_i^\top \hat w \ge 1$.
    - `direction`: $\hat w / \|\hat w\|$ in the chosen norm.
    - `margin`: $1 / \|\hat w\| = \max_{\|u\| = 1} \min_i y_i x_i^\top u$.
    - `support`: sorted indices $i$ with $y_i x_i^\top \hat w \le 1 + $ `support_tol`.
    - `dual`: the constraint multipliers $\alpha_i \ge 0$. For `norm=2`,
        $\hat w = \sum_i \alpha_i y_i x_i$ and $\sum_i \alpha_i = \|\hat w\|_2^2$ (these
        $\alpha_i$ also fix the $-\log\alpha_i$ offsets of Soudry et al. 2018). For
        `norm=1`, $\|\sum_i \alpha_i y_i x_i\|_\infty \le 1$ and
        $\sum_i \alpha_i = \|\hat w\|_1$ (LP duality).
    - `norm`: `1` or `2`.
    - `residual`: the largest violation of the optimality conditions found on the
        returned solution (primal feasibility, stationarity/dual feasibility,
        complementary slackness), relative to the scale of $\hat w$ and $\alpha$.
    """

    w: np.ndarray
    direction: np.ndarray
    margin: float
    support: np.ndarray
    dual: np.ndarray
    norm: int
    residual: float


# --------------------------------------------------------------------------- checks


def _as_float_matrix(name: str, X: Any) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D array (n, d), got shape {X.shape}.")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"`{name}` contains NaN or inf; clean the data first.")
    return X


def _as_targets(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(
            f"`y` must be a 1-D array with one entry per row of `X` ({n}), got shape "
            f"{y.shape}."
        )
    if not np.all(np.isfinite(y)):
        raise ValueError("`y` contains NaN or inf; clean the data first.")
    return y


def _check_labels(y: np.ndarray) -> None:
    if not np.all(np.abs(y) == 1.0):
        bad = np.unique(y[np.abs(y) != 1.0])[:5]
        raise ValueError(
            f"Labels must be exactly +1 or -1, found {bad.tolist()}; map {{0, 1}} "
            "labels with `y = 2 * y - 1`."
        )


def _check_norm(norm: Any) -> int:
    if isinstance(norm, bool) or norm not in (1, 2):
        raise ValueError(f"`norm` must be 1 or 2, got {norm!r}.")
    return int(norm)


def _check_shape(shape: Any) -> tuple[int, int]:
    message = f"`shape` must be a pair of positive integers (m, n), got {shape!r}."
    try:
        m, n = shape
    except (TypeError, ValueError):
        raise ValueError(message) from None
    for s in (m, n):
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(message)
    return int(m), int(n)


# --------------------------------------------------------------------------- solver


def _solve(problem: cp.Problem, options: dict[str, float] = _TIGHT) -> str:
    """Solve with Clarabel and return the cvxpy status; callers verify the solution
    themselves, so cvxpy's "may be inaccurate" warning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        try:
            problem.solve(solver=cp.CLARABEL, **options)
        except cp.SolverError as error:
            raise RuntimeError(
                f"Clarabel failed ({error}); the problem may be badly scaled: "
                "rescale X to entries of order one."
            ) from error
    return problem.status


def _check_status(status: str, infeasible_message: str) -> None:
    if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        raise ValueError(infeasible_message)
    if status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise RuntimeError(
            f"Clarabel returned status {status!r}; the problem may be badly scaled: "
            "rescale X to entries of order one."
        )


def _warn_if_inaccurate(
    residual: float, what: str, tol: float, stacklevel: int = 3
) -> None:
    if residual > tol:
        warnings.warn(
            f"{what}: the solution violates its optimality conditions by {residual:.1e} "
            f"(> {tol:.0e}); treat it as approximate.",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


# ---------------------------------------------------------------------- max margin

_NOT_SEPARABLE = (
    "The data are not linearly separable through the origin (the hard-margin "
    "problem `y_i x_i^T w >= 1` is infeasible). Check the labels; if the classes need "
    "an intercept, append a constant-1 column to X; otherwise use a nonlinear model."
)


def _kkt_residual_l2(Z: np.ndarray, w: np.ndarray, alpha: np.ndarray) -> float:
    slack = Z @ w - 1.0
    scale = max(1.0, float(np.max(np.abs(w))))
    return max(
        float(np.max(np.maximum(-slack, 0.0))),  # primal feasibility
        float(np.max(np.abs(w - Z.T @ alpha))) / scale,  # stationarity
        float(np.max(np.maximum(-alpha, 0.0))) / max(1.0, float(np.max(alpha))),
        float(np.max(np.abs(alpha * slack))) / max(1.0, float(np.max(alpha))),
    )


def _kkt_residual_l1(Z: np.ndarray, w: np.ndarray, alpha: np.ndarray) -> float:
    slack = Z @ w - 1.0
    a_scale = max(1.0, float(np.max(alpha)))
    return max(
        float(np.max(np.maximum(-slack, 0.0))),  # primal feasibility
        float(np.max(np.abs(Z.T @ alpha))) - 1.0,  # dual feasibility ‖Zᵀα‖∞ ≤ 1
        float(np.max(np.maximum(-alpha, 0.0))) / a_scale,
        # Zero duality gap, ‖w‖₁ = Σα, relative to the objective.
        abs(float(np.sum(np.abs(w)) - np.sum(alpha))) / max(1.0, float(np.sum(alpha))),
    )


def _polish_l2(Z: np.ndarray, w: np.ndarray, alpha: np.ndarray):
    """Re-solve the active set exactly: the optimum is the minimum-norm solution of
    `Z_S w = 1` over the support S, which interior-point iterates only approach."""
    active = np.flatnonzero(Z @ w - 1.0 <= 1e-6)
    if active.size == 0:
        return None
    Z_S = Z[active]
    # Least squares on Z_S directly rather than on the Gram matrix Z_S Z_Sᵀ, which
    # would square its condition number.
    w_new = np.linalg.lstsq(Z_S, np.ones(active.size), rcond=None)[0]
    alpha_S = np.linalg.lstsq(Z_S.T, w_new, rcond=None)[0]
    alpha_new = np.zeros_like(alpha)
    alpha_new[active] = alpha_S
    return w_new, alpha_new


def _polish_l1(A: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray | None:
    """Snap to the vertex: keep the non-zero coordinates J of `w` and solve the
    constraints that hold with equality, `A_J w_J = b`, exactly."""
    if not np.any(w):
        return None
    J = np.flatnonzero(np.abs(w) > 1e-8 * np.max(np.abs(w)))
    w_new = np.zeros_like(w)
    w_new[J] = np.linalg.lstsq(A[:, J], b, rcond=None)[0]
    return w_new


def max_margin(
    X: Any, y: Any, norm: int = 2, *, support_tol: float = 1e-6
) -> MaxMargin:
    r"""The hard-margin linear classifier through the origin (no intercept).

    Solves, with $z_i = y_i x_i$,

    - `norm=2`: the QP $\min \tfrac12\|w\|_2^2$ s.t. $z_i^\top w \ge 1$ — the limit
        direction of gradient flow on the logistic or exponential loss for a linear
        model on separable data (Soudry et al. 2018, "The implicit bias of gradient
        descent on separable data");
    - `norm=1`: the LP $\min \|w\|_1$ s.t. $z_i^\top w \ge 1$ — the limit direction
        for two-layer diagonal networks $w = u \odot v$ (Gunasekar et al. 2018,
        "Implicit bias of gradient descent on linear convolutional networks"; at
        depth $L$ the limit is a stationary point of the non-convex
        $\ell_{2/L}$ problem, which this LP does not solve). The ℓ1 solution need
        not be unique; then this is one of them.

    Clarabel runs with gap and feasibility tolerances 1e-10, then the active set is
    re-solved exactly by least squares and kept if it satisfies the optimality
    conditions better. The achieved accuracy is returned as `residual`: on Gaussian
    data of order one it is typically ~1e-14 for `norm=2` (and ~1e-10 if the
    polish is rejected); a `RuntimeWarning` is issued above 1e-7.

    Note that `sklearn.svm.SVC(kernel="linear")` fits a free intercept and solves
    a different problem.

    **Arguments:**

    - `X`: inputs, shape `(n, d)`.
    - `y`: labels in $\{-1, +1\}$, shape `(n,)`.
    - `norm`: `2` or `1`.
    - `support_tol`: a point is a support vector when $z_i^\top \hat w \le 1 +$
        `support_tol`.

    **Returns:**

    A [`MaxMargin`][] with `w`, `direction`, `margin`, `support`, `dual`, `norm` and
    `residual`.

    **Raises:**

    `ValueError` if the data are not separable through the origin, labels are not
    ±1, inputs contain NaN/inf or shapes do not match.
    """
    norm = _check_norm(norm)
    X = _as_float_matrix("X", X)
    y = _as_targets(y, X.shape[0])
    _check_labels(y)
    if X.shape[0] == 0:
        raise ValueError("`X` has no rows; the max-margin problem needs data.")
    # Solved for data scaled to max |z_ij| = 1 and mapped back: Clarabel's
    # tolerances are absolute, and for data of size c the objective is ~1/c², so
    # unscaled, c = 1e6 came back 3× off and c = 1e-6 as "not separable".
    # With z = s·z̃ the optimum is w = w̃/s, and the duals α = α̃/s² (ℓ2:
    # w = Zᵀα) or α̃/s (ℓ1: Σα = ‖w‖₁).
    Z_orig = y[:, None] * X
    s = float(np.max(np.abs(Z_orig)))
    if s == 0.0:  # all inputs zero
        raise ValueError(_NOT_SEPARABLE)
    Z = Z_orig / s
    w_var = cp.Variable(X.shape[1])
    constraint = Z @ w_var >= 1
    objective = 0.5 * cp.sum_squares(w_var) if norm == 2 else cp.norm1(w_var)
    problem = cp.Problem(cp.Minimize(objective), [constraint])
    _check_status(_solve(problem), _NOT_SEPARABLE)
    w = np.asarray(w_var.value, dtype=np.float64)
    alpha = np.maximum(np.asarray(constraint.dual_value, dtype=np.float64), 0.0)

    if norm == 2:
        residual = _kkt_residual_l2(Z, w, alpha)
        polished = _polish_l2(Z, w, alpha)
        if polished is not None:
            new_residual = _kkt_residual_l2(Z, *polished)
            if new_residual < residual:
                (w, alpha), residual = polished, new_residual
    else:
        residual = _kkt_residual_l1(Z, w, alpha)
        active = np.flatnonzero(Z @ w - 1.0 <= 1e-6)
        w_new = _polish_l1(Z[active], np.ones(active.size), w)
        if w_new is not None:
            # The matching dual vertex: stationarity on the support J of w,
            # (Z_Sᵀ α_S)_J = sign(w_J).
            J = np.flatnonzero(w_new)
            alpha_new = np.zeros_like(alpha)
            alpha_new[active] = np.linalg.lstsq(
                Z[np.ix_(active, J)].T, np.sign(w_new[J]), rcond=None
            )[0]
            for candidate in ((w_new, alpha_new), (w_new, alpha)):
                new_residual = _kkt_residual_l1(Z, *candidate)
                if new_residual < residual:
                    (w, alpha), residual = candidate, new_residual
    _warn_if_inaccurate(residual, "max_margin", 1e-7)

    w, alpha = w / s, alpha / (s * s if norm == 2 else s)
    w_norm = float(np.linalg.norm(w, ord=norm))
    margins = Z_orig @ w
    return MaxMargin(
        w=w,
        direction=w / w_norm,
        margin=1.0 / w_norm,
        support=np.flatnonzero(margins <= 1.0 + support_tol),
        dual=alpha,
        norm=norm,
        residual=residual,
    )


# ------------------------------------------------------------------- interpolation


def min_norm_interpolant(X: Any, y: Any, norm: int = 2) -> np.ndarray:
    r"""The minimum-norm solution of $X w = y$.

    - `norm=2`: $X^+ y$ (which is $X^\top (X X^\top)^{-1} y$ for full row rank),
        computed by SVD least squares in numpy, to machine precision — the limit of
        gradient flow on the squared loss from zero for a linear model, and the
        kernel-regime limit of diagonal networks (Woodworth et al. 2020).
    - `norm=1`: basis pursuit, the LP $\min\|w\|_1$ s.t. $Xw = y$, via Clarabel at
        tolerance 1e-10, then snapped to the vertex on its support by least squares
        when that is at least as good — the rich-regime limit of diagonal networks
        (Woodworth et al. 2020).

    **Arguments:**

    - `X`: shape `(n, d)`.
    - `y`: shape `(n,)`.
    - `norm`: `2` or `1`.

    **Returns:**

    `w`, shape `(d,)`.

    **Raises:**

    `ValueError` if no interpolant exists ($y$ not in the range of $X$), on NaN/inf
    or mismatched shapes.
    """
    norm = _check_norm(norm)
    X = _as_float_matrix("X", X)
    y = _as_targets(y, X.shape[0])
    inconsistent = (
        "No interpolant exists: `y` is not in the range of `X` (X w = y is "
        "inconsistent, e.g. more independent rows than columns, or duplicated inputs "
        "with different targets). Use a least-squares fit instead, or more features."
    )

    def residual_of(w: np.ndarray) -> float:
        scale = float(np.linalg.norm(X, ord=2) * np.linalg.norm(w) + np.linalg.norm(y))
        return float(np.linalg.norm(X @ w - y)) / max(scale, np.finfo(float).tiny)

    if norm == 2:
        w = np.linalg.lstsq(X, y, rcond=None)[0]
        # Relative residual well above the ~1e-15 of a consistent system but far
        # below that of an inconsistent one.
        if residual_of(w) > 1e-9:
            raise ValueError(inconsistent)
        return w

    # Solved for X and y scaled to max-abs 1 (Clarabel's tolerances are absolute;
    # unscaled, X·1e6 came back 1.5e-5 off): X = a·X̃, y = b·ỹ give w = (b/a)·w̃.
    a, b = float(np.max(np.abs(X), initial=0.0)), float(np.max(np.abs(y), initial=0.0))
    if b == 0.0:
        return np.zeros(X.shape[1])
    if a == 0.0:
        raise ValueError(inconsistent)
    w_var = cp.Variable(X.shape[1])
    problem = cp.Problem(cp.Minimize(cp.norm1(w_var)), [(X / a) @ w_var == y / b])
    _check_status(_solve(problem), inconsistent)
    w = np.asarray(w_var.value, dtype=np.float64) * (b / a)
    w_new = _polish_l1(X, y, w)
    if w_new is not None:
        l1, l1_new = np.sum(np.abs(w)), np.sum(np.abs(w_new))
        # Accept only if the vertex interpolates at least as well and is no worse in
        # ℓ1 beyond the solver's own tolerance.
        if residual_of(w_new) <= max(residual_of(w), 1e-13) and l1_new <= l1 * (
            1 + 1e-9
        ):
            w = w_new
    if residual_of(w) > _FEAS_TOL:
        raise ValueError(inconsistent)
    return w


# -------------------------------------------------------------------- nuclear norm


def _nuclear(shape: tuple[int, int], constrain: Any, inconsistent: str) -> np.ndarray:
    """`min ‖W‖_*` subject to `lhs == y`, with `(lhs, y) = constrain(W)`."""
    W = cp.Variable(shape)
    lhs, y = constrain(W)
    problem = cp.Problem(cp.Minimize(cp.normNuc(W)), [lhs == y])
    _check_status(_solve(problem, _TIGHTER), inconsistent)
    return np.asarray(W.value, dtype=np.float64)


def _check_feasible(
    residual: float, scale: float, inconsistent: str, what: str
) -> None:
    relative = residual / max(scale, np.finfo(float).tiny)
    if relative > _FEAS_TOL:
        raise ValueError(inconsistent)
    # Point the warning at the caller of the public function.
    _warn_if_inaccurate(relative, what, 1e-7, stacklevel=4)


def min_nuclear_norm_completion(shape: Any, X: Any, y: Any) -> np.ndarray:
    r"""The minimum-nuclear-norm matrix agreeing with the observed entries.

    $\min \|W\|_*$ s.t. $W_{i_k j_k} = y_k$, via cvxpy `normNuc` (an SDP) and
    Clarabel. The conjectured (Gunasekar et al. 2017, "Implicit regularization in
    matrix factorization") and approximately observed (Arora et al. 2019, "Implicit
    regularization in deep matrix factorization") limit of gradient flow on matrix
    factorisations from small initialisation.

    Accuracy: Clarabel is asked for 1e-12 but SDPs stall at ~1e-8 relative, so
    entries are typically within ~1e-7 of the exact minimiser and singular values
    that should vanish come out at ~1e-8 rather than 0. The constraints are
    checked afterwards (a `RuntimeWarning` above 1e-7 relative violation).

    **Arguments:**

    - `shape`: `(m, n)`.
    - `X`: integer index pairs `(i, j)`, shape `(k, 2)`, as from
        [`fs.datasets.low_rank_completion`][flowsolve.datasets.low_rank_completion].
    - `y`: observed values, shape `(k,)`.

    **Returns:**

    `W`, shape `(m, n)`.

    **Raises:**

    `ValueError` on indices out of range or not integers, mismatched shapes,
    NaN/inf, or the same entry observed with different values.
    """
    shape = _check_shape(shape)
    X_arr = np.asarray(X)
    if X_arr.ndim != 2 or X_arr.shape[1] != 2:
        raise ValueError(f"`X` must be index pairs of shape (k, 2), got {X_arr.shape}.")
    if not np.issubdtype(X_arr.dtype, np.integer):
        if not (np.all(np.isfinite(X_arr)) and np.all(X_arr == np.round(X_arr))):
            raise ValueError("`X` must hold integer index pairs (i, j).")
        X_arr = X_arr.astype(np.int64)
    rows, cols = X_arr[:, 0], X_arr[:, 1]
    if (
        np.any(rows < 0)
        or np.any(rows >= shape[0])
        or np.any(cols < 0)
        or np.any(cols >= shape[1])
    ):
        raise ValueError(
            f"Index pairs out of range for shape {shape}: rows must lie in "
            f"[0, {shape[0]}), columns in [0, {shape[1]})."
        )
    y = _as_targets(y, X_arr.shape[0])
    inconsistent = (
        "No matrix matches the observations: the same entry is observed with "
        "different values. Deduplicate X."
    )
    flat = rows * shape[1] + cols
    order = np.argsort(flat, kind="stable")
    same = flat[order][1:] == flat[order][:-1]
    if np.any(same & (y[order][1:] != y[order][:-1])):
        raise ValueError(inconsistent)
    W = _nuclear(shape, lambda W: (W[rows, cols], y), inconsistent)
    _check_feasible(
        float(np.max(np.abs(W[rows, cols] - y), initial=0.0)),
        max(1.0, float(np.max(np.abs(y), initial=0.0))),
        inconsistent,
        "min_nuclear_norm_completion",
    )
    return W


def min_nuclear_norm_sensing(shape: Any, X: Any, y: Any) -> np.ndarray:
    r"""The minimum-nuclear-norm matrix matching linear measurements.

    $\min \|W\|_*$ s.t. $\langle A_k, W\rangle = y_k$, via cvxpy `normNuc` (an SDP) and
    Clarabel: the matrix-sensing limit conjectured by Gunasekar et al. 2017
    ("Implicit regularization in matrix factorization") for gradient flow on
    $W = U U^\top$ / $U V^\top$ from small initialisation.

    Accuracy: as for [`min_nuclear_norm_completion`][], ~1e-8 relative, typically
    within ~1e-7 of the exact minimiser.

    **Arguments:**

    - `shape`: `(m, n)`.
    - `X`: measurement matrices flattened row-major, shape `(k, m * n)`
        (`A_k = X[k].reshape(shape)`), as from [`fs.datasets.low_rank_sensing`][flowsolve.datasets.low_rank_sensing].
    - `y`: measurements, shape `(k,)`.

    **Returns:**

    `W`, shape `(m, n)`.

    **Raises:**

    `ValueError` if the measurements are inconsistent, on NaN/inf or mismatched
    shapes.
    """
    shape = _check_shape(shape)
    X = _as_float_matrix("X", X)
    if X.shape[1] != shape[0] * shape[1]:
        raise ValueError(
            f"`X` must have m * n = {shape[0] * shape[1]} columns (flattened "
            f"measurement matrices of shape {shape}), got {X.shape[1]}."
        )
    y = _as_targets(y, X.shape[0])
    inconsistent = (
        "No matrix matches the measurements: the linear system <A_k, W> = y_k is "
        "inconsistent. Check that X and y come from the same data set."
    )
    # Row-major `vec` matches `A_k = X[k].reshape(shape)`.
    W = _nuclear(shape, lambda W: (X @ cp.vec(W, order="C"), y), inconsistent)
    residual = float(np.linalg.norm(X @ W.ravel() - y))
    scale = float(np.linalg.norm(X, ord=2) * np.linalg.norm(W) + np.linalg.norm(y))
    _check_feasible(residual, scale, inconsistent, "min_nuclear_norm_sensing")
    return W


# --------------------------------------------------------------- diagonal networks


@dataclasses.dataclass(frozen=True, eq=False)
class DiagonalBias:
    r"""The gradient-flow limit of a two-layer diagonal network on regression.

    **Attributes:**

    - `w`: $\hat w = \arg\min Q_k(w)$ s.t. $Xw = y$, shape `(d,)`.
    - `nu`: the dual variable $\nu$, shape `(n,)`, with
        $\hat w = \tfrac{k}{2}\sinh(2X^\top\nu)$ elementwise (the minimum-norm
        one where $X$ has dependent rows).
    - `k`: the per-coordinate scale $k$, shape `(d,)`.
    - `residual`: $\|X\hat w - y\|_2 / \|y\|_2$ (`0.0` when $y = 0$). Stationarity,
        $\nabla Q_k(\hat w) = \tfrac12\operatorname{arcsinh}(2\hat w/k) = X^\top\nu$, holds
        by construction, so this is the whole optimality gap.
    """

    w: np.ndarray
    nu: np.ndarray
    k: np.ndarray
    residual: float


def _check_scale(k: Any, shape: tuple[int, ...]) -> np.ndarray:
    k = np.asarray(k, dtype=np.float64)
    if k.shape not in ((), shape):
        raise ValueError(
            f"`k` must be a scalar or have the shape of `w` {shape}, got {k.shape}."
        )
    if not np.all(np.isfinite(k)) or np.any(k <= 0):
        raise ValueError(
            "`k` must be finite and > 0 (k = 0 is the zero initialisation, a saddle "
            "gradient flow never leaves); get it from `diagonal_scale`."
        )
    return np.broadcast_to(k, shape)


def _arcsinh_ratio(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    r"""$\operatorname{arcsinh}(2|x|/k)$ without overflow: past float range,
    $\operatorname{arcsinh}(z) = \log 2z + O(z^{-2})$ exactly in float64."""
    ax = np.abs(x)
    with np.errstate(over="ignore"):
        z = 2.0 * ax / k
    finite = np.isfinite(z)
    return np.where(
        finite,
        np.arcsinh(np.where(finite, z, 0.0)),
        np.log(np.where(finite, 1.0, ax)) + np.log(4.0) - np.log(k),
    )


def diagonal_regularizer(w: Any, k: Any) -> float:
    r"""The implicit regulariser of two-layer diagonal networks,
    $Q_k(w) = \sum_i q_{k_i}(w_i)$ with

    $$q_k(x) = \frac{k}{4}\Big(1 - \sqrt{1 + 4x^2/k^2}
        + \frac{2x}{k}\operatorname{arcsinh}\frac{2x}{k}\Big),$$

    the function whose minimum over $Xw = y$ is the gradient-flow limit from
    $w(0) = 0$ (Woodworth et al. 2020, "Kernel and rich regimes in overparametrized
    models"; Azulay et al. 2021, "On the implicit bias of initialization shape").
    $q_k'(x) = \tfrac12\operatorname{arcsinh}(2x/k)$, $q_k(x) = x^2/(2k) + O(x^4/k^3)$
    for $|x| \ll k$ (the ℓ2, kernel regime) and
    $q_k(x) = \tfrac{|x|}{2}(\log\tfrac{4|x|}{k} - 1) + \tfrac{k}{4} + O(k^2/|x|)$ for
    $|x| \gg k$ (ℓ1 up to a $\log(1/k)$ factor, the rich regime).

    Evaluated as $\tfrac{|x|}{2}\big(a - \tanh\tfrac a2\big)$ with
    $a = \operatorname{arcsinh}(2|x|/k)$ (the same function, since
    $\tanh\tfrac a2 = \sinh a / (1 + \cosh a)$): no $\sqrt{1 + z^2} - 1$
    cancellation for small $x/k$ and no overflow for large $x/k$, also where
    $2|x|/k$ itself overflows.

    **Arguments:**

    - `w`: the predictor, any shape.
    - `k`: $k > 0$, a scalar or an array of the shape of `w` (from
        [`diagonal_scale`][]).

    **Returns:**

    $Q_k(w)$, a float.

    **Raises:**

    `ValueError` on NaN/inf, $k \le 0$ or mismatched shapes.
    """
    w = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError("`w` contains NaN or inf.")
    k = _check_scale(k, w.shape)
    a = _arcsinh_ratio(w, k)
    return float(np.sum(0.5 * np.abs(w) * (a - np.tanh(0.5 * a))))


def diagonal_scale(
    init_scale: Any, layer_scales: Any = None, depth: int = 2
) -> float | np.ndarray:
    r"""The scale $k$ of [`diagonal_regularizer`][] for a two-layer
    `fs.models.DiagonalLinear(d, depth=2, init_scale=α, layer_scales=(λ1, λ2))`.

    The model predicts with $w = u_1 u_2 - v_1 v_2$ from
    $u_j(0) = v_j(0) = \alpha\lambda_j$. Along gradient flow each product
    $w_+ = u_1u_2$ obeys $\dot w_+ = -g\,(u_1^2 + u_2^2)$ with $u_1^2 - u_2^2$
    conserved, so $u_1^2 + u_2^2 = \sqrt{(u_1^2 - u_2^2)^2 + 4w_+^2}$ and
    $\tfrac12\operatorname{arcsinh}(2w_+/|u_1^2 - u_2^2|)$ moves by $-\int g$ (likewise
    for $v$, with the opposite sign). Subtracting, $w(t) = \tfrac k2\sinh(2X^\top\nu(t))$
    with

    $$k = 2\big(u_1(0)^2 + u_2(0)^2\big) = 2\alpha^2(\lambda_1^2 + \lambda_2^2)$$

    per coordinate — only this combination of the initialisation matters (Azulay et
    al. 2021, "On the implicit bias of initialization shape"; Woodworth et al. 2020
    for the balanced case, $k = 4\alpha^2$).

    **Arguments:**

    - `init_scale`: $\alpha \ge 0$, a scalar or shape `(d,)`.
    - `layer_scales`: $(\lambda_1, \lambda_2)$, shape `(2,)` or `(2, d)`; default
        `(1, 1)` (balanced).
    - `depth`: must be 2.

    **Returns:**

    $k$: a float for a scalar `init_scale` with per-layer `layer_scales`, otherwise
    an array of shape `(d,)`.

    **Raises:**

    `ValueError` for `depth != 2`, on NaN/inf, negative `init_scale`, mismatched
    shapes, or a coordinate with $k = 0$ (both layers start at zero there: that
    coordinate never moves, so drop it from `X`).
    """
    if isinstance(depth, bool) or depth != 2:
        raise ValueError(
            f"Only depth 2 is supported, got depth={depth!r}. For depth D >= 3 the "
            "regulariser is known only up to scaling (its derivative inverts "
            "h_D(z) = (1 - z)^(-D/(D-2)) - (1 + z)^(-D/(D-2)), Woodworth et al. 2020), "
            "so no reference is provided for deeper networks."
        )
    alpha = np.asarray(init_scale, dtype=np.float64)
    if alpha.ndim > 1:
        raise ValueError(
            f"`init_scale` must be a scalar or have shape (d,), got {alpha.shape}."
        )
    if not np.all(np.isfinite(alpha)) or np.any(alpha < 0):
        raise ValueError("`init_scale` must be finite and non-negative.")
    lam = np.ones(2) if layer_scales is None else np.asarray(layer_scales, np.float64)
    if lam.ndim not in (1, 2) or lam.shape[0] != 2:
        raise ValueError(
            f"`layer_scales` must have shape (2,) or (2, d), got {lam.shape}."
        )
    if not np.all(np.isfinite(lam)):
        raise ValueError("`layer_scales` contains NaN or inf.")
    if alpha.ndim == 1 and lam.ndim == 2 and alpha.shape[0] != lam.shape[1]:
        raise ValueError(
            f"`init_scale` has shape {alpha.shape} but `layer_scales` has shape "
            f"{lam.shape}; both must use the same d."
        )
    k = 2.0 * alpha**2 * (lam[0] ** 2 + lam[1] ** 2)
    if np.any(k <= 0):
        raise ValueError(
            "k = 0 on some coordinate: both layers start at zero there, so gradient "
            "flow never moves it. Drop those columns of X (or give them a non-zero "
            "`init_scale`)."
        )
    return float(k) if k.ndim == 0 else k


# Largest |a| at which k·cosh(2a) is evaluated directly; beyond it e^{-2|a|} is below
# float64 resolution and the exponentials are taken in the log domain with log k
# folded in, so a tiny k and a huge a never meet as an overflowing cosh times k.
_BIG_A = 300.0


def _dual_terms(a: np.ndarray, k: np.ndarray, log_k: np.ndarray):
    """(k/4)(cosh 2a - 1), w = (k/2) sinh 2a and k cosh 2a, elementwise, stably."""
    big = np.abs(a) >= _BIG_A
    s = np.where(big, 0.0, a)
    e = 2.0 * np.abs(np.where(big, a, 0.0)) + log_k
    with np.errstate(over="ignore"):
        # (k/4)(cosh 2a - 1) = (k/2) sinh² a has no cancellation at small a.
        f = np.where(big, np.exp(e - np.log(8.0)), 0.5 * k * np.sinh(s) ** 2)
        w = np.where(
            big, np.sign(a) * np.exp(e - np.log(4.0)), 0.5 * k * np.sinh(2 * s)
        )
        h = np.where(big, np.exp(e - np.log(2.0)), k * np.cosh(2 * s))
    return f, w, h


def diagonal_implicit_bias(
    X: Any, y: Any, k: Any, *, rtol: float = 1e-12, max_iter: int = 500
) -> DiagonalBias:
    r"""The gradient-flow limit of a two-layer diagonal network on squared-loss
    regression from $w(0) = 0$:

    $$\hat w = \arg\min_w Q_k(w)\quad\text{s.t.}\quad Xw = y,$$

    with $Q_k$ from [`diagonal_regularizer`][] and $k$ from [`diagonal_scale`][]
    (Woodworth et al. 2020, "Kernel and rich regimes in overparametrized models";
    Azulay et al. 2021, "On the implicit bias of initialization shape"). Large $k$
    gives the minimum-ℓ2 interpolant, small $k$ the minimum-ℓ1 one.

    Solved through the smooth, strictly convex dual

    $$\min_\nu \sum_j \frac{k_j}{4}\big(\cosh(2(X^\top\nu)_j) - 1\big) - \nu^\top y,
    \qquad \hat w_j = \frac{k_j}{2}\sinh(2(X^\top\nu)_j),$$

    by damped Newton in the coordinates $X^\top\nu = V\beta$ of the thin SVD
    $X = USV^\top$ (rank-revealing, so dependent rows of a consistent $X$ cost
    nothing), where the constraint reads $V^\top w = S^{-1}U^\top y$. Each step is
    capped at 2 in $\max_j |(X^\top\nu)_j|$ — the curvature $k\cosh(2X^\top\nu)$ then
    changes by at most $e^8$, which keeps the quadratic model honest — and
    backtracked until the dual decreases. Exponentials are taken in the log domain
    with $\log k$ folded in, so nothing overflows however small $k$ is: for small
    $k$ the dual variables on the support grow like $\tfrac12\log(1/k)$ and the
    iteration count like $\log_{10}(1/k)$ (measured on Gaussian $X$, $n \le 30$: 2
    at $k = 10^4$, 6 at 1, 12 at $10^{-6}$, 18 at $10^{-12}$, ~300 at $10^{-300}$,
    within the default `max_iter`), with no continuation needed. Iterations stop
    once $\|Xw - y\| \le$ `rtol`$\,\|y\|$ (or when the residual stops decreasing
    at rounding level); the primal residual is the only
    optimality gap, as stationarity holds by construction. On the problems of the
    test suite the residual reaches ~1e-15 for $k$ from $10^{4}$ down to
    $10^{-12}$, and $\hat w$ matches the limit of an actual gradient flow
    (Tsit5 at rtol 1e-10) to 1e-12 to 1e-10 relative.

    **Arguments:**

    - `X`: inputs, shape `(n, d)`.
    - `y`: targets, shape `(n,)`.
    - `k`: $k > 0$, a scalar or shape `(d,)`.
    - `rtol`: target relative residual $\|Xw - y\|/\|y\|$.
    - `max_iter`: the most Newton steps.

    **Returns:**

    A [`DiagonalBias`][] with `w`, `nu`, `k` and `residual`.

    **Raises:**

    `ValueError` if no interpolant exists ($y$ not in the range of $X$), on NaN/inf,
    mismatched shapes or $k \le 0$; `RuntimeError` if Newton does not reach a
    residual of 1e-8 (a `RuntimeWarning` above 1e-10).
    """
    X = _as_float_matrix("X", X)
    n, d = X.shape
    y = _as_targets(y, n)
    k = np.array(_check_scale(k, (d,)))
    rtol = float(rtol)
    if not rtol > 0:
        raise ValueError(f"`rtol` must be > 0, got {rtol}.")
    y_norm = float(np.linalg.norm(y))
    if y_norm == 0.0:
        return DiagonalBias(w=np.zeros(d), nu=np.zeros(n), k=k, residual=0.0)

    U, S, Vt = np.linalg.svd(X, full_matrices=False)
    # numpy's matrix_rank threshold.
    rank = int(np.sum(S > S[0] * max(n, d) * np.finfo(np.float64).eps))
    U, S, V = U[:, :rank], S[:rank], Vt[:rank].T
    b = (U.T @ y) / S
    # Least squares first: y must lie in range(X) (same test as
    # `min_norm_interpolant`, relative to ‖X‖‖w‖ + ‖y‖ of the least-squares w).
    lstsq_residual = float(np.linalg.norm(y - U @ (U.T @ y)))
    if lstsq_residual > 1e-9 * (S[0] * float(np.linalg.norm(b)) + y_norm):
        raise ValueError(
            "No interpolant exists: `y` is not in the range of `X` (X w = y is "
            "inconsistent, e.g. more independent rows than columns, or duplicated "
            "inputs with different targets). Gradient flow then converges to a "
            "least-squares fit, not an interpolant; use more features."
        )

    log_k = np.log(k)

    def evaluate(beta: np.ndarray):
        f, w, h = _dual_terms(V @ beta, k, log_k)
        return float(np.sum(f) - beta @ b), w, h

    def residual_of(w: np.ndarray) -> float:
        return float(np.linalg.norm(X @ w - y)) / y_norm

    beta = np.zeros(rank)
    F, w, h = evaluate(beta)
    residual = residual_of(w)
    for _ in range(max_iter):
        if residual <= rtol:
            break
        g = V.T @ w - b
        H = (V.T * h) @ V
        try:
            L = np.linalg.cholesky(H)
            step = -np.linalg.solve(L.T, np.linalg.solve(L, g))
        except np.linalg.LinAlgError:
            step = -np.linalg.lstsq(H, g, rcond=None)[0]
        slope = float(g @ step)
        da = float(np.max(np.abs(V @ step)))
        if not (np.isfinite(slope) and np.isfinite(da)) or da == 0.0:
            break
        g_norm = float(np.linalg.norm(g))
        t = min(1.0, 2.0 / da)
        # Stop at rounding level of the dual a = Vβ: 1e-14 absolute for |a| ≥ 1, and
        # relative below (at k ≥ 1e14 the dual is that small, and an absolute floor
        # stopped Newton at its first step).
        a_max = float(np.max(np.abs(V @ beta)))
        floor = 1e-14 * min(1.0, a_max if a_max > 0 else da)
        while t * da > floor:
            F_new, w_new, h_new = evaluate(beta + t * step)
            if np.isfinite(F_new) and (
                F_new <= F + 1e-4 * t * slope
                # Near the optimum the decrease of F falls below its rounding, so a
                # short step that shrinks the gradient is accepted too.
                or (t * da <= 0.5 and np.linalg.norm(V.T @ w_new - b) < g_norm)
            ):
                break
            t *= 0.5
        else:
            break  # no progress at rounding level
        beta = beta + t * step
        F, w, h = F_new, w_new, h_new
        residual = residual_of(w)

    if not residual <= 1e-8:
        raise RuntimeError(
            f"diagonal_implicit_bias: Newton stopped at relative residual "
            f"{residual:.1e}; the problem may be badly scaled: rescale X to entries "
            "of order one, or raise `max_iter`."
        )
    _warn_if_inaccurate(residual, "diagonal_implicit_bias", 1e-10)
    return DiagonalBias(w=w, nu=U @ (beta / S), k=k, residual=residual)
