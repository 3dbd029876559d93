"""Rodas5P: a linearly implicit (Rosenbrock–Wanner) solver for stiff flows.

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
"""

from typing import ClassVar

import diffrax
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
_STAGES = len(_ALPHA)


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
        flat0, unravel = ravel_pytree(y0)
        dtype = flat0.dtype
        h = jnp.asarray(terms.contr(t0, t1), dtype)
        t0 = jnp.asarray(t0, dtype)

        def f(t, flat):
            return ravel_pytree(terms.vf(t, unravel(flat), args))[0].astype(dtype)

        # f(t0, y0) and ∂f/∂t in one JVP; the Jacobian ∂f/∂y by forward mode.
        f0, ft = jax.jvp(lambda t: f(t, flat0), (t0,), (jnp.ones_like(t0),))
        jac = jax.jacfwd(lambda flat: f(t0, flat))(flat0)
        eye = jnp.eye(flat0.size, dtype=dtype)
        lu = jsl.lu_factor(eye / (h * _GAMMA) - jac)

        us = []
        for i in range(_STAGES):
            if i == 0:
                vf = f0
            else:
                shift = _combine(_A[i], us)
                vf = f(t0 + _ALPHA[i] * h, flat0 if shift is None else flat0 + shift)
            rhs = vf
            coupling = _combine(_C[i], us)
            if coupling is not None:
                rhs = rhs + coupling / h
            if _GAMMA_T[i] != 0.0:
                rhs = rhs + (_GAMMA_T[i] * h) * ft
            us.append(jsl.lu_solve(lu, rhs))

        # Stage 8 is evaluated at (t1, ŷ1), ŷ1 = y0 + Σ_{j<8} m_j u_j the embedded
        # fourth-order solution; the fifth-order one adds the last stage.
        flat1 = flat0 + _combine(_M, us) + us[-1]
        f1 = f(t0 + h, flat1)
        y1 = unravel(flat1)
        y_error = unravel(-us[-1])
        k = jax.vmap(unravel)(jnp.stack([h * f0, h * f1]))
        dense_info = dict(y0=y0, y1=y1, k=k)
        return y1, y_error, dense_info, None, _finite(flat1, us[-1])


def _finite(flat1, err):
    """`successful` unless the step produced non-finite values (a singular or
    overflowing linear system): the step-size controller then rejects it."""
    ok = jnp.all(jnp.isfinite(flat1)) & jnp.all(jnp.isfinite(err))
    return diffrax.RESULTS.where(ok, diffrax.RESULTS.successful, diffrax.RESULTS.singular)
