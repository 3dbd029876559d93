"""Rodas5P and ROS34PW2: linearly implicit (Rosenbrock) solvers for stiff flows.

An implicit Runge–Kutta step (Kvaerno5) solves one nonlinear system per stage by
Newton's method, forming and factorising the p×p Jacobian in every iteration. A
Rosenbrock step forms the Jacobian once, factorises `I/(hγ) − J` once, and then
needs one triangular solve per stage — no iterations, no convergence test that can
fail. On the log-clock flows of this library (stiff, smooth, p up to a few
thousand) that is where the time of a stiff step goes: measured on the 200 × 50
logistic problem, a Kvaerno5 + Newton step costs ~0.6 ms, a Rodas5P step ~0.1 ms.

Formulation (Hairer & Wanner, *Solving ODEs II*, IV.7, with the substitution
`u_i = Σ_j γ_ij k_j` that removes the matrix-vector products):

    (I/(hγ) − J) u_i = f(t0 + α_i h, y0 + Σ_{j<i} a_ij u_j) + Σ_{j<i} (c_ij / h) u_j
                       + h γ_i ∂f/∂t(t0, y0)
    y1 = y0 + Σ_i m_i u_i,   error estimate y1 − ŷ1 = u_8 (ŷ1: the embedded solution)

with `J = ∂f/∂y(t0, y0)` (exact, by forward-mode autodiff) and the time derivative
from one JVP in `t`, so non-autonomous fields (the log clock's `e^s` factor) keep
the method's order. Coefficients: Steinebach (2023), "Construction of
Rosenbrock–Wanner method Rodas5P and numerical benchmarks within the Julia
Differential Equations package", BIT 63:27 — order 5, embedded order 4, L-stable,
stiffly accurate. Dense output is the cubic Hermite interpolant through `(y0, f0)`
and `(y1, f1)`, as for diffrax's implicit Runge–Kutta solvers.

ROS34PW2 (Rang & Angermann 2005, "New Rosenbrock W-methods of order 3 for partial
differential algebraic equations of index 1", BIT 45:761) is a W-method: its order
(3, embedded 2) holds with any matrix W in place of J, so it can use the
Gauss–Newton matrix of a least-squares flow and solve with it through the n×n
Gram system (Woodbury) instead of factorising a p×p Jacobian. Its coefficients are
published in the Γ-form (stage matrix Γ, couplings α, weights b, b̂) and turned
into the u-form above by `_u_form`.
"""

from typing import ClassVar, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jax.flatten_util import ravel_pytree


# Rodas5P (Steinebach 2023) in the `u`-form above. Row i of `_A` / `_C` holds the
# couplings of stage i to stages 0..i−1.
_GAMMA = 0.21193756319429014
_ALPHA = np.array([0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716,
                   0.4288403609558664, 1.0, 1.0, 1.0])
_GAMMA_T = np.array([_GAMMA, -0.42387512638858027, -0.3384627126235924,
                     1.8046452872882734, 2.325825639765069, 0.0, 0.0, 0.0])
_M = np.array([-7.502846399306121, 2.561846144803919, -11.627539656261098,
               -0.18268767659942256, 0.030198172008377946, 1.0, 1.0, 0.0])
_A = (
    (),
    (3.0,),
    (2.849394379747939, 0.45842242204463923),
    (-6.954028509809101, 2.489845061869568, -10.358996098473584),
    (2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641),
    tuple(_M[:5]),
    tuple(_M[:6]),
    tuple(_M[:7]),
)
_C = (
    (),
    (-14.155112264123755,),
    (-17.97296035885952, -2.859693295451294),
    (147.12150275711716, -1.41221402718213, 71.68940251302358),
    (165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306),
    (24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125,
     -0.6610691825249471),
    (30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783,
     -19.097331116725623, -28.087943162872662),
    (37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047,
     -40.06618937091002, -54.66780262877968, -9.48861652309627),
)
# y1 = y0 + Σ_j m_j u_j + u_8; the embedded (fourth-order) solution ŷ1 leaves out
# u_8, so u_8 is the error estimate. (Stage 8 is evaluated at ŷ1.)


