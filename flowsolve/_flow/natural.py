import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, PyTree

from .._problem import Problem
from .base import AbstractFlow


SOLVE_METHODS = ("auto", "gram", "dense", "cg")
FISHERS = ("gauss-newton", "empirical")

#: Memory the "auto" rule lets an explicit n×p Jacobian (gram) or p×p Fisher (dense)
#: take, in bytes. Above it "auto" goes matrix-free (cg).
AUTO_MEMORY_BUDGET = 2 * 1024**3
#: The dense path refuses a p×p Fisher larger than this many bytes.
DENSE_MEMORY_LIMIT = 8 * 1024**3


class _Weights(eqx.Module):
    """Per-sample curvature weights and loss derivatives, all in the log domain.

    With c = max_i h_i: `h_tilde = h / c` and `g_tilde = ℓ' / c` (both ≤ O(1), no
    underflow of the leading samples), `ratio = ℓ'/h` (the function-space Newton
    step, O(1) at any margin), `sqrt_h_tilde` = √h̃ and `g_over_sqrt_h` = g̃/√h̃
    for the damped form, and `log_c` to rescale the damping.
    """

    h_tilde: Array
    g_tilde: Array
    ratio: Array
    sqrt_h_tilde: Array
    g_over_sqrt_h: Array
    log_c: Array


def _weights(problem: Problem, f: Array, fisher: str) -> _Weights:
    loss, y = problem.loss, problem.y
    log_g, sign_g = loss.log_abs_derivative(f, y)
    if fisher == "gauss-newton":
        log_h = loss.log_curvature(f, y)
        ratio = loss.newton_ratio(f, y)
    else:  # empirical Fisher: weights ℓ'², so ℓ'/h = 1/ℓ'
        log_h = 2.0 * log_g
        ratio = sign_g * jnp.exp(-log_g)
    log_c = jnp.max(log_h)
    return _Weights(
        h_tilde=jnp.exp(log_h - log_c),
        g_tilde=sign_g * jnp.exp(log_g - log_c),
        ratio=ratio,
        sqrt_h_tilde=jnp.exp(0.5 * (log_h - log_c)),
        g_over_sqrt_h=sign_g * jnp.exp(log_g - 0.5 * log_h - 0.5 * log_c),
        log_c=log_c,
    )


def _damped_scales(mu, log_c, log_scale):
    """For the damped systems, whose unscaled solution (cA + μI)⁻¹ c b̃ has the
    size κ = c/μ, tiny at large margins (it underflowed past margin ≈ 745, and
    e^{log_scale} overflowed past log t = 709.78, where the product is O(1)):
    `(m_a, m_i, factor)` with e^{log_scale} (A + I/κ)⁻¹ b̃ = factor · (m_a A + m_i I)⁻¹ b̃,
    m_a = min(κ, 1), m_i = min(1/κ, 1) (no overflow either way) and
    factor = e^{log min(κ, 1) + log_scale}, all formed from logs."""
    log_kappa = log_c - jnp.log(jnp.where(mu > 0, mu, 1.0))
    low = jnp.minimum(log_kappa, 0.0)
    return jnp.exp(low), jnp.exp(jnp.minimum(-log_kappa, 0.0)), jnp.exp(low + log_scale)


def _pinv_spectrum(A: Array, rcond: float):
    lam, U = jnp.linalg.eigh(A)
    keep = lam > rcond * jnp.max(lam)
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    return lam, U, keep, inv


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _psd_pinv_apply(A: Array, b: Array, rcond: float) -> Array:
    """`A⁺ b` for a symmetric PSD `A`, by eigendecomposition with a relative cutoff.

    Differentiated as the spectral function it is (`A⁺ = U f(Λ) Uᵀ`, f(λ) = 1/λ
    on the kept eigenvalues, 0 on the cut ones), not through `eigh`'s eigenvector
    derivative: that has 1/(λᵢ − λⱼ) factors and is NaN where eigenvalues repeat,
    as the zero ones of a rank-deficient Fisher do (frozen parameters, p > rank).
    The Jacobians of the implicit solvers were NaN there, and their solves failed.
    """
    _, U, _, inv = _pinv_spectrum(A, rcond)
    return U @ (inv * (U.T @ b))


