"""flowsolve against what a researcher would otherwise use, on the same workloads,
at the same tolerances and horizons.

Workloads (float64, CPU):

* `logistic`: gradient flow, linear model, separable Gaussian data n = 200, d = 50,
  log clock, rtol 1e-8 / atol 1e-10, t = 1e8 … e^10⁴.
* `relu`: gradient flow, two-layer mean-field ReLU network of width 1000 on 50
  points of the 2-D clusters data (+ bias), log clock, rtol 1e-4 / atol 1e-6
  (at 1e-6 Tsit5 needs 16 557 steps to t = 1e4 and 20 000 steps get it only to
  t ≈ 1.1e4: units sliding along their kinks stall adaptive solvers).
* `mc`: gradient flow, depth-3 matrix factorisation completing a 30 × 30 rank-2
  matrix from 464 entries, squared loss, init scale 1e-3, linear clock,
  rtol 1e-8 / atol 1e-10, t = 1e4 (escape from the saddle) … 1e8.
* `ngf`: natural-gradient flow on the `logistic` problem, log clock,
  rtol 1e-8 / atol 1e-10, t = 1e2 … 1e8.

Peers:

* hand-written diffrax: `diffrax.diffeqsolve` on a jitted vector field written
  with JAX autodiff (log clock: the cotangent `y·exp(s − logaddexp(0, u) − log n)`,
  so e^s never overflows), the same solver as flowsolve, the same PID tolerances,
  the same save points; timed on the second call of the jitted function. Also
  with flowsolve's own flow as the diffrax term, which separates the cost of
  `fs.solve` from the cost of the model's vector field.
* `scipy.integrate.solve_ivp` (RK45, LSODA) and torchdiffeq (dopri5, CPU): the
  same ODE (same clock, same log-domain vector field), with hand-written NumPy
  gradients and torch autograd respectively. For natural-gradient flow they use
  what the literature writes, `−pinv(Xᵀ diag(σ(u)(1 − σ(u))) X / n) ∇L`.
* a fixed-step jitted GD loop (`lax.fori_loop` over `jax.grad`; step k at
  t = kη), and forward Euler with heuristic step adaptation in the style of the
  gradientflow PyTorch package (the step grows ×1.1 while the loss decreases and
  is divided by 10 and retried when it increases), both on the linear clock t.

Accuracy is against a reference named in the table: a tight-tolerance flowsolve
solve for `logistic`, `mc` and `ngf`; for `relu` the exact conserved quantities
‖a_j‖² − b_j² of gradient flow (a tight solve stalls on the kinks). Each peer run
gets a time cap (`--cap`); one that exceeds it, stalls or fails is reported with
how far it got, and larger horizons are then not attempted. flowsolve gets the
same cap as a step budget. Peers whose package is missing are reported as skipped.

Two speed-ups are printed for each peer. *Same tolerance*: against flowsolve
(auto) at the workload's rtol/atol with the peers' error control (per parameter).
*Equal accuracy* (work–precision): against the fastest flowsolve (auto) run whose
error is no larger than the peer's. Besides its default run, flowsolve runs at
10× and 0.1× the tolerances, and for each peer that no run matches within 3× it
runs once more at the tolerance interpolated (log–log, error against rtol) to give
0.7× the peer's error, and a second time, re-aimed, if that run does not match
either (no looser than rtol 1e-2; not for peers whose error is 0.1 or more: wrong
answers). Every candidate is a measured row of
the table; no time is interpolated.

    python scripts/compare_peers.py              # < 15 min on 2 cores
    python scripts/compare_peers.py --quick      # ~2 min
    python scripts/compare_peers.py --workloads logistic ngf --cap 30 --json out.json
    python scripts/compare_peers.py --json out.json --plot wp.png   # and the work–precision figure
    python scripts/compare_peers.py --from-json out.json --plot wp.png   # redraw, run nothing

Set `OPENBLAS_NUM_THREADS=1` on a small shared CPU (see README).
"""

import argparse
import importlib.util
import inspect
import json
import math
import platform
import textwrap
import time

import jax


jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.lax as lax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

import flowsolve as fs  # noqa: E402


# ----------------------------------------------------------------------------- workloads


def softplus_np(x):
    return np.logaddexp(0.0, x)


class Workload:
    """One training problem: flowsolve's flow and θ0, and the same vector field
    written by hand for each peer (NumPy, torch, JAX) on the flat parameter vector
    (flowsolve's `ravel_pytree` order)."""

    name: str
    title: str
    clock: str
    rtol: float
    atol: float
    horizons: list  # (label, log t1)
    quick_horizons: list
    max_steps: int = 100_000
    ref_solver: str = "auto"
    ref_rtol: float = 0.0  # 0: the reference is exact (conserved quantities)
    #: Work–precision: flowsolve (auto) also runs at these multiples of (rtol, atol),
    #: where the reference stays at least 10× tighter, so that every peer can be met
    #: by a flowsolve run at least as accurate as it ("equal accuracy").
    tolerance_factors: tuple = (10.0, 0.1)
    reference_note: str
    gd_note: str

    def __init__(self):
        self.theta0, self.unravel = ravel_pytree(eqx.filter(self.model, eqx.is_inexact_array))
        self.theta0_np = np.asarray(self.theta0)
        self.p = self.theta0.size
        self._references = {}

    def ladder(self):
        """The `tolerance_factors` that keep the reference 10× tighter."""
        return [f for f in self.tolerance_factors if self.rtol * f >= 10 * self.ref_rtol * (1 - 1e-9)]

    def clock_end(self, log_t1):
        """The horizon in the workload's clock variable."""
        return float(np.logaddexp(0.0, log_t1)) if self.clock == "log" else math.exp(log_t1)

    def fs_model(self, theta):
        return eqx.combine(self.unravel(jnp.asarray(theta)), eqx.filter(self.model, eqx.is_inexact_array, inverse=True))

    # flowsolve -----------------------------------------------------------------------
    def fs_solve(self, log_t1, solver="auto", rtol=None, atol=None, max_steps=None, **options):
        horizon = dict(log_t1=log_t1) if self.clock == "log" else dict(t1=math.exp(log_t1))
        return fs.solve(self.flow, self.model, clock=self.clock, solver=solver,
                        rtol=rtol or self.rtol, atol=atol or self.atol, metrics=self.metrics,
                        saveat=fs.SaveAt(num=2), max_steps=max_steps or self.max_steps, **horizon,
                        **options)

    def fs_theta(self, sol):
        return np.asarray(ravel_pytree(eqx.filter(sol.final, eqx.is_inexact_array))[0])

    # accuracy --------------------------------------------------------------------------
    def reference(self, log_t1):
        if log_t1 not in self._references:
            sol = self.fs_solve(log_t1, solver=self.ref_solver, rtol=self.ref_rtol, atol=self.ref_atol,
                                max_steps=self.ref_max_steps)
            self._references[log_t1] = self.fs_theta(sol) if sol.success else None
        return self._references[log_t1]

    def accuracy(self, theta, log_t1):
        ref = self.reference(log_t1)
        if ref is None or theta is None or not np.all(np.isfinite(theta)):
            return float("nan")
        return float(np.linalg.norm(self.compare_vector(theta) - self.compare_vector(ref))
                     / np.linalg.norm(self.compare_vector(ref)))

    def compare_vector(self, theta):
        return np.asarray(theta)

    # vector fields for the peers, in the workload's clock variable ------------------------
    def jax_vf(self, s, theta, args):  # hand-written diffrax
        raise NotImplementedError

    def np_vf(self, s, theta):  # scipy
        raise NotImplementedError

    def torch_vf(self, torch, data, s, theta):  # torchdiffeq
        raise NotImplementedError

    def jax_args(self):
        return (jnp.asarray(self.X), jnp.asarray(self.y))

    # linear time: the discrete peers ----------------------------------------------------------
    def jax_loss(self, theta, X, y):
        raise NotImplementedError

    def jax_step_direction(self, theta, X, y):
        """−∇L (or the peers' natural-gradient direction): GD and Euler move along it."""
        return -jax.grad(self.jax_loss)(theta, X, y)