class _Tableau(NamedTuple):
    """A Rosenbrock(-W) method in the u-form: stage i solves
    `(I/(hγ) − W) u_i = f(t0 + α_i h, y0 + Σ a_ij u_j) + Σ (c_ij/h) u_j + γ_i h ∂f/∂t`;
    `y1 = y0 + Σ m_j u_j`, error estimate `Σ e_j u_j`."""

    gamma: float
    alpha: np.ndarray
    gamma_t: np.ndarray
    a: tuple
    c: tuple
    m: np.ndarray
    e: np.ndarray


_RODAS5P = _Tableau(
    gamma=_GAMMA, alpha=_ALPHA, gamma_t=_GAMMA_T, a=_A, c=_C,
    m=np.concatenate([_M[:7], [1.0]]), e=np.concatenate([np.zeros(7), [-1.0]]),
)


def _u_form(gamma, alpha, Gamma, b, b_hat) -> _Tableau:
    """The u-form of a method given as in Hairer & Wanner (IV.7.4): stage couplings
    `alpha` (strictly lower), `Gamma` (lower, diagonal γ), weights `b`, embedded
    weights `b_hat`. With u = Γk: a = αΓ⁻¹, c = diag(1/γ) − Γ⁻¹, m = bᵀΓ⁻¹."""
    inv = np.linalg.inv(Gamma)
    clean = lambda x: np.where(np.abs(x) < 1e-14, 0.0, x)  # exact zeros skip work
    a = clean(alpha @ inv)
    c = clean(np.diag(1.0 / np.diag(Gamma)) - inv)
    m = clean(b @ inv)
    return _Tableau(
        gamma=gamma,
        alpha=clean(alpha.sum(axis=1)),
        gamma_t=clean(Gamma.sum(axis=1)),
        a=tuple(tuple(a[i, :i]) for i in range(len(b))),
        c=tuple(tuple(c[i, :i]) for i in range(len(b))),
        m=m,
        e=clean(m - b_hat @ inv),
    )