@_psd_pinv_apply.defjvp
def _psd_pinv_apply_jvp(rcond, primals, tangents):
    A, b = primals
    dA, db = tangents
    lam, U, keep, inv = _pinv_spectrum(A, rcond)
    c = U.T @ b
    # d(U f(Λ) Uᵀ) = U (Γ ∘ Uᵀ dA U) Uᵀ with Γ the divided differences of f,
    # (f(λᵢ) − f(λⱼ))/(λᵢ − λⱼ): −1/(λᵢλⱼ) between kept eigenvalues (no division
    # by their difference, so repeated ones are exact), 0 between cut ones, and
    # the quotient itself across the cutoff (where λᵢ − λⱼ is bounded below). The
    # rank is held fixed, as the cutoff is.
    both = keep[:, None] & keep[None, :]
    across = keep[:, None] != keep[None, :]
    diff = jnp.where(across, lam[:, None] - lam[None, :], 1.0)
    gamma = jnp.where(
        both,
        -inv[:, None] * inv[None, :],
        jnp.where(across, (inv[:, None] - inv[None, :]) / diff, 0.0),
    )
    dA = 0.5 * (dA + dA.T)  # the symmetric part: what eigh reads
    S = U.T @ (dA @ U)
    out = U @ (inv * c)
    d_out = U @ ((gamma * S) @ c + inv * (U.T @ db))
    return out, d_out


def _gram_direction(G, jt, w: _Weights, mu, rcond, log_scale):
    """Natural-gradient direction from the n×n Gram (NTK) matrix G = J Jᵀ.

    Undamped, J of full row rank: v = −Jᵀ G⁻¹ (ℓ'/h). Rank-deficient: with
    G = U Λ Uᵀ restricted to its range U_r, v = −Jᵀ U_r Λ_r⁻¹ (U_rᵀ H̃ U_r)⁻¹ U_rᵀ g̃,
    the exact pseudo-inverse (JᵀHJ)⁺Jᵀg. Damped (μ = nλ > 0):
    v = −Jᵀ H^{1/2} (H^{1/2} G H^{1/2} + μI)⁻¹ H^{−1/2} g, formed with H̃ = H/c and
    the time scale fused in the log domain (`_damped_scales`). `jt(a)` applies Jᵀ.
    Returns e^{log_scale}·v.
    """

    def undamped(_):
        lam, U = jnp.linalg.eigh(G)
        keep = lam > rcond * jnp.max(lam)
        inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)

        def full_rank(_):
            return U @ (inv * (U.T @ w.ratio))

        def deficient(_):
            Uk = U * keep  # dropped directions zeroed
            M = Uk.T @ (w.h_tilde[:, None] * Uk) + jnp.diag(1.0 - keep)
            z = jnp.linalg.solve(M, Uk.T @ w.g_tilde)
            return U @ (inv * z)

        return jnp.exp(log_scale) * jax.lax.cond(jnp.all(keep), full_rank, deficient, None)

    def damped(_):
        m_a, m_i, factor = _damped_scales(mu, w.log_c, log_scale)
        s = w.sqrt_h_tilde
        K = s[:, None] * G * s[None, :]
        yv = jnp.linalg.solve(m_a * K + m_i * jnp.eye(G.shape[0]), w.g_over_sqrt_h)
        return factor * s * yv

    a = jax.lax.cond(mu > 0, damped, undamped, None)
    return -jt(a)


def _dense_direction(J, w: _Weights, mu, rcond, log_scale):
    """e^{log_scale} times the natural-gradient direction, from the p×p Fisher
    F̃ = Jᵀ H̃ J (scaled by 1/c)."""
    F = J.T @ (w.h_tilde[:, None] * J)
    b = J.T @ w.g_tilde

    def undamped(_):
        return -jnp.exp(log_scale) * _psd_pinv_apply(F, b, rcond)

    def damped(_):
        # (JᵀHJ + μI)v = −Jᵀg  ⇔  (F̃ + μ/c I)v = −b, solved in the scaled form of
        # `_damped_scales` (v was set to 0 once μ/c passed e^700; with the time
        # scale that velocity is O(1): the flow is gradient flow slowed by λ).
        m_a, m_i, factor = _damped_scales(mu, w.log_c, log_scale)
        return -factor * jnp.linalg.solve(m_a * F + m_i * jnp.eye(F.shape[0]), b)

    return jax.lax.cond(mu > 0, damped, undamped, None)


