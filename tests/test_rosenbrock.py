"""Rodas5P (flowsolve's Rosenbrock solver) against closed forms: its order on a
nonlinear, non-autonomous problem, L-stability on a very stiff one, and agreement
with the exact solution when it runs adaptively inside `diffrax.diffeqsolve`."""

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest

import flowsolve as fs
from flowsolve._rosenbrock import Rodas5P


def _field(lam):
    # y' = λ(y − sin t) + cos t: exact y = sin t + (y0 − sin 0)e^{λt} (Prothero &
    # Robinson), non-autonomous, stiff for λ ≪ 0. z' = −z²: exact z = 1/(1 + t),
    # nonlinear. `lam` is an array argument so that one compilation serves all λ.
    def vf(t, u, lam):
        return {"y": lam * (u["y"] - jnp.sin(t)) + jnp.cos(t), "z": -u["z"] ** 2}

    return diffrax.ODETerm(vf), jnp.asarray(lam)


def _exact(lam, t, y0=1.0):
    return {"y": np.sin(t) + y0 * np.exp(lam * t), "z": 1.0 / (1.0 + t)}


def _observed_orders(term, solver, lam, ns):
    """log2 of the error ratios of fixed-step solves with h = 2/n, n in `ns`, at
    t = 2 against `_exact` (rows: successive halvings; columns: y, z)."""
    y0 = {"y": jnp.array([1.0]), "z": jnp.array([1.0])}
    exact = _exact(-1.0, 2.0)
    errors = []
    for n in ns:
        sol = diffrax.diffeqsolve(term, solver, 0.0, 2.0, 2.0 / n, y0, args=lam,
                                  stepsize_controller=diffrax.ConstantStepSize())
        errors.append([abs(float(sol.ys[k][-1, 0]) - exact[k]) for k in ("y", "z")])
    errors = np.array(errors)
    return np.log2(errors[:-1] / errors[1:])


def test_fifth_order_on_a_nonlinear_non_autonomous_problem():
    # Fixed steps h = 2/n: the global error of an order-p method falls by 2^p per
    # halving. Both components must show p ≈ 5; the time derivative term of the
    # Rosenbrock step is what keeps the non-autonomous y at fifth order.
    term, lam = _field(-1.0)
    orders = _observed_orders(term, Rodas5P(), lam, (10, 20, 40))
    # Measured 5.08, 5.05 (y) and 4.50, 4.81 (z: the coarsest pair is still
    # pre-asymptotic).
    assert np.all(orders > 4.4), orders
    assert np.all(orders < 5.6), orders


def test_l_stable_on_a_very_stiff_problem():
    # λ = −1e6: an explicit method needs h < 3.3e-6 for stability (> 6e5 steps on
    # [0, 2]); an L-stable method follows the smooth solution sin t with steps sized
    # by accuracy alone, and damps the initial transient e^{λt} completely.
    term, lam = _field(-1e6)
    y0 = {"y": jnp.array([1.0]), "z": jnp.array([1.0])}
    ts = jnp.linspace(0.5, 2.0, 7)
    sol = diffrax.diffeqsolve(term, Rodas5P(), 0.0, 2.0, 1e-3, y0, args=lam,
                              saveat=diffrax.SaveAt(ts=ts),
                              stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10))
    exact = _exact(-1e6, np.asarray(ts))
    assert sol.result == diffrax.RESULTS.successful
    # Measured 1.6e-7 (y) and 4.6e-8 (z) at tolerances 1e-8 / 1e-10, in 104 + 6
    # steps. y's error is the known order reduction of Rosenbrock methods on this
    # stiff, non-autonomous problem (low stage order), not an instability: it stays
    # bounded while λh reaches −1e5.
    np.testing.assert_allclose(sol.ys["y"][:, 0], exact["y"], rtol=0, atol=5e-7)
    np.testing.assert_allclose(sol.ys["z"][:, 0], exact["z"], rtol=0, atol=2e-7)
    assert int(sol.stats["num_accepted_steps"]) < 200