def _linear_cotangent(s, u, n):
    # −e^s ℓ'(u)/n for the logistic loss, fused in the log domain: e^s · σ(−u) / n.
    return jnp.exp(s - jnp.logaddexp(0.0, u) - jnp.log(n))


class Logistic(Workload):
    name = "logistic"
    title = "GF, logistic, linear model, n=200, d=50 (log clock)"
    clock = "log"
    rtol, atol = 1e-8, 1e-10
    ref_rtol, ref_atol, ref_max_steps = 1e-10, 1e-12, 100_000
    horizons = [("1e8", math.log(1e8)), ("e^100", 100.0), ("e^1000", 1000.0), ("e^1e4", 1e4)]
    quick_horizons = [("1e8", math.log(1e8)), ("e^1000", 1000.0)]
    metrics = ("log_loss",)
    reference_note = "flowsolve auto at rtol 1e-10 / atol 1e-12; error ‖w − w_ref‖/‖w_ref‖"
    eta = 1.0
    gd_note = "GD η = 1"

    def __init__(self):
        self.X, self.y = (np.asarray(a) for a in fs.datasets.separable_gaussian(n=200, d=50, seed=0))
        self.Z = self.y[:, None] * self.X
        self.model = fs.models.Linear(50)
        self.problem = fs.Problem(self.model, fs.losses.Logistic(), self.X, self.y)
        self.flow = fs.GradientFlow(self.problem)
        super().__init__()

    def jax_vf(self, s, w, args):
        X, y = args
        f, vjp = jax.vjp(lambda w: X @ w, w)
        (g,) = vjp(y * _linear_cotangent(s, y * f, y.shape[0]))
        return g

    def np_vf(self, s, w):
        u = self.Z @ w
        return self.Z.T @ np.exp(s - softplus_np(u) - math.log(len(u)))

    def torch_vf(self, torch, data, s, w):
        X, y = data
        with torch.enable_grad():
            w = w.detach().requires_grad_(True)
            f = X @ w
            u = y * f.detach()
            cot = y * torch.exp(s - torch.logaddexp(torch.zeros_like(u), u) - math.log(len(u)))
            (g,) = torch.autograd.grad(f, w, grad_outputs=cot)
        return g

    def jax_loss(self, w, X, y):
        return jnp.mean(jnp.logaddexp(0.0, -y * (X @ w)))


class NaturalLogistic(Logistic):
    name = "ngf"
    title = "NGF, logistic, linear model, n=200, d=50 (log clock)"
    ref_rtol, ref_atol = 1e-11, 1e-13
    horizons = [("1e2", math.log(1e2)), ("1e4", math.log(1e4)), ("1e8", math.log(1e8))]
    quick_horizons = [("1e4", math.log(1e4)), ("1e8", math.log(1e8))]
    reference_note = "flowsolve NGF (dense, rcond 1e-10) at rtol 1e-11 / atol 1e-13"
    rcond = 1e-10
    gd_note = "NGD η = 1 (pinv of σ(1−σ) Fisher)"

    def __init__(self):
        super().__init__()
        self.flow = fs.NaturalGradientFlow(self.problem)

    def jax_vf(self, s, w, args):
        # What a careful user writes after reading Kerekes et al.: the Fisher weights
        # σ(u)σ(−u) and the gradient in the log domain, scaled by their largest weight.
        X, y = args
        u = y * (X @ w)
        log_h = -jnp.logaddexp(0.0, u) - jnp.logaddexp(0.0, -u)
        c = jnp.max(log_h)
        F = X.T @ (jnp.exp(log_h - c)[:, None] * X)
        b = X.T @ (y * jnp.exp(-jnp.logaddexp(0.0, u) - c))  # −Xᵀℓ'/c
        return jnp.exp(s) * (jnp.linalg.pinv(F, rtol=self.rcond, hermitian=True) @ b)

    def _naive_direction(self, w, X, y, xp, sigmoid, pinv):
        # The textbook form: F = Xᵀ diag(σ(1 − σ)) X / n, v = −F⁺∇L. 1 − σ(u) rounds
        # to 0 once u > 36.7, so the Fisher loses its rows one by one.
        u = y * (X @ w)
        sig = sigmoid(u)
        F = X.T @ ((sig * (1 - sig))[:, None] * X) / len(u)
        grad = -(X.T @ (y * sigmoid(-u))) / len(u)
        return -(pinv(F) @ grad)

    def np_vf(self, s, w):
        from scipy.special import expit

        return math.exp(s) * self._naive_direction(w, self.X, self.y, np, expit, np.linalg.pinv)

    def torch_vf(self, torch, data, s, w):
        X, y = data
        return torch.exp(s) * self._naive_direction(w, X, y, torch, torch.sigmoid, torch.linalg.pinv)

    def jax_step_direction(self, w, X, y):
        return self._naive_direction(w, X, y, jnp, jax.nn.sigmoid, jnp.linalg.pinv)


class ReLU(Workload):
    name = "relu"
    title = "GF, two-layer ReLU width 1000, 2-D clusters n=50 (log clock)"
    clock = "log"
    rtol, atol = 1e-4, 1e-6
    horizons = [("1e4", math.log(1e4)), ("1e8", math.log(1e8)), ("e^100", 100.0)]
    quick_horizons = [("1e4", math.log(1e4))]
    max_steps = 30_000
    metrics = ("log_loss",)
    reference_note = ("exact conserved quantities ‖a_j‖² − b_j² (a tight solve stalls); "
                      "error = max drift / scale")
    width = 1000

    def __init__(self):
        self.X, self.y = (np.asarray(a) for a in fs.datasets.two_d_nonlinear(n=50, kind="clusters", seed=0))
        self.model = fs.models.TwoLayer(self.X.shape[1], self.width, key=jr.key(0), activation="relu")
        self.problem = fs.Problem(self.model, fs.losses.Logistic(), self.X, self.y)
        self.flow = fs.GradientFlow(self.problem)
        super().__init__()
        self.shapes = (self.model.hidden.shape, self.model.output.shape)
        self.c0 = self._conserved(self.theta0_np)
        # GD: a step well inside the stability limit at θ0 (mean-field: the Hessian is
        # O(1/m), so η is O(m)).
        self.eta = float(0.5 / _hessian_radius(self, self.theta0))
        self.gd_note = f"GD η = {self.eta:.3g} (½ / λ_max(∇²L(θ0)))"

    def split(self, theta, xp=np):
        (m, d), _ = self.shapes
        return theta[: m * d].reshape(m, d), theta[m * d:]

    def _conserved(self, theta):
        A, b = self.split(np.asarray(theta))
        return np.sum(A**2, axis=1) - b**2, max(np.max(np.sum(A**2, axis=1)), np.max(b**2))

    def accuracy(self, theta, log_t1):
        if theta is None or not np.all(np.isfinite(theta)):
            return float("nan")
        c, scale = self._conserved(theta)
        return float(np.max(np.abs(c - self.c0[0])) / max(scale, self.c0[1]))

    def jax_predict(self, theta, X):
        A, b = self.split(theta)
        return jnp.maximum(X @ A.T, 0.0) @ b / self.width

    def jax_vf(self, s, theta, args):
        X, y = args
        f, vjp = jax.vjp(lambda th: self.jax_predict(th, X), theta)
        (g,) = vjp(y * _linear_cotangent(s, y * f, y.shape[0]))
        return g

    def np_vf(self, s, theta):
        A, b = self.split(theta)
        X, y, m = self.X, self.y, self.width
        pre = X @ A.T
        act = np.maximum(pre, 0.0)
        u = y * (act @ b) / m
        c = y * np.exp(s - softplus_np(u) - math.log(len(u)))
        gb = act.T @ c / m
        gA = ((pre > 0) * (c[:, None] * b[None, :] / m)).T @ X
        return np.concatenate([gA.ravel(), gb])

    def torch_vf(self, torch, data, s, theta):
        X, y = data
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            A, b = self.split(theta)
            f = torch.relu(X @ A.T) @ b / self.width
            u = y * f.detach()
            cot = y * torch.exp(s - torch.logaddexp(torch.zeros_like(u), u) - math.log(len(u)))
            (g,) = torch.autograd.grad(f, theta, grad_outputs=cot)
        return g

    def jax_loss(self, theta, X, y):
        return jnp.mean(jnp.logaddexp(0.0, -y * self.jax_predict(theta, X)))