def _cg_direction(predict, theta, w: _Weights, mu, rtol, atol, max_steps, log_scale):
    """Matrix-free: CG on the n×n Gram system with JVP∘VJP products; no Jacobian
    or Fisher is ever formed.

    Undamped, it solves G a = ℓ'/h (well conditioned at any margin) and falls back,
    where that fails (a rank-deficient Jacobian makes the system inconsistent), to
    CG on the p-space normal equations Jᵀ H̃ J v = −Jᵀ g̃ started from 0, whose
    iterates stay in range(Jᵀ) and so converge to the minimum-norm solution.
    Returns e^{log_scale} times the direction, the total number of CG iterations
    and whether CG met its tolerance.
    """
    _, jvp_fn = jax.linearize(predict, theta)
    vjp_fn = jax.linear_transpose(jvp_fn, theta)

    def jt(z):
        (out,) = vjp_fn(z)
        return out

    n = w.ratio.shape[0]
    n_struct = jax.ShapeDtypeStruct((n,), w.ratio.dtype)
    p_struct = jax.ShapeDtypeStruct(theta.shape, theta.dtype)
    solver = lx.CG(rtol=rtol, atol=atol, max_steps=max_steps)
    psd = lx.positive_semidefinite_tag

    def cg(mv, rhs, struct):
        op = lx.FunctionLinearOperator(mv, struct, tags=psd)
        sol = lx.linear_solve(op, rhs, solver, throw=False)
        ok = (sol.result == lx.RESULTS.successful) & jnp.all(jnp.isfinite(sol.value))
        return sol.value, sol.stats["num_steps"], ok

    def normal_equations(steps_before):
        v, steps, ok = cg(lambda v: jt(w.h_tilde * jvp_fn(v)), -jt(w.g_tilde), p_struct)
        return jnp.exp(log_scale) * v, steps_before + steps, ok

    def undamped(_):
        if n > theta.size:  # J cannot have full row rank: go straight to p-space
            return normal_equations(0)
        a, steps, ok = cg(lambda z: jvp_fn(jt(z)), w.ratio, n_struct)
        return jax.lax.cond(
            ok, lambda s: (-jnp.exp(log_scale) * jt(a), s, ok), normal_equations, steps
        )

    def damped(_):
        m_a, m_i, factor = _damped_scales(mu, w.log_c, log_scale)
        s = w.sqrt_h_tilde
        mv = lambda z: m_a * s * jvp_fn(jt(s * z)) + m_i * z
        yv, steps, ok = cg(mv, w.g_over_sqrt_h, n_struct)
        return -factor * jt(s * yv), steps, ok

    return jax.lax.cond(mu > 0, damped, undamped, None)


def _real(name: str, value) -> float:
    """`value` as a float: a real number or a 0-d array, not a string or a list."""
    if isinstance(value, bool | str) or np.ndim(value) != 0:
        raise ValueError(f"`{name}` must be a single real number, got {value!r}.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a single real number, got {value!r}.") from None


def _has_gram(model) -> bool:
    """Whether the model overrides `AbstractModel.gram` with a closed form."""
    from .._models import AbstractModel

    return isinstance(model, AbstractModel) and type(model).gram is not AbstractModel.gram


def per_sample_jacobian(static, unravel, theta: Array, X: Array) -> Array:
    """The n×p Jacobian of the predictions on the rows of `X` in the flat parameters
    `theta`: n VJPs of single-sample predictions (not n VJPs of the whole batch,
    which would cost n² forward passes)."""

    def single(th, x):
        return eqx.combine(unravel(th), static)(x)

    return jax.vmap(jax.grad(single), in_axes=(None, 0))(theta, X)


def choose_solve(n: int, p: int, itemsize: int = 8, closed_form_gram: bool = False) -> str:
    """The `"auto"` rule: `"dense"` when p ≤ n (the p×p Fisher is the smaller
    system), else `"gram"` while the n×p Jacobian fits in `AUTO_MEMORY_BUDGET` (or
    the model forms the n×n Gram matrix in closed form and that fits), else
    matrix-free `"cg"`."""
    if p <= n and p * p * itemsize <= AUTO_MEMORY_BUDGET:
        return "dense"
    jacobian = 0 if closed_form_gram else n * p * itemsize
    if jacobian + n * n * itemsize <= AUTO_MEMORY_BUDGET:
        return "gram"
    return "cg"


