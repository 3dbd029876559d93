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
    Z = y[:, None] * X
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

    w_norm = float(np.linalg.norm(w, ord=norm))
    margins = Z @ w
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

    w_var = cp.Variable(X.shape[1])
    problem = cp.Problem(cp.Minimize(cp.norm1(w_var)), [X @ w_var == y])
    _check_status(_solve(problem), inconsistent)
    w = np.asarray(w_var.value, dtype=np.float64)
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
        [`low_rank_completion`][].
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
        (`A_k = X[k].reshape(shape)`), as from [`low_rank_sensing`][].
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