class Completion(Workload):
    name = "mc"
    title = "GF, depth-3 matrix completion 30×30 rank 2, 464 entries (linear clock)"
    clock = "linear"
    rtol, atol = 1e-8, 1e-10
    ref_rtol, ref_atol, ref_max_steps = 1e-11, 1e-13, 60_000
    ref_solver = "tsit5"
    horizons = [("1e4", math.log(1e4)), ("1e5", math.log(1e5)), ("1e8", math.log(1e8))]
    quick_horizons = [("1e4", math.log(1e4))]
    max_steps = 12_000
    metrics = ("loss",)
    reference_note = ("flowsolve Tsit5 at rtol 1e-11 / atol 1e-13 (at t = 1e5 for every "
                      "t ≥ 1e5: converged); error ‖W − W_ref‖_F/‖W_ref‖_F of the end-to-end matrix")

    def __init__(self):
        data = fs.datasets.low_rank_completion((30, 30), 2, seed=0)
        self.X, self.y = np.asarray(data.X), np.asarray(data.y)
        self.model = fs.models.MatrixFactorization((30, 30), depth=3, key=jr.key(0), init_scale=1e-3)
        self.problem = fs.Problem(self.model, fs.losses.Squared(), self.X, self.y)
        self.flow = fs.GradientFlow(self.problem)
        super().__init__()
        self.rows, self.cols = self.X[:, 0], self.X[:, 1]
        ref = self.reference(math.log(1e5))  # the converged factorisation sets η
        radius = max(_hessian_radius(self, self.theta0), _hessian_radius(self, jnp.asarray(ref)))
        self.eta = float(0.5 / radius)
        self.gd_note = f"GD η = {self.eta:.3g} (½ / λ_max(∇²L) at the limit)"

    def reference(self, log_t1):
        # Past t = 1e5 the flow has converged (loss ~1e-15) and an explicit reference
        # would need ~ρt steps: the 1e5 reference stands for the limit there.
        return super().reference(min(log_t1, math.log(1e5)))

    def split(self, theta):
        return theta[:900].reshape(30, 30), theta[900:1800].reshape(30, 30), theta[1800:].reshape(30, 30)

    def compare_vector(self, theta):
        W1, W2, W3 = self.split(np.asarray(theta))
        return (W3 @ W2 @ W1).ravel()

    def jax_args(self):
        return (jnp.asarray(self.rows), jnp.asarray(self.cols), jnp.asarray(self.y))

    def jax_loss(self, theta, rows, cols, y):
        W1, W2, W3 = self.split(theta)
        W = W3 @ W2 @ W1
        return 0.5 * jnp.mean((W[rows, cols] - y) ** 2)

    def jax_vf(self, t, theta, args):
        return -jax.grad(self.jax_loss)(theta, *args)

    def jax_step_direction(self, theta, rows, cols, y):
        return -jax.grad(self.jax_loss)(theta, rows, cols, y)

    def np_vf(self, t, theta):
        W1, W2, W3 = self.split(theta)
        R = np.zeros((30, 30))
        R[self.rows, self.cols] = ((W3 @ W2 @ W1)[self.rows, self.cols] - self.y) / len(self.y)
        g3 = R @ (W2 @ W1).T
        g2 = W3.T @ R @ W1.T
        g1 = (W3 @ W2).T @ R
        return -np.concatenate([g1.ravel(), g2.ravel(), g3.ravel()])

    def torch_vf(self, torch, data, t, theta):
        rows, cols, y = data
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            W1, W2, W3 = self.split(theta)
            loss = 0.5 * torch.mean(((W3 @ W2 @ W1)[rows, cols] - y) ** 2)
            (g,) = torch.autograd.grad(loss, theta)
        return -g


def _hessian_radius(w: Workload, theta, iterations=30):
    """λ_max of the loss Hessian at θ by power iteration with Hessian-vector products."""
    args = w.jax_args()
    grad = jax.grad(lambda th: w.jax_loss(th, *args))

    @jax.jit
    def run(theta):
        hvp = lambda v: jax.jvp(grad, (theta,), (v,))[1]
        v = jnp.cos(jnp.arange(theta.size, dtype=theta.dtype) + 1.0)

        def body(_, carry):
            v, _ = carry
            hv = hvp(v / jnp.linalg.norm(v))
            return hv, jnp.linalg.norm(hv)

        return lax.fori_loop(0, iterations, body, (v, jnp.asarray(0.0)))[1]

    return float(run(theta))


WORKLOADS = {"logistic": Logistic, "relu": ReLU, "mc": Completion, "ngf": NaturalLogistic}


# ----------------------------------------------------------------------------- runners


class Capped(Exception):
    """A peer ran past its time cap; carries how far it got."""

    def __init__(self, s):
        self.s = s


def outcome(w, log_t1, *, reached, steps, wall, theta, s_reached=None, evals=None, note=""):
    return {
        "reached": reached, "steps": steps, "evals": evals, "wall_s": wall, "note": note,
        "log_t_reached": None if s_reached is None else _log_t(w, s_reached),
        "error": w.accuracy(theta, log_t1) if reached else float("nan"),
    }


def _log_t(w, s):
    """log t of a clock value (log clock: s = log(1 + t))."""
    if w.clock == "log":
        return float(s + np.log(-np.expm1(-s))) if s > 0 else float("-inf")
    return math.log(s) if s > 0 else float("-inf")


