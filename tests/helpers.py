import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np


EXPLICIT_SOLVERS = ("tsit5", "dopri5", "dopri8")
IMPLICIT_SOLVERS = ("kvaerno5",)
CLOCKS = ("linear", "log")


def tree_allclose(x, y, *, rtol=1e-8, atol=1e-10) -> bool:
    lx, tx = jtu.tree_flatten(x)
    ly, ty = jtu.tree_flatten(y)
    if tx != ty:
        return False
    return all(np.allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol) for a, b in zip(lx, ly))


def tree_max_abs_diff(x, y) -> float:
    return max(float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b)))) for a, b in zip(jtu.tree_leaves(x), jtu.tree_leaves(y)))


def separable_data(n=200, d=50, seed=0):
    """Gaussian data labelled by a random teacher through the origin (separable)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    X = rng.normal(size=(n, d))
    return X, np.sign(X @ w)


def svm_margin(X, y):
    """Hard-margin SVM (no intercept) margin, solved here with cvxpy + Clarabel,
    independently of flowsolve."""
    import cvxpy as cp

    Z = y[:, None] * X
    w = cp.Variable(X.shape[1])
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(w)), [Z @ w >= 1]).solve(solver=cp.CLARABEL)
    return 1.0 / np.linalg.norm(w.value), w.value
