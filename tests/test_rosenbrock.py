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


def test_fifth_order_on_a_nonlinear_non_autonomous_problem():
    # Fixed steps h = 2/n: the global error of an order-p method falls by 2^p per
    # halving. Both components must show p ≈ 5; the time derivative term of the
    # Rosenbrock step is what keeps the non-autonomous y at fifth order.
    term, lam = _field(-1.0)
    y0 = {"y": jnp.array([1.0]), "z": jnp.array([1.0])}
    errors = []
    for n in (10, 20, 40):
        sol = diffrax.diffeqsolve(term, Rodas5P(), 0.0, 2.0, 2.0 / n, y0, args=lam,
                                  stepsize_controller=diffrax.ConstantStepSize())
        exact = _exact(-1.0, 2.0)
        errors.append([abs(float(sol.ys[k][-1, 0]) - exact[k]) for k in ("y", "z")])
    errors = np.array(errors)
    orders = np.log2(errors[:-1] / errors[1:])
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