# ROS34PW2 (Rang & Angermann 2005, BIT 45:761): four stages, order 3 whatever the
# matrix W (a W-method), embedded order 2, L-stable, stiffly accurate.
_PW2_GAMMA = 0.435866521508459
_ROS34PW2 = _u_form(
    _PW2_GAMMA,
    alpha=np.array([
        [0.0, 0.0, 0.0, 0.0],
        [0.871733043016918, 0.0, 0.0, 0.0],
        [0.8445706001536942, -0.1129906423648419, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
    ]),
    Gamma=np.array([
        [0.0, 0.0, 0.0, 0.0],
        [-0.871733043016918, 0.0, 0.0, 0.0],
        [-0.9033805701304408, 0.05418067238809533, 0.0, 0.0],
        [0.2421238070609535, -1.223250583904515, 0.5452602553351021, 0.0],
    ]) + _PW2_GAMMA * np.eye(4),
    b=np.array([0.2421238070609535, -1.223250583904515, 1.545260255335102, 0.435866521508459]),
    b_hat=np.array([0.3781090314581937, -0.09604229221242318, 0.5, 0.2179332607542295]),
)


def _combine(coeffs, us):
    """`Σ_j coeffs_j · us_j` over the nonzero coefficients (static), or `None`."""
    out = None
    for c, u in zip(coeffs, us):
        if c != 0.0:
            out = c * u if out is None else out + c * u
    return out


class Rodas5P(diffrax.AbstractAdaptiveSolver):
    """Rodas5P (Steinebach 2023): a fifth-order, L-stable, stiffly accurate
    Rosenbrock–Wanner method with a fourth-order error estimate.

    One exact Jacobian (forward mode) and one LU factorisation per step, eight
    vector-field evaluations and eight triangular solves; no Newton iterations.
    Suited to stiff flows with up to a few thousand parameters (the Jacobian is
    dense, p×p). Works on any pytree state; internally the state is flattened.
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms):
        return 5

    def init(self, terms, t0, t1, y0, args):
        return None

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        return _rosenbrock_step(_RODAS5P, _dense_solver, terms, t0, t1, y0, args)


JACOBIANS = ("exact", "gauss-newton")


class Ros34PW2(diffrax.AbstractAdaptiveSolver):
    """ROS34PW2 (Rang & Angermann 2005): a third-order, L-stable, stiffly accurate
    Rosenbrock–W method with a second-order error estimate.

    A W-method keeps its order with any matrix W in place of the Jacobian; only its
    stability depends on how well W matches the stiff part. That lets a gradient
    flow of the squared loss use the Gauss–Newton matrix, exact at an interpolating
    minimum (zero residuals), through the n×n Gram (tangent-kernel) system:

    - `jacobian="exact"`: the exact Jacobian (forward mode) and one dense LU per step,
        as Rodas5P (which takes fewer, costlier steps).
    - `jacobian="gauss-newton"`: W = −e^s Jᵀ diag(ℓ''/n) J (J: the Jacobian of the
        training predictions; e^s only on the log clock), solved by the Woodbury
        identity: one Gram matrix and a Cholesky factorisation of an n×n system per
        step, one JVP and one VJP of the predictions per stage; never a p×p matrix.
        For `fs.GradientFlow` terms (`fs.solve` passes them); `n < p` is where it
        pays. On a depth-3 factorisation completing a 30 × 30 matrix from 464
        entries (p = 2 700) a step costs ~3 ms against ~360 ms for Rodas5P.

    Four vector-field evaluations and four linear solves per step. With
    `jacobian="gauss-newton"` it integrates forward in time only (t1 > t0):
    backwards the n×n system is indefinite and every step is rejected as singular.
    """

    jacobian: str = eqx.field(static=True, default="exact")

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    def __check_init__(self):
        if self.jacobian not in JACOBIANS:
            raise ValueError(f"`jacobian` must be one of {JACOBIANS}, got {self.jacobian!r}.")

    def order(self, terms):
        return 3

    def init(self, terms, t0, t1, y0, args):
        if self.jacobian == "gauss-newton" and not has_gauss_newton(terms):
            raise ValueError(
                "Ros34PW2(jacobian='gauss-newton') needs a gradient-flow term "
                "(fs.GradientFlow, in either clock) to form the Gauss–Newton matrix; "
                f"got {type(_unwrap(terms)).__name__}. Use jacobian='exact' for other terms."
            )
        return None

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        make = _dense_solver if self.jacobian == "exact" else _gauss_newton_solver
        return _rosenbrock_step(_ROS34PW2, make, terms, t0, t1, y0, args)


def has_gauss_newton(term) -> bool:
    """Whether `term` forms a Gauss–Newton system (`gauss_newton_system`)."""
    if _is_wrap(term):
        return has_gauss_newton(term.term)
    check = getattr(term, "has_gauss_newton", None)
    return bool(check()) if callable(check) else False


def _unwrap(term):
    """The term the user passed, inside diffeqsolve's time-direction wrapper."""
    return _unwrap(term.term) if _is_wrap(term) else term


def _is_wrap(term) -> bool:
    # diffeqsolve wraps the term it is given with the direction of time (diffrax's
    # `WrapTerm`, not exported).
    return type(term).__name__ == "WrapTerm" and isinstance(getattr(term, "term", None), diffrax.AbstractTerm)


def _gauss_newton_system(term, t, y, args):
    if _is_wrap(term):
        # Forward in time only: backwards, hγ < 0 and the Cholesky factorisation
        # below fails (the step is then rejected as singular).
        return _gauss_newton_system(term.term, t * term.direction, y, args)
    return term.gauss_newton_system(t, y, args)


def _gauss_newton_solver(terms, f, t0, flat0, unravel, args, c):
    """`(I/c + BᵀB)⁻¹` for W = −BᵀB, B = diag(√w) J from the term's Gauss–Newton
    system `(apply_B, apply_Bt, K = BBᵀ)`, by Woodbury:
    `(I/c + BᵀB)⁻¹ r = c (r − Bᵀ (I/c + K)⁻¹ B r)`."""
    apply_b, apply_bt, gram = _gauss_newton_system(terms, t0, unravel(flat0), args)
    dtype = flat0.dtype
    eye = jnp.eye(gram.shape[0], dtype=dtype)
    chol = jsl.cho_factor(eye / c + gram.astype(dtype))

    def solve(rhs):
        z = jsl.cho_solve(chol, apply_b(unravel(rhs)).astype(dtype))
        return c * (rhs - ravel_pytree(apply_bt(z))[0].astype(dtype))

    return solve


def _rosenbrock_step(tableau, make_solver, terms, t0, t1, y0, args):
    """One step of the Rosenbrock(-W) method `tableau` (u-form, module docstring):
    `make_solver(f, t0, flat0, unravel, c)` returns `u ↦ (I/c − W)⁻¹ u`, c = hγ,
    for the method's matrix W (the exact Jacobian, or an approximation for a
    W-method)."""
    flat0, unravel = ravel_pytree(y0)
    dtype = flat0.dtype
    # `h`: the step in the term's own time, which scales the state's increments;
    # `dt`: the step in the solver's time, at which the term is evaluated. They
    # differ in sign backwards in time (diffeqsolve with t1 < t0 wraps the term, so
    # the solver's time increases while h < 0); stage times, ∂f/∂t (taken in the
    # solver's time) and the end point go with `dt` (with h there, backward solves
    # of t-dependent fields were off by O(1)).
    h = jnp.asarray(terms.contr(t0, t1), dtype)
    t0 = jnp.asarray(t0, dtype)
    dt = jnp.asarray(t1, dtype) - t0

    def f(t, flat):
        return ravel_pytree(terms.vf(t, unravel(flat), args))[0].astype(dtype)

    # f(t0, y0) and ∂f/∂t in one JVP.
    f0, ft = jax.jvp(lambda t: f(t, flat0), (t0,), (jnp.ones_like(t0),))
    solve = make_solver(terms, f, t0, flat0, unravel, args, h * tableau.gamma)

    us = []
    for i in range(len(tableau.alpha)):
        if i == 0:
            vf = f0
        else:
            shift = _combine(tableau.a[i], us)
            vf = f(t0 + tableau.alpha[i] * dt, flat0 if shift is None else flat0 + shift)
        rhs = vf
        coupling = _combine(tableau.c[i], us)
        if coupling is not None:
            rhs = rhs + coupling / h
        if tableau.gamma_t[i] != 0.0:
            rhs = rhs + (tableau.gamma_t[i] * dt) * ft
        us.append(solve(rhs))

    flat1 = flat0 + _combine(tableau.m, us)
    err = _combine(tableau.e, us)
    f1 = f(jnp.asarray(t1, dtype), flat1)
    y1 = unravel(flat1)
    k = jax.vmap(unravel)(jnp.stack([h * f0, h * f1]))
    dense_info = dict(y0=y0, y1=y1, k=k)
    return y1, unravel(err), dense_info, None, _finite(flat1, err)


def _dense_solver(terms, f, t0, flat0, unravel, args, c):
    """`(I/c − J)⁻¹` with the exact Jacobian `J = ∂f/∂y(t0, y0)` (forward mode) and
    one LU factorisation."""
    jac = jax.jacfwd(lambda flat: f(t0, flat))(flat0)
    eye = jnp.eye(flat0.size, dtype=flat0.dtype)
    lu = jsl.lu_factor(eye / c - jac)
    return lambda rhs: jsl.lu_solve(lu, rhs)


def _finite(flat1, err):
    """`successful` unless the step produced non-finite values (a singular or
    overflowing linear system): the step-size controller then rejects it."""
    ok = jnp.all(jnp.isfinite(flat1)) & jnp.all(jnp.isfinite(err))
    return diffrax.RESULTS.where(ok, diffrax.RESULTS.successful, diffrax.RESULTS.singular)