def best_of(fn, repeats, budget=10.0):
    """Run `fn` up to `repeats` times (fewer past `budget` seconds); return the best
    wall time and the last output."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if sum(times) > budget:
            break
    return min(times), out


def run_flowsolve(w, log_t1, solver, repeats, **options):
    first = w.fs_solve(log_t1, solver=solver, **options)  # compiles (cached per structure)
    if first.success:
        wall, sol = best_of(lambda: w.fs_solve(log_t1, solver=solver, **options), repeats)
    else:  # no repeats of a failed (step-budget) run: its compiled run time
        wall, sol = first.stats["wall_time"], first
    steps = sol.stats["num_accepted_steps"] + sol.stats["num_rejected_steps"]
    theta = w.fs_theta(sol)
    note = f"{sol.info['solver']}"
    if sol.info.get("switched_at") is not None:
        note += f" (switch at log t = {sol.info['switched_at']:.3g})"
    if not sol.success:
        note += f"; {sol.result.name}"
    res = outcome(w, log_t1, reached=sol.success, steps=steps, wall=wall, theta=theta,
                  evals=sol.stats["num_vf_evals"], note=note,
                  s_reached=w.clock_end(sol.log_t_final) if w.clock == "log" else math.exp(sol.log_t_final))
    res["compile_s"] = first.stats["compile_time"]
    res["accepted"] = sol.stats["num_accepted_steps"]
    res["solver"] = sol.info["solver"]
    res["auto_switch"] = "switched_at" in sol.info  # Tsit5 → Rodas5P composite
    return res


def newton():
    return diffrax.with_stepsize_controller_tols(optx.Newton)(cauchy_termination=False)


def diffrax_solver(name):
    """The diffrax solver behind one of flowsolve's solver names, written out as a
    user would (implicit ones with Newton at the controller's tolerances, the root
    finder flowsolve's documentation describes). diffrax has no Rosenbrock solver:
    for `"rodas5p"` the hand-written peer uses `fs.Rodas5P` as its diffrax solver."""
    implicit = {"kvaerno3": diffrax.Kvaerno3, "kvaerno4": diffrax.Kvaerno4,
                "kvaerno5": diffrax.Kvaerno5, "implicit_euler": diffrax.ImplicitEuler}
    if name in implicit:
        return implicit[name](root_finder=newton())
    if name == "rodas5p":
        return fs.Rodas5P()
    if name == "ros34pw2-gn":
        return fs.Ros34PW2(jacobian="gauss-newton")
    return {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8,
            "bosh3": diffrax.Bosh3, "heun": diffrax.Heun, "ralston": diffrax.Ralston}[name]()


def auto_solvers(auto_rows):
    """The fixed solvers `"auto"` ran on a workload (`"tsit5→rodas5p"`: both), in
    order of first use; the hand-written diffrax peer gets each."""
    names = []
    for r in auto_rows:
        for name in r["solver"].split("→"):
            if name not in names:
                names.append(name)
    return names


_HAND = {}


def run_hand_diffrax(w, log_t1, solver, repeats, term="own"):
    """diffeqsolve on the hand-written vector field (`term="own"`), or on flowsolve's
    flow used as a diffrax term (`term="flowsolve"`), jitted; the second call timed."""
    if solver.endswith("-gn"):
        # The Gauss–Newton W-method reads the flow's Gauss–Newton system, which a
        # hand-written vector field does not have: the peer runs on flowsolve's term.
        term = "flowsolve"
    key = (w.name, solver, term)
    if key not in _HAND:
        dsolver = diffrax_solver(solver)
        if term == "own":
            ode = diffrax.ODETerm(w.jax_vf)
            args, y0 = w.jax_args(), w.theta0
        else:
            ode = w.flow.term(w.clock)
            args, y0 = None, eqx.filter(w.model, eqx.is_inexact_array)

        @jax.jit
        def run(y0, args, s1):
            sol = diffrax.diffeqsolve(
                ode, dsolver, 0.0, s1, None, y0, args=args,
                stepsize_controller=diffrax.PIDController(rtol=w.rtol, atol=w.atol),
                saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=jnp.stack([jnp.zeros_like(s1), s1])),
                                            diffrax.SubSaveAt(t1=True)]),
                max_steps=w.max_steps, throw=False)
            return sol.ys, sol.ts, sol.stats, sol.result._value

        _HAND[key] = (run, y0, args)
    run, y0, args = _HAND[key]
    s1 = jnp.asarray(w.clock_end(log_t1))
    t0 = time.perf_counter()
    jax.block_until_ready(run(y0, args, s1))
    compile_s = time.perf_counter() - t0
    wall, (ys, ts, stats, code) = best_of(lambda: jax.block_until_ready(run(y0, args, s1)), repeats)
    final = jax.tree_util.tree_map(lambda x: x[-1], ys[1])
    theta = np.asarray(ravel_pytree(final)[0])
    ok = int(code) == int(diffrax.RESULTS.successful._value)
    res = outcome(w, log_t1, reached=ok, steps=int(stats["num_steps"]), wall=wall, theta=theta,
                  s_reached=float(ts[1][-1]), note="" if ok else "max_steps / failed")
    res["compile_s"] = compile_s
    return res


def run_scipy(w, log_t1, method, cap):
    from scipy.integrate import solve_ivp

    s1 = w.clock_end(log_t1)
    start = time.perf_counter()
    last = [0.0]

    def f(s, theta):
        last[0] = s
        if time.perf_counter() - start > cap:
            raise Capped(s)
        return w.np_vf(s, theta)

    try:
        with np.errstate(all="ignore"):
            sol = solve_ivp(f, (0.0, s1), w.theta0_np, method=method, rtol=w.rtol, atol=w.atol)
    except Capped as c:
        return outcome(w, log_t1, reached=False, steps=None, wall=cap, theta=None, s_reached=c.s,
                       note=f"did not reach t = {_label(log_t1)} in {cap:g} s")
    wall = time.perf_counter() - start
    ok = sol.status == 0 and np.all(np.isfinite(sol.y[:, -1]))
    return outcome(w, log_t1, reached=ok, steps=sol.t.size - 1, evals=sol.nfev, wall=wall,
                   theta=sol.y[:, -1], s_reached=float(sol.t[-1]),
                   note="" if ok else f"stopped: {sol.message}")


def run_torchdiffeq(w, log_t1, cap):
    import torch
    import torchdiffeq

    torch.set_default_dtype(torch.float64)
    # One intra-op thread: with two, on a 2-core machine shared with XLA's threads,
    # torch's spinning workers made each evaluation of these small problems ~15×
    # slower (measured: 524 evaluations of the logistic field, 7.8 s vs 0.53 s).
    torch.set_num_threads(1)
    data = tuple(torch.tensor(np.asarray(a)) for a in w.jax_args())
    start = time.perf_counter()

    class Field(torch.nn.Module):
        accepted = rejected = evals = 0
        last = 0.0

        def forward(self, s, theta):
            self.evals += 1
            self.last = float(s)
            if time.perf_counter() - start > cap:
                raise Capped(self.last)
            return w.torch_vf(torch, data, s, theta)

        def callback_accept_step(self, t0, y0, dt):
            self.accepted += 1

        def callback_reject_step(self, t0, y0, dt):
            self.rejected += 1

    field = Field()
    span = torch.tensor([0.0, w.clock_end(log_t1)])
    try:
        with torch.no_grad():
            ys = torchdiffeq.odeint(field, torch.as_tensor(w.theta0_np), span, method="dopri5",
                                    rtol=w.rtol, atol=w.atol, options=dict(max_num_steps=10**7))
    except Capped as c:
        return outcome(w, log_t1, reached=False, steps=field.accepted + field.rejected, wall=cap,
                       theta=None, s_reached=c.s, note=f"did not reach t = {_label(log_t1)} in {cap:g} s")
    except (AssertionError, RuntimeError) as err:  # underflow in dt, NaN
        return outcome(w, log_t1, reached=False, steps=field.accepted + field.rejected,
                       wall=time.perf_counter() - start, theta=None, s_reached=field.last,
                       note=f"failed: {str(err).splitlines()[0][:60]}")
    wall = time.perf_counter() - start
    theta = ys[-1].numpy()
    ok = bool(np.all(np.isfinite(theta)))
    return outcome(w, log_t1, reached=ok, steps=field.accepted + field.rejected, evals=field.evals,
                   wall=wall, theta=theta, s_reached=float(span[-1]), note="" if ok else "non-finite")


def _gd_program(w):
    args = w.jax_args()

    @jax.jit
    def chunk(theta, eta, k):
        return lax.fori_loop(0, k, lambda _, th: th + eta * w.jax_step_direction(th, *args), theta)

    return chunk


def run_gd(w, horizons, cap):
    """Fixed-step GD (step k at t = kη), one pass over the horizons in increasing
    order, in chunks so the cap can be checked; the wall time at a horizon is the
    cumulative time from t = 0."""
    chunk = _gd_program(w)
    eta = jnp.asarray(w.eta)
    theta = w.theta0
    jax.block_until_ready(chunk(theta, eta, 1))  # compile (k is traced)
    t0 = time.perf_counter()
    k1 = 1000
    jax.block_until_ready(chunk(theta, eta, k1))
    per_step = max((time.perf_counter() - t0) / k1, 1e-9)
    rows, done, wall, failed = {}, 0, 0.0, None
    for label, log_t1 in horizons:
        if failed is not None:
            rows[label] = failed
            continue
        needed = math.exp(log_t1) / w.eta if log_t1 < 700 else math.inf
        if needed > 1e15:
            failed = rows[label] = outcome(w, log_t1, reached=False, steps=None, wall=None, theta=None,
                                           note=f"needs {_steps_label(log_t1, w.eta)} steps")
            continue
        needed = int(round(needed))
        while done < needed and wall < cap:
            k = int(min(needed - done, max(1000, 0.5 / per_step)))
            t0 = time.perf_counter()
            theta = jax.block_until_ready(chunk(theta, eta, k))
            wall += time.perf_counter() - t0
            done += k
        if done < needed:
            failed = rows[label] = outcome(
                w, log_t1, reached=False, steps=done, wall=wall, theta=None,
                s_reached=_to_clock(w, done * w.eta),
                note=f"did not reach t = {_label(log_t1)} in {cap:g} s ({needed:.2g} steps)")
        else:
            th = np.asarray(theta)
            ok = bool(np.all(np.isfinite(th)))
            rows[label] = outcome(w, log_t1, reached=ok, steps=done, wall=wall, theta=th,
                                  note="" if ok else "diverged")
            if not ok:
                failed = rows[label]
    return rows


def run_heuristic_euler(w, horizons, cap, grow=1.1, damp=10.0):
    """Forward Euler in t with the gradientflow package's step rule: after an
    accepted step (loss did not increase) dt *= 1.1; otherwise dt /= 10 and retry."""
    args = w.jax_args()

    @jax.jit
    def trial(theta, dt):
        new = theta + dt * w.jax_step_direction(theta, *args)
        return new, w.jax_loss(new, *args)

    theta = w.theta0
    loss = float(w.jax_loss(theta, *args))
    jax.block_until_ready(trial(theta, jnp.asarray(w.eta)))  # compile
    t, dt, steps, wall, rows, failed = 0.0, w.eta, 0, 0.0, {}, None
    start = time.perf_counter()
    for label, log_t1 in horizons:
        if failed is not None:
            rows[label] = failed
            continue
        if log_t1 > 709.0:
            failed = rows[label] = outcome(w, log_t1, reached=False, steps=None, wall=None, theta=None,
                                           note="t overflows float64 (steps in t)")
            continue
        t1 = math.exp(log_t1)
        while t < t1 and time.perf_counter() - start < cap:
            h = min(dt, t1 - t)
            new, new_loss = trial(theta, jnp.asarray(h))
            new_loss = float(new_loss)
            steps += 1
            if new_loss <= loss and np.isfinite(new_loss):
                theta, loss, t = new, new_loss, t + h
                dt = dt * grow if h == dt else dt
            else:
                dt /= damp
                if dt < 1e-300:
                    break
        wall = time.perf_counter() - start
        if t < t1:
            failed = rows[label] = outcome(w, log_t1, reached=False, steps=steps, wall=wall, theta=None,
                                           s_reached=_to_clock(w, t),
                                           note=f"did not reach t = {_label(log_t1)} in {cap:g} s")
        else:
            rows[label] = outcome(w, log_t1, reached=True, steps=steps, wall=wall, theta=np.asarray(theta))
    return rows


def _to_clock(w, t):
    return math.log1p(t) if w.clock == "log" else t


def _label(log_t1):
    return f"{math.exp(log_t1):.3g}" if log_t1 < 700 else f"e^{log_t1:.6g}"


def _steps_label(log_t1, eta):
    return f"e^{log_t1 - math.log(eta):.4g}"


# ----------------------------------------------------------------------------- driver


def peer_list(w, hand_solvers):
    """(key, label, kind) of every peer for a workload."""
    peers = [(f"hand_{solver}", f"hand diffrax {solver}", ("hand", solver, "own"))
             for solver in hand_solvers]
    peers += [
        ("scipy_rk45", "scipy RK45", ("scipy", "RK45")),
        ("scipy_lsoda", "scipy LSODA", ("scipy", "LSODA")),
        ("torch_dopri5", "torchdiffeq dopri5", ("torch",)),
        ("gd", w.gd_note, ("gd",)),
        ("heuristic_euler", "heuristic Euler (gradientflow)", ("euler",)),
    ]
    return peers


def missing(package):
    try:
        return importlib.util.find_spec(package) is None
    except (ImportError, ValueError):
        return True


def compare(w, horizons, cap, repeats, log, skip_peers=False):
    rows = []
    # flowsolve auto, and flowsolve with the fixed solvers the overhead is measured on.
    fs_rows = {}
    for label, log_t1 in horizons:
        log(f"[{w.name}] flowsolve auto, t = {label}")
        fs_rows[label] = run_flowsolve(w, log_t1, "auto", repeats)
        if not fs_rows[label]["reached"]:
            fs_rows[label]["note"] += f" (reached log t = {fs_rows[label]['log_t_reached']:.4g})"
    for label, _ in horizons:
        fs_rows[label]["rtol"] = w.rtol
        rows.append({"workload": w.name, "horizon": label, "peer": "flowsolve (auto)", **fs_rows[label]})
    # The peers control each parameter's error by its own size; flowsolve's default
    # on the log clock is normwise (`error_norm`), which takes fewer steps for a
    # larger per-parameter error. Speed-ups are taken against flowsolve with the
    # peers' rule, so that equal tolerances mean equal error control.
    ref_rows = fs_rows
    if SAME_CONTROLLER and w.clock == "log":
        ref_rows = {}
        for label, log_t1 in horizons:
            log(f"[{w.name}] flowsolve auto, per-parameter error control, t = {label}")
            ref_rows[label] = run_flowsolve(w, log_t1, "auto", repeats, **SAME_CONTROLLER)
            if not ref_rows[label]["reached"]:
                ref_rows[label]["note"] += f" (reached log t = {ref_rows[label]['log_t_reached']:.4g})"
            rows.append({"workload": w.name, "horizon": label, "peer": REF_PEER, **ref_rows[label]})
    # Work–precision: flowsolve (auto) at looser and tighter tolerances (default error
    # control), so that each peer is also compared with the fastest flowsolve run that
    # is at least as accurate as it.
    for factor in [] if skip_peers else w.ladder():
        rtol, atol = w.rtol * factor, w.atol * factor
        failed = None
        for label, log_t1 in horizons:
            peer = f"flowsolve (auto, rtol {rtol:.2g})"
            if failed is not None:
                rows.append({"workload": w.name, "horizon": label, "peer": peer, **failed,
                             "note": f"not run: {failed['note']} at a smaller horizon"})
                continue
            log(f"[{w.name}] flowsolve auto, rtol {rtol:.2g} / atol {atol:.2g}, t = {label}")
            r = run_flowsolve(w, log_t1, "auto", repeats, rtol=rtol, atol=atol)
            r["rtol"] = rtol
            if not r["reached"]:
                r["note"] += f" (reached log t = {r['log_t_reached']:.4g})"
                failed = r
            rows.append({"workload": w.name, "horizon": label, "peer": peer, **r})
    for _key, name, kind in [] if skip_peers else peer_list(w, auto_solvers(fs_rows.values())):
        if kind[0] == "torch" and (missing("torch") or missing("torchdiffeq")):
            log(f"[{w.name}] {name}: SKIPPED, torch/torchdiffeq not installed (pip install 'flowsolve[bench]')")
            for label, _ in horizons:
                rows.append({"workload": w.name, "horizon": label, "peer": name, "reached": False,
                             "steps": None, "wall_s": None, "error": float("nan"),
                             "note": "skipped: torchdiffeq not installed"})
            continue
        if kind[0] in ("gd", "euler"):
            log(f"[{w.name}] {name}")
            fn = run_gd if kind[0] == "gd" else run_heuristic_euler
            results = fn(w, horizons, cap)
        else:
            results, failed = {}, None
            for label, log_t1 in horizons:
                if failed is not None:
                    results[label] = {**failed, "note": f"not run: {failed['note']} at a smaller horizon"}
                    continue
                log(f"[{w.name}] {name}, t = {label}")
                if kind[0] == "hand":
                    results[label] = run_hand_diffrax(w, log_t1, kind[1], repeats)
                elif kind[0] == "scipy":
                    results[label] = run_scipy(w, log_t1, kind[1], cap)
                else:
                    results[label] = run_torchdiffeq(w, log_t1, cap)
                if not results[label]["reached"]:
                    failed = results[label]
        for label, _ in horizons:
            rows.append({"workload": w.name, "horizon": label, "peer": name, **results[label]})
    for r in rows:
        f = ref_rows[r["horizon"]]
        r["reference_peer"] = REF_PEER if ref_rows is not fs_rows else "flowsolve (auto)"
        if not r["peer"].startswith("flowsolve") and f["reached"] and r.get("reached") and r["wall_s"]:
            r["speedup"] = r["wall_s"] / f["wall_s"]
    if not skip_peers:
        match_peers(w, rows, horizons, repeats, log)
    equal_accuracy(rows)
    return rows


def _aim(points, target):
    """The rtol at which flowsolve's error should be `target`: log–log interpolation
    of error against rtol over `points` (rtol, error), slope 1 beyond them."""
    points = sorted(points)
    lr = [math.log(r) for r, _ in points]
    le = [math.log(e) for _, e in points]
    lt = math.log(target)
    for i in range(len(points) - 1):
        lo, hi = sorted((le[i], le[i + 1]))
        if lo <= lt <= hi and le[i + 1] != le[i]:
            return math.exp(lr[i] + (lt - le[i]) * (lr[i + 1] - lr[i]) / (le[i + 1] - le[i]))
    nearest = min(range(len(points)), key=lambda i: abs(le[i] - lt))
    return math.exp(lr[nearest] + lt - le[nearest])


def match_peers(w, rows, horizons, repeats, log):
    """Work–precision matching: for each peer that finished with an error below 0.1
    (a larger one is a wrong answer, not a less accurate one) that no flowsolve run
    so far matches closely (the fastest run at least as accurate is more than 3×
    more accurate), run flowsolve (auto, default error control) at the tolerance
    interpolated to give 0.7× the peer's error, and once more, re-aimed with that
    run's error, if it still does not match: no looser than `LOOSEST_AIM` (or the
    ladder's loosest run, if looser), no tighter than 10× the reference's. Each
    such run is a measured row; `equal_accuracy` then chooses among all of them."""
    floor = max(10 * w.ref_rtol, 1e-14)  # the reference stays 10× tighter
    ceiling = max(w.rtol * max(w.ladder() + [1.0]), LOOSEST_AIM)
    for label, log_t1 in horizons:
        def ours(label=label):
            return _flowsolve_runs(rows, w.name, label)
        for r in [r for r in rows if r["horizon"] == label]:
            if r["peer"].startswith("flowsolve") or not _measured(r) or not 0 < r["error"] < 0.1:
                continue
            for _ in range(2):
                good = [f for f in ours() if f["error"] <= r["error"]]
                if good and min(good, key=lambda f: f["wall_s"])["error"] >= r["error"] / 3:
                    break
                points = [(f["rtol"], f["error"]) for f in ours() if "rtol" in f and f["error"] > 0]
                if not points:
                    break
                rtol = float(f"{min(max(_aim(points, 0.7 * r['error']), floor), ceiling):.2g}")
                tried = [f["rtol"] for f in rows if (f["workload"], f["horizon"]) == (w.name, label)
                         and f["peer"].startswith("flowsolve") and "rtol" in f]
                if any(math.isclose(t, rtol, rel_tol=0.05) for t in tried):
                    break  # that tolerance has run already (finished or not)
                atol = w.atol * rtol / w.rtol
                log(f"[{w.name}] flowsolve auto at rtol {rtol:.2g} (aimed at {r['peer']}'s error "
                    f"{r['error']:.2g}), t = {label}")
                f = run_flowsolve(w, log_t1, "auto", repeats, rtol=rtol, atol=atol)
                f["rtol"] = rtol
                rows.append({"workload": w.name, "horizon": label,
                             "peer": f"flowsolve (auto, rtol {rtol:.2g})", **f})


#: The loosest tolerance a run aimed at a peer's error may take. Looser, an
#: adaptive solver's local error estimate stops meaning much; the aimed run's error
#: is measured either way, and it counts only if no larger than the peer's.
LOOSEST_AIM = 1e-2


def equal_accuracy(rows):
    """Speed-up at equal accuracy: a peer's wall time over that of the fastest
    flowsolve (auto) run, at any tolerance or error control tried, whose error is no
    larger than the peer's (`speedup_equal_accuracy`, and which run: `matched_by`).
    When no flowsolve run is that accurate, or the peer's error is 0.1 or more (a
    wrong answer), `matched_by` says so and the speed-up is None."""
    for r in rows:
        if r["peer"].startswith("flowsolve") or not _measured(r):
            continue
        if r["error"] >= 0.1:
            r["speedup_equal_accuracy"] = None
            r["matched_by"] = "not compared: error ≥ 0.1 (a wrong answer)"
            continue
        ours = _flowsolve_runs(rows, r["workload"], r["horizon"])
        good = [f for f in ours if f["error"] <= r["error"]]
        if good:
            best = min(good, key=lambda f: f["wall_s"])
            r["speedup_equal_accuracy"] = r["wall_s"] / best["wall_s"]
            r["matched_by"] = _short(best["peer"])
        else:
            r["speedup_equal_accuracy"] = None
            r["matched_by"] = (f"no flowsolve run this accurate (best {min(f['error'] for f in ours):.1e})"
                               if ours else "no flowsolve run reached the horizon")


def _measured(r):
    """A run that reached its horizon, with a wall time and a finite error."""
    return bool(r.get("reached") and r.get("wall_s") and math.isfinite(r.get("error", float("nan"))))


def _flowsolve_runs(rows, workload, horizon):
    """flowsolve's runs that reached `horizon` on `workload` with a measured error."""
    return [f for f in rows if (f["workload"], f["horizon"]) == (workload, horizon)
            and f["peer"].startswith("flowsolve") and _measured(f)]