class NaturalGradientFlow(AbstractFlow):
    r"""Natural-gradient flow $\dot\theta = -F(\theta)^+ \nabla L(\theta)$, with the
    Fisher / Gauss–Newton matrix $F = J^\top H J / n$ (J: Jacobian of the training
    predictions; H: the loss's second derivative in the prediction) and the solve
    fused into the (jitted) vector field (Kerekes, Mészáros & Huszár 2021; Zhang,
    Martens & Grosse 2019).

    The direction is the minimum-norm one (pseudo-inverse); `damping = λ > 0` gives
    the Levenberg–Marquardt direction $-(F + \lambda I)^{-1}\nabla L$. For
    logistic/exponential losses $H$ and $\nabla L$ both decay like $e^{-\text{margin}}$;
    the direction is formed from their ratio $\ell'/\ell''$ in closed form
    ($-y(1 + e^{-u})$ for the logistic loss) and log-domain weights, so the flow
    stays exact when the loss is far below 1e-300.

    **Arguments:**

    - `problem`: the `fs.Problem`.
    - `solve`: how the linear system is solved:
        - `"gram"`: the n×n Gram/NTK system $JJ^\top$ from per-sample gradients,
          or from the model's closed form (`model.gram`) where it has one (exact,
          $O(n^2 p + n^3)$; for n < p), rank-deficient Jacobians included;
        - `"dense"`: the p×p Fisher (for p ≤ n);
        - `"cg"`: matrix-free conjugate gradients on the Gram system with
          JVP∘VJP products (large p); where the Jacobian is rank-deficient it falls
          back to CG on the p-space normal equations (minimum-norm from 0);
        - `"auto"` (default): `"dense"` if p ≤ n, else `"gram"` while the n×p
          Jacobian fits in 2 GiB (with a closed-form `model.gram`: while the n×n
          matrix does), else `"cg"`.
    - `damping`: λ ≥ 0.
    - `fisher`: `"gauss-newton"` (default; for logistic, exponential and squared
        losses this is the Fisher of the model's predictive distribution) or
        `"empirical"` (weights $\ell'^2$: the empirical Fisher, whose flow is far more
        aggressive, $\ell'/\ell'^2 = 1/\ell'$ grows like $e^{\text{margin}}$).
    - `rcond`: relative eigenvalue cutoff of the pseudo-inverse (gram and dense).
    - `cg_rtol`, `cg_atol`, `cg_max_steps`: CG's tolerances (relative residual).
    """

    problem: Problem
    solve: str = eqx.field(static=True)
    damping: Array
    fisher: str = eqx.field(static=True)
    rcond: float = eqx.field(static=True)
    cg_rtol: float = eqx.field(static=True)
    cg_atol: float = eqx.field(static=True)
    cg_max_steps: int = eqx.field(static=True)

    def __init__(
        self,
        problem: Problem,
        *,
        solve: str = "auto",
        damping: ArrayLike = 0.0,
        fisher: str = "gauss-newton",
        rcond: float = 1e-10,
        cg_rtol: float = 1e-10,
        cg_atol: float = 1e-14,
        cg_max_steps: int = 1000,
    ):
        if not isinstance(problem, Problem):
            raise ValueError(f"`problem` must be a fs.Problem, got {type(problem).__name__}.")
        if solve not in SOLVE_METHODS:
            raise ValueError(f"`solve` must be one of {SOLVE_METHODS}, got {solve!r}.")
        if fisher not in FISHERS:
            raise ValueError(f"`fisher` must be one of {FISHERS}, got {fisher!r}.")
        damping_f = _real("damping", damping)
        if not math.isfinite(damping_f) or damping_f < 0:
            raise ValueError(f"`damping` must be a finite number ≥ 0, got {damping!r}.")
        if not 0 < _real("rcond", rcond) < 1:
            raise ValueError(f"`rcond` must lie in (0, 1), got {rcond!r}.")
        # (A NaN or negative CG tolerance, or no CG steps, gave a zero direction
        # reported as converged: a "successful" solve that never moved.)
        for name, tol in (("cg_rtol", cg_rtol), ("cg_atol", cg_atol)):
            if not (math.isfinite(_real(name, tol)) and tol >= 0):
                raise ValueError(f"`{name}` must be a finite number ≥ 0, got {tol!r}.")
        if cg_rtol == 0 and cg_atol == 0:
            raise ValueError("`cg_rtol` and `cg_atol` cannot both be 0: CG would never stop.")
        if isinstance(cg_max_steps, bool) or not isinstance(cg_max_steps, int) or cg_max_steps < 1:
            raise ValueError(f"`cg_max_steps` must be a positive integer, got {cg_max_steps!r}.")
        params = eqx.filter(problem.model, eqx.is_inexact_array)
        p = sum(x.size for x in jtu.tree_leaves(params))
        n = problem.n
        itemsize = jnp.dtype(jnp.result_type(float)).itemsize
        if solve == "auto":
            solve = choose_solve(n, p, itemsize, _has_gram(problem.model))
        if solve == "dense" and p * p * itemsize > DENSE_MEMORY_LIMIT:
            raise ValueError(
                f"solve='dense' would form a {p}×{p} Fisher matrix "
                f"({p * p * itemsize / 1024**3:.1f} GiB). Use solve='gram' (n = {n} < p) "
                "or the matrix-free solve='cg'."
            )
        self.problem = problem
        self.solve = solve
        self.damping = jnp.asarray(damping_f)
        self.fisher = fisher
        self.rcond = float(rcond)
        self.cg_rtol = float(cg_rtol)
        self.cg_atol = float(cg_atol)
        self.cg_max_steps = int(cg_max_steps)

    @property
    def no_jacobian_reason(self) -> str | None:
        if self.solve != "cg":
            return None
        return (
            "with solve='cg', its Jacobian would take p tangent CG solves per step, and "
            "lineax raises (instead of reporting) when one misses its tolerance (use "
            "solve='gram' or 'dense' with implicit solvers)"
        )

    def direction(self, params: PyTree, log_scale: ArrayLike = 0.0) -> PyTree:
        v, _ = self.direction_with_info(params, log_scale)
        return v

    def direction_with_info(
        self, params: PyTree, log_scale: ArrayLike = 0.0
    ) -> tuple[PyTree, dict]:
        """The natural-gradient velocity `−F⁺∇L` times e^{log_scale} (the damped
        forms fuse the scale in the log domain) and solver info (`cg_steps` for
        the CG path). Shared by the flow and discrete NGD."""
        problem = self.problem
        static = self.static
        theta, unravel = ravel_pytree(params)

        def predict(th):
            return problem.predict(eqx.combine(unravel(th), static))

        mu = problem.n * self.damping
        log_scale = jnp.asarray(log_scale, theta.dtype)
        info = {}
        if self.solve == "cg":
            f = predict(theta)
            w = _weights(problem, f, self.fisher)
            v, steps, ok = _cg_direction(
                predict, theta, w, mu, self.cg_rtol, self.cg_atol, self.cg_max_steps,
                log_scale,
            )
            info["cg_steps"] = steps
            info["cg_converged"] = ok
            # A CG solve that missed its tolerance is not a natural-gradient direction:
            # make it NaN, so a solve reports the failure (RESULTS) instead of silently
            # following a wrong field. Raise `cg_max_steps`, add damping, or use "gram".
            v = jnp.where(ok, v, jnp.nan)
        else:
            model = eqx.combine(unravel(theta), static)
            w = None
            if self.solve == "gram" and _has_gram(model):
                # The model forms JJᵀ in closed form; Jᵀa is one VJP.
                f, vjp_fn = jax.vjp(predict, theta)
                w = _weights(problem, f, self.fisher)
                G = model.gram(problem.X)
                v = _gram_direction(G, lambda a: vjp_fn(a)[0], w, mu, self.rcond, log_scale)
            else:
                f = predict(theta)
                w = _weights(problem, f, self.fisher)
                J = per_sample_jacobian(static, unravel, theta, problem.X)
                if self.solve == "gram":
                    v = _gram_direction(J @ J.T, lambda a: J.T @ a, w, mu, self.rcond, log_scale)
                else:
                    v = _dense_direction(J, w, mu, self.rcond, log_scale)
        return unravel(v.astype(theta.dtype)), info