def test_named_solver_on_the_log_clock_matches_kvaerno5():
    # The same logistic flow to log t = 1000 by Rodas5P and by Kvaerno5 + Newton,
    # both at rtol 1e-10: independent implicit methods, agreeing to ~1e-8 relative.
    X, y = fs.datasets.separable_gaussian(n=40, d=5, seed=3)
    problem = fs.Problem(fs.models.Linear(5), fs.losses.Logistic(), X, y)
    flow = fs.GradientFlow(problem)
    kw = dict(log_t1=1000.0, clock="log", rtol=1e-10, atol=1e-12, metrics=("margin",),
              saveat=fs.SaveAt(num=5))
    a = fs.solve(flow, solver="rodas5p", **kw)
    b = fs.solve(flow, solver="kvaerno5", **kw)
    assert a.success and b.success and a.info["solver"] == "rodas5p"
    np.testing.assert_allclose(a.final.weight, b.final.weight,
                               rtol=0, atol=1e-7 * np.linalg.norm(b.final.weight))
    np.testing.assert_allclose(a.metrics["margin"], b.metrics["margin"], rtol=1e-7)


def test_a_non_finite_step_is_rejected_not_kept():
    # y' = −sqrt(y) hits y = 0 at t = 2 (y0 = 1): a step that overshoots into y < 0
    # produces NaN, which must be rejected and retried with a smaller step rather
    # than kept; the solve ends at t = 1.5 with y = (1 − t/2)² = 1/16.
    term = diffrax.ODETerm(lambda t, y, args: -jnp.sqrt(y))
    sol = diffrax.diffeqsolve(term, Rodas5P(), 0.0, 1.5, 1.4, jnp.array([1.0]),
                              stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10))
    assert sol.result == diffrax.RESULTS.successful
    # Measured 3.6e-8 relative after 26 accepted and 14 rejected steps.
    assert float(sol.ys[-1, 0]) == pytest.approx(1.0 / 16.0, rel=1e-6)
    assert int(sol.stats["num_rejected_steps"]) >= 1


class _WrongW(diffrax.AbstractTerm):
    """`_field`'s vector field with a Gauss–Newton system that has nothing to do with
    its Jacobian: W = −BᵀB for a fixed 2×2 B (J is diag(λ, −2z))."""

    lam: jnp.ndarray

    def vf(self, t, u, args):
        return {"y": self.lam * (u["y"] - jnp.sin(t)) + jnp.cos(t), "z": -u["z"] ** 2}

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf, control):
        return {k: control * v for k, v in vf.items()}

    def has_gauss_newton(self):
        return True

    def gauss_newton_system(self, t, u, args):
        B = jnp.array([[1.0, 0.3], [0.0, 2.0]])
        apply_b = lambda v: B @ jnp.concatenate([v["y"], v["z"]])
        apply_bt = lambda z: {"y": (B.T @ z)[:1], "z": (B.T @ z)[1:]}
        return apply_b, apply_bt, B @ B.T


@pytest.mark.parametrize("jacobian", ["exact", "wrong W"])
def test_ros34pw2_is_third_order_whatever_its_matrix(jacobian):
    # A W-method keeps its order with any matrix in place of the Jacobian (Rang &
    # Angermann 2005): with the exact one and with an unrelated W the global error
    # falls by 2³ per halving of fixed steps on the nonlinear, non-autonomous problem.
    lam = jnp.asarray(-1.0)
    if jacobian == "exact":
        term, solver = diffrax.ODETerm(lambda t, u, lam: _WrongW(lam).vf(t, u, None)), fs.Ros34PW2()
    else:
        term, solver = _WrongW(lam), fs.Ros34PW2(jacobian="gauss-newton")
    orders = _observed_orders(term, solver, lam, (80, 160, 320))
    # Measured with the unrelated W: 2.83, 2.91 (y) and 2.90, 2.95 (z), tending to 3
    # (2.96, 2.97 at n = 640); with W = 0 (the method turns explicit) 2.96–3.03. The
    # exact Jacobian: 2.99, 2.99 (y) and 3.01, 3.00 (z).
    assert np.all(orders > 2.7), orders
    assert np.all(orders < 3.4), orders