def _equal_text(r, unit=""):
    """The equal-accuracy cell: `"15.5 (rtol 4.8e-05)"`, or why there is none."""
    x = r.get("speedup_equal_accuracy")
    return f"{x:.3g}{unit} ({r['matched_by']})" if x is not None else r.get("matched_by", "—")


def _short(peer):
    """`"flowsolve (auto, rtol 1e-09)"` → `"rtol 1e-09"`; the default run → `"default"`."""
    inner = peer[len("flowsolve ("):-1]
    return "default" if inner == "auto" else inner.removeprefix("auto, ")


#: The flowsolve run that speed-ups are taken against on log-clock workloads.
REF_PEER = "flowsolve (auto, per-parameter error)"


#: The hand-written peer controls each parameter's error by its own size (diffrax's
#: PIDController); where `fs.solve` can measure errors otherwise (`error_norm`), the
#: overhead is measured with diffrax's rule, so that both take the same steps.
SAME_CONTROLLER = (
    {"error_norm": "componentwise"} if "error_norm" in inspect.signature(fs.solve).parameters else {}
)


def overhead(w, horizons, repeats, log, auto_rows):
    """flowsolve against hand-written diffrax with the same fixed solver (the one
    `"auto"` ended with), where flowsolve reached the horizon. The three are timed
    in interleaved rounds (min over rounds), so that load on a shared machine hits
    them alike."""
    out = []
    measured = set()
    for label, log_t1 in horizons:
        auto = auto_rows[label]
        if not auto["reached"]:
            continue
        # A switched solve spends most of its time in Rodas5P: compare on that.
        solver = auto["solver"].split("→")[-1]
        if solver.endswith("-gn") and solver in measured:
            # The Gauss–Newton W-method from t = 0 takes ~9 s a run on `mc`, the same
            # at every horizon past convergence: once is enough.
            continue
        measured.add(solver)
        log(f"[{w.name}] overhead, {solver}, t = {label}")
        runs = {
            "flowsolve": lambda lt=log_t1, sv=solver: run_flowsolve(w, lt, sv, 1, **SAME_CONTROLLER),
            "own": lambda lt=log_t1, sv=solver: run_hand_diffrax(w, lt, sv, 1, term="own"),
            "fs_term": lambda lt=log_t1, sv=solver: run_hand_diffrax(w, lt, sv, 1, term="flowsolve"),
        }
        best = {}
        # Short solves get more rounds: on a shared machine a ~20 ms solve's minimum
        # over 5 runs still varies by ±5 %, the size of the effect measured. Rounds
        # continue to at least `repeats + 2`, then until ~3 s have been spent or 40
        # rounds; solves of a second or more stop after two.
        min_rounds, started = max(2, repeats + 2), time.perf_counter()
        for i in range(40):
            for key, fn in runs.items():
                r = fn()
                if key not in best or r["wall_s"] < best[key]["wall_s"]:
                    best[key] = r
            if i >= 1 and max(b["wall_s"] for b in best.values()) >= 1.0:
                break  # long runs: two rounds
            if i + 1 >= min_rounds and time.perf_counter() - started >= 3.0:
                break
        rounds = i + 1
        ours, own, term = best["flowsolve"], best["own"], best["fs_term"]
        out.append({
            "workload": w.name, "horizon": label, "solver": solver,
            "flowsolve_s": ours["wall_s"], "hand_s": own["wall_s"], "hand_fs_term_s": term["wall_s"],
            "steps": (ours["steps"], own["steps"], term["steps"]),
            "ratio": ours["wall_s"] / own["wall_s"], "ratio_vs_fs_term": ours["wall_s"] / term["wall_s"],
            "reached": (ours["reached"], own["reached"], term["reached"]),
            "rounds": rounds,
        })
    return out


