"""Resolve the friendly solver names to diffrax solvers, in one place."""

import diffrax
import equinox as eqx
import jax.tree_util as jtu
import optimistix as optx


_EXPLICIT = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
    "ralston": diffrax.Ralston,
    "midpoint": diffrax.Midpoint,
    "euler": diffrax.Euler,
}
_IMPLICIT = {
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno4": diffrax.Kvaerno4,
    "kvaerno5": diffrax.Kvaerno5,
    "implicit_euler": diffrax.ImplicitEuler,
}
SOLVER_NAMES = tuple(sorted(_EXPLICIT) + sorted(_IMPLICIT) + ["auto"])

#: Above this many parameters, "auto" stays explicit on the log clock: implicit
#: solvers form and factorise the dense p×p Jacobian of the vector field.
AUTO_IMPLICIT_MAX_PARAMS = 2000


def _newton():
    # Newton iterations with the step-size controller's rtol/atol: the combination
    # measured to keep implicit log-clock solves at a near-constant step count
    # (diffrax's default chord iteration rejects about half of its steps there).
    # Convergence is judged from the contraction rate of the iterates, not by the
    # residual against `atol` ("Cauchy" termination): on the log clock the state
    # grows like log t, and once rounding noise in the residual (~eps·|θ|) exceeds
    # atol the residual test can never pass. Measured on the 200 × 50 logistic
    # problem: with the residual test Kvaerno5 stalls near log t ≈ 7e4 (rtol 1e-8);
    # with the rate test it takes 199–210 steps at every horizon up to log t = 1e6.
    return diffrax.with_stepsize_controller_tols(optx.Newton)(cauchy_termination=False)


#: On the linear clock "auto" goes implicit when an explicit solver would need more
#: than this many steps for stability alone (spectral radius × span / 3.3).
AUTO_STIFF_STEPS = 5000


def spectral_radius(term, s0, y0, iterations: int = 12):
    """Power iteration with JVPs: |largest eigenvalue| of the vector field's Jacobian
    at `(s0, y0)`. Cheap (`iterations` JVPs); used to size explicit steps."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(y0)

    @eqx.filter_jit
    def run(term, s0, flat):
        f = lambda v: ravel_pytree(term.vf(s0, unravel(v), None))[0]
        _, jvp = jax.linearize(f, flat)
        v = jnp.cos(jnp.arange(flat.size, dtype=flat.dtype) + 1.0)  # deterministic start
        v = v / jnp.linalg.norm(v)

        def body(_, carry):
            v, _ = carry
            w = jvp(v)
            norm = jnp.linalg.norm(w)
            return jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), v), norm

        _, rho = jax.lax.fori_loop(0, iterations, body, (v, jnp.asarray(0.0, flat.dtype)))
        return rho

    return float(run(term, jnp.asarray(s0, flat.dtype), flat))


def resolve_solver(
    solver, *, clock: str, num_params: int, stiffness: float | None = None
) -> tuple[diffrax.AbstractSolver, str]:
    """Return `(diffrax solver, name)` for `solver` = a name or a diffrax solver.

    `"auto"`: on the log clock, Kvaerno5 + Newton for up to
    `AUTO_IMPLICIT_MAX_PARAMS` parameters (classification flows are stiff there:
    support-vector margins equilibrate fast while the direction drifts slowly);
    on the linear clock, Kvaerno5 when `stiffness` (spectral radius of the vector
    field's Jacobian at θ0 × the span) says an explicit solver would need more
    than `AUTO_STIFF_STEPS` steps for stability; Tsit5 otherwise."""
    if isinstance(solver, diffrax.AbstractSolver):
        return solver, type(solver).__name__
    if not isinstance(solver, str):
        raise ValueError(
            f"`solver` must be a name ({', '.join(SOLVER_NAMES)}) or a diffrax solver "
            f"instance, got {solver!r}."
        )
    name = solver.lower()
    if name == "auto":
        small = num_params <= AUTO_IMPLICIT_MAX_PARAMS
        stiff = stiffness is not None and stiffness / 3.3 > AUTO_STIFF_STEPS
        name = "kvaerno5" if small and (clock == "log" or stiff) else "tsit5"
    if name in _EXPLICIT:
        return _EXPLICIT[name](), name
    if name in _IMPLICIT:
        return _IMPLICIT[name](root_finder=_newton()), name
    raise ValueError(
        f"Unknown solver {solver!r}. Choose one of: {', '.join(SOLVER_NAMES)}; or pass "
        "a diffrax solver such as `diffrax.Kvaerno5()`."
    )


def is_adaptive(solver: diffrax.AbstractSolver) -> bool:
    return isinstance(solver, diffrax.AbstractAdaptiveSolver) or (
        isinstance(solver, diffrax.AbstractWrappedSolver) and is_adaptive(solver.solver)
    )


def evals_per_step(solver: diffrax.AbstractSolver) -> tuple[int, int] | None:
    """`(initial, per_step)` vector-field evaluations of an explicit Runge–Kutta
    solver (FSAL-aware), or `None` where the count is not fixed (implicit solvers,
    whose Newton iterations vary)."""
    tableau = getattr(type(solver), "tableau", None)
    if not isinstance(solver, diffrax.AbstractERK) or tableau is None:
        return None
    stages = len(tableau.c) + 1
    if tableau.fsal:
        return 1, stages - 1
    return 0, stages


class CollapseGuard(diffrax.AbstractAdaptiveStepSizeController):
    """Wraps an adaptive controller and stops the solve (`dt_min_reached`) when the
    next step has collapsed to the floating-point resolution of the clock, instead
    of spinning until `max_steps` (e.g. when the vector field turns NaN)."""

    controller: diffrax.AbstractAdaptiveStepSizeController
    ulps: float = eqx.field(static=True, default=64.0)

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):
        return self.controller.norm

    def wrap(self, direction):
        return CollapseGuard(self.controller.wrap(direction), self.ulps)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        return self.controller.init(terms, t0, t1, y0, dt0, args, func, error_order)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        import jax.numpy as jnp

        keep, next_t0, next_t1, made_jump, state, result = self.controller.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
        )
        eps = jnp.finfo(jnp.result_type(next_t0)).eps
        floor = self.ulps * eps * jnp.maximum(jnp.abs(next_t0), 1.0)
        collapsed = (next_t1 - next_t0) < floor
        result = diffrax.RESULTS.where(collapsed, diffrax.RESULTS.dt_min_reached, result)
        return keep, next_t0, next_t1, made_jump, state, result


def count_params(params) -> int:
    return sum(x.size for x in jtu.tree_leaves(params))