def test_gauss_newton_w_method_matches_the_exact_flow_of_linear_regression():
    # For a linear model with the squared loss the Gauss–Newton matrix XᵀX/n is the
    # exact Hessian, and the flow θ' = −(XᵀX θ − Xᵀy)/n is linear: θ(t) from the
    # matrix exponential of the augmented system. n = 6 < p = 10, so the Woodbury
    # (n×n Gram) path runs, and the minimum is not unique: the limit depends on θ0.
    from scipy.linalg import expm

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 10)), rng.normal(size=6)
    model = fs.models.Linear(10, weight=rng.normal(size=10))
    flow = fs.GradientFlow(fs.Problem(model, fs.losses.Squared(), X, y))
    H, b = X.T @ X / 6, X.T @ y / 6
    aug = np.zeros((11, 11))
    aug[:10, :10], aug[:10, 10] = -H, b
    t1 = 200.0
    exact = (expm(t1 * aug) @ np.append(np.asarray(model.weight), 1.0))[:10]
    finals = {}
    for jac in ("exact", "gauss-newton"):
        sol = fs.solve(flow, model, t1=t1, solver=fs.Ros34PW2(jacobian=jac), rtol=1e-10,
                       atol=1e-12, metrics=("loss",))
        assert sol.success
        finals[jac] = np.asarray(sol.final.weight)
        # rtol 1e-10 over ~1e2 steps: 1e-8 relative allows the accumulated error.
        assert np.linalg.norm(finals[jac] - exact) <= 1e-8 * np.linalg.norm(exact)
    # The same matrix up to rounding, so the same steps: agreement far below rtol.
    assert np.linalg.norm(finals["exact"] - finals["gauss-newton"]) <= 1e-11 * np.linalg.norm(exact)


@pytest.mark.parametrize("solver", [fs.Rodas5P(), fs.Ros34PW2()])
def test_backwards_in_time_on_t_dependent_fields(solver):
    """diffeqsolve with t1 < t0 runs the solver forward in −t on a wrapped term:
    stage times and ∂f/∂t belong to the solver's time, the increments to the
    term's. Closed forms: y' = cos t from y(2) = sin 2 gives y(0) = 0; z' = t·z from
    z(2) = e² gives z(0) = 1. Before, both came back `successful` 0.07–0.2 off;
    now to ~1e-8 at rtol 1e-10 (the controller's tolerance, with margin)."""
    term = diffrax.ODETerm(lambda t, u, _: {"y": jnp.cos(t), "z": t * u["z"]})
    y0 = {"y": jnp.asarray(np.sin(2.0)), "z": jnp.asarray(np.exp(2.0))}
    sol = diffrax.diffeqsolve(
        term, solver, 2.0, 0.0, -0.05, y0,
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12), max_steps=100_000,
    )
    assert abs(float(sol.ys["y"][-1])) < 1e-8
    assert float(sol.ys["z"][-1]) == pytest.approx(1.0, rel=1e-8)
    # The dense output between steps too (now evaluated at the step's end, t1).
    dense = diffrax.diffeqsolve(
        term, solver, 2.0, 0.0, -0.05, y0, saveat=diffrax.SaveAt(ts=[1.0]),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12), max_steps=100_000,
    )
    assert float(dense.ys["y"][0]) == pytest.approx(np.sin(1.0), rel=1e-4)


def test_gauss_newton_needs_a_gradient_flow():
    with pytest.raises(ValueError, match="jacobian"):
        fs.Ros34PW2(jacobian="newton")
    X, y = np.eye(3), np.array([1.0, -1.0, 1.0])
    problem = fs.Problem(fs.models.Linear(3), fs.losses.Logistic(), X, y)
    flow = fs.NaturalGradientFlow(problem)
    with pytest.raises(ValueError, match="gradient-flow term"):
        fs.solve(flow, problem.model, t1=1.0, solver=fs.Ros34PW2(jacobian="gauss-newton"))
    # The term the user passed is named, not diffeqsolve's wrapper.
    with pytest.raises(ValueError, match="got ODETerm"):
        diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, _: -y), fs.Ros34PW2(jacobian="gauss-newton"),
                            0.0, 1.0, 0.1, jnp.ones(2))