def fmt(x, spec):
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def markdown(rows, over, workloads):
    lines = ["| workload | horizon | peer | steps | wall [s] | error vs reference | "
             "flowsolve speed-up, same tolerance | flowsolve speed-up at equal accuracy | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    fs_err = {(r["workload"], r["horizon"]): r["error"] for r in rows
              if r["peer"] == r.get("reference_peer", "flowsolve (auto)")}
    for r in rows:
        speed = fmt(r.get("speedup"), ".3g")
        ref = fs_err.get((r["workload"], r["horizon"]))
        if r.get("speedup") is not None and ref and math.isfinite(ref) and math.isfinite(r["error"]):
            if r["error"] > 10 * ref:
                speed += " (less accurate)"
        note = r.get("note", "")
        if not r.get("reached") and r.get("log_t_reached") is not None and "reached" not in note:
            note += f" (reached log t = {r['log_t_reached']:.4g})"
        equal = _equal_text(r) if "matched_by" in r else ""
        lines.append(f"| {r['workload']} | {r['horizon']} | {r['peer']} | {fmt(r.get('steps'), 'd')} | "
                     f"{fmt(r.get('wall_s'), '.3g')} | {fmt(r.get('error'), '.2e')} | {speed} | {equal} | {note} |")
    lines += ["", "References: " + "; ".join(f"`{w.name}`: {w.reference_note}" for w in workloads), ""]
    lines += ["| workload | horizon | solver | fs.solve [s] | hand diffrax [s] | hand diffrax, fs term [s] | "
              "fs ÷ hand | fs − hand [ms] | fs ÷ fs-term | steps (fs, hand, fs-term) | rounds |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in over:
        lines.append(f"| {o['workload']} | {o['horizon']} | {o['solver']} | {o['flowsolve_s']:.3g} | "
                     f"{o['hand_s']:.3g} | {o['hand_fs_term_s']:.3g} | {o['ratio']:.2f} | "
                     f"{1e3 * (o['flowsolve_s'] - o['hand_s']):.1f} | {o['ratio_vs_fs_term']:.2f} | "
                     f"{', '.join(str(s) for s in o['steps'])} | {o.get('rounds', '—')} |")
    return "\n".join(lines)


NON_DIFFRAX = ("scipy", "torchdiffeq", "GD", "NGD", "heuristic")


def summary(rows, over):
    """The issue's two claims, per horizon: flowsolve (auto) against the peers outside
    diffrax at t ≥ 1e8, and fs.solve against hand-written diffrax."""
    lines = ["flowsolve (auto) vs peers outside diffrax at t ≥ 1e8. Speed-up = peer wall / flowsolve wall, "
             "at equal accuracy: against the fastest flowsolve run (any tolerance tried) whose error is no "
             "larger than the peer's; in brackets, against flowsolve at the peer's tolerance (on log-clock "
             "workloads with the peers' per-parameter error control; '<': the peer less accurate by > 10×):"]
    fs_rows = {(r["workload"], r["horizon"]): r for r in rows
               if r["peer"] == r.get("reference_peer", "flowsolve (auto)")}
    for (workload, horizon), f in fs_rows.items():
        if not horizon.startswith("e^") and float(horizon) < 1e8:
            continue
        done, not_done = [], []
        for r in rows:
            if (r["workload"], r["horizon"]) != (workload, horizon) or not r["peer"].startswith(NON_DIFFRAX):
                continue
            peer = r["peer"].split(" (")[0]
            if r.get("speedup") is not None or "matched_by" in r:
                equal = _equal_text(r, "×")
                same = ""
                if r.get("speedup") is not None:
                    worse = math.isfinite(f["error"]) and not r["error"] <= 10 * f["error"]
                    same = f" [{r['speedup']:.3g}×{' <' if worse else ''}]"
                done.append(f"{peer} {equal}{same}")
            elif r.get("reached"):  # flowsolve did not get there
                done.append(f"{peer} in {r['wall_s']:.3g} s (error {r['error']:.1e})")
            else:
                not_done.append(peer)
        head = (f"  {workload} t = {horizon}: flowsolve {f['wall_s']:.3g} s, error {f['error']:.1e}"
                if f["reached"] else f"  {workload} t = {horizon}: flowsolve did not reach it ({f['note']})")
        lines.append(head + "; finished: " + (", ".join(done) or "none")
                     + "; did not reach: " + (", ".join(not_done) or "none"))
    worst = max((o["ratio"] for o in over), default=float("nan"))
    lines.append(f"fs.solve ÷ hand-written diffrax (same solver): worst {worst:.2f}; "
                 f"÷ diffrax on flowsolve's own term: worst "
                 f"{max((o['ratio_vs_fs_term'] for o in over), default=float('nan')):.2f}")
    return "\n".join(lines)


#: Work–precision plot: (peer-name prefix, legend label, colour, marker), first match wins.
_STYLES = (
    ("hand diffrax tsit5", "hand diffrax Tsit5", "0.45", "o"),
    ("hand diffrax rodas5p", "hand diffrax Rodas5P", "0.45", "s"),
    ("hand diffrax", "hand diffrax, other solver", "0.45", "p"),
    ("scipy RK45", "scipy RK45", "C1", "^"),
    ("scipy LSODA", "scipy LSODA", "C2", "v"),
    ("torchdiffeq", "torchdiffeq dopri5", "C3", "P"),
    ("GD", "GD, fixed step", "C4", "X"),
    ("NGD", "NGD, fixed step", "C6", "X"),
    ("heuristic Euler", "heuristic Euler", "C5", "D"),
)


def _style(peer):
    """`(label, colour, marker)` of a peer in the work–precision figure."""
    return next(((label, c, m) for prefix, label, c, m in _STYLES if peer.startswith(prefix)), (peer, "k", "o"))


def work_precision_figure(rows):
    """Error against wall time, one panel per workload and horizon where some run
    has a measured error: flowsolve (auto)'s runs at every tolerance tried as one
    line (its default run starred), each peer as a point (hollow: error ≥ 0.1, a
    wrong answer), and the peers that did not get there named at the panel's top.
    Returns a `matplotlib.figure.Figure`."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullFormatter

    floor = lambda e: max(e, 1e-16)  # an exact 0 has no place on a log axis
    panels = {}
    for r in rows:
        panels.setdefault((r["workload"], r["horizon"]), []).append(r)
    panels = {k: v for k, v in panels.items() if any(_measured(r) for r in v)}
    if not panels:
        raise ValueError("No run reached a horizon with a measured error: nothing to plot.")
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.4 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    handles = {}
    for ax, ((workload, horizon), group) in zip(axes, panels.items()):
        xs, ys = [], []
        ours = sorted(_flowsolve_runs(group, workload, horizon), key=lambda f: f["error"])
        if ours:
            x, y = [floor(f["error"]) for f in ours], [f["wall_s"] for f in ours]
            (line,) = ax.plot(x, y, "-o", color="C0", ms=4, lw=1.5, zorder=3)
            handles.setdefault("flowsolve (auto), tolerances tried", line)
            xs += x
            ys += y
            for f in ours:
                if f["peer"] == "flowsolve (auto)":
                    star = ax.scatter([floor(f["error"])], [f["wall_s"]], marker="*", s=170, color="C0",
                                      edgecolor="k", zorder=4)
                    handles.setdefault("flowsolve (auto), default", star)
        others = [r for r in group if not r["peer"].startswith("flowsolve")]
        for r in filter(_measured, others):
            label, color, marker = _style(r["peer"])
            wrong = r["error"] >= 0.1
            h = ax.scatter([floor(r["error"])], [r["wall_s"]], marker=marker, s=55, zorder=3,
                           facecolor="none" if wrong else color, edgecolor=color, linewidth=1.4)
            handles.setdefault(label, h)
            xs.append(floor(r["error"]))
            ys.append(r["wall_s"])
        # At least two decades on each axis (no crowded sub-decade labels), and
        # headroom above the points for the list of peers that did not get there.
        for lo, hi, setter, top in ((min(xs), max(xs), ax.set_xlim, 1.0), (min(ys), max(ys), ax.set_ylim, 25.0)):
            mid = math.sqrt(lo * hi)
            lo, hi = min(lo / 2, mid / 10), max(hi * 2, mid * 10)
            setter(lo, hi * top)
        missed = sorted({_style(r["peer"])[0] for r in others if not _measured(r)})
        if missed:
            ax.text(0.02, 0.97, textwrap.fill("did not get there: " + ", ".join(missed), 52),
                    transform=ax.transAxes, fontsize=7, va="top", ha="left", color="0.3")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(numticks=6))
            axis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{workload}, t = {horizon}", fontsize=11)
        ax.set_xlabel("error against the reference", fontsize=9)
        ax.set_ylabel("wall time after compile [s]", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncols=min(4, len(handles)), fontsize=8, frameon=False)
    fig.suptitle("Work–precision: lower left is better (hollow: error ≥ 0.1, a wrong answer, not compared)",
                 fontsize=11)
    return fig


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer horizons, 5 s cap (~2 min)")
    parser.add_argument("--cap", type=float, default=None, help="seconds per peer run (default 20; --quick 5)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs of compiled solves (best of)")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--skip-peers", action="store_true",
                        help="only flowsolve (auto) and the overhead against hand-written diffrax")
    parser.add_argument("--json", default=None, help="write every row here")
    parser.add_argument("--plot", default=None, help="draw the work–precision figure here (e.g. wp.png)")
    parser.add_argument("--from-json", default=None,
                        help="run nothing: print the table and draw --plot from a --json file of an earlier run")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        rows, over = saved["rows"], saved["overhead"]
        workloads = [WORKLOADS[name] for name in dict.fromkeys(r["workload"] for r in rows)]
        print(markdown(rows, over, workloads))
        print()
        print(summary(rows, over))
        if args.plot:
            work_precision_figure(rows).savefig(args.plot, dpi=130)
            print(f"work–precision figure: {args.plot}")
        return
    cap = args.cap if args.cap is not None else (5.0 if args.quick else 20.0)
    repeats = args.repeats or (2 if args.quick else 3)
    start = time.perf_counter()

    def log(msg):
        print(f"  {time.perf_counter() - start:7.1f} s  {msg}", flush=True)

    for package in ("torch", "torchdiffeq"):  # scipy is a dependency of flowsolve itself
        if missing(package):
            print(f"torchdiffeq peer SKIPPED: `{package}` is not installed (pip install 'flowsolve[bench]')")
    rows, over, workloads = [], [], []
    for name in args.workloads:
        log(f"[{name}] building the workload and its references")
        w = WORKLOADS[name]()
        workloads.append(w)
        horizons = w.quick_horizons if args.quick else w.horizons
        rows_w = compare(w, horizons, cap, repeats, log, args.skip_peers)
        auto = {r["horizon"]: r for r in rows_w if r["peer"] == "flowsolve (auto)"}
        rows += rows_w
        over += overhead(w, horizons, repeats, log, auto)
    table = markdown(rows, over, workloads)
    print()
    print(table)
    print()
    print(summary(rows, over))
    print(f"\ntotal {time.perf_counter() - start:.0f} s; cap {cap:g} s per peer run")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "overhead": over, "cap_s": cap, "quick": args.quick,
                       "versions": {"jax": jax.__version__, "diffrax": diffrax.__version__,
                                    "python": platform.python_version()}},
                      f, indent=2, default=str)
    if args.plot:
        work_precision_figure(rows).savefig(args.plot, dpi=130)
        print(f"work–precision figure: {args.plot}")


if __name__ == "__main__":
    main()
