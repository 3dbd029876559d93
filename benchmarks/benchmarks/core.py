"""Gradient-flow solves, discrete descent and ensembles: wall time after compile,
steps, and accuracy against the hard-margin SVM.

Every `setup` builds its inputs, enables float64 and runs the call once, so the
`time_*` methods measure the compiled program (flowsolve caches compilations).
"""

import math
import time

import diffrax
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr

import flowsolve as fs

from ._common import count_vf_evals, enable_x64, use_cpu_devices


def _svm_problem():
    enable_x64()
    X, y = fs.datasets.separable_gaussian(n=200, d=50, seed=0)
    model = fs.models.Linear(50)
    return fs.Problem(model, fs.losses.Logistic(), X, y), model, X, y


class LogClockHorizon:
    """Gradient flow to t = e^{log_t1} on the 200 × 50 separable logistic problem."""

    params = [[100.0, 1000.0, 1e4, 1e6], ["auto", "tsit5", "rodas5p"]]
    param_names = ["log_t1", "solver"]
    timeout = 300

    def setup(self, log_t1, solver):
        if solver == "tsit5" and log_t1 > 1e3:
            raise NotImplementedError("Tsit5 needs ~40 steps per unit of log t here")
        self.problem, self.model, X, y = _svm_problem()
        self.gamma = fs.reference.max_margin(X, y, norm=2).margin
        self.kw = dict(log_t1=log_t1, clock="log", solver=solver, metrics=("margin",),
                       saveat=fs.SaveAt(num=2), max_steps=200_000)
        self.sol = fs.solve(fs.GradientFlow(self.problem), self.model, **self.kw)

    def time_solve(self, log_t1, solver):
        fs.solve(fs.GradientFlow(self.problem), self.model, **self.kw)

    def track_accepted_steps(self, log_t1, solver):
        return self.sol.stats["num_accepted_steps"]

    track_accepted_steps.unit = "steps"

    def track_margin_gap(self, log_t1, solver):
        return (self.gamma - float(self.sol.metrics["margin"][-1])) / self.gamma

    track_margin_gap.unit = "relative gap"

    def track_vf_evals(self, log_t1, solver):
        flow = fs.GradientFlow(self.problem)
        return count_vf_evals(lambda wrap: fs.solve(wrap(flow), self.model, **self.kw))

    track_vf_evals.unit = "evaluations (a Jacobian counts once)"


class AutoAcrossTolerances:
    """Gradient flow to t = 1e8 on the 200 × 50 separable logistic problem at rtol
    1e-2 … 1e-8: there Tsit5 is held by stability at every tolerance, so `auto`
    should switch to Rodas5P early at loose tolerances (its switch threshold scales
    as (rtol/1e-8)^(−1/5)) and take about Rodas5P's steps. Error: ‖w − w_ref‖/‖w_ref‖
    against Kvaerno5 at rtol 1e-11 (per-parameter control)."""

    params = [[1e-2, 1e-4, 1e-6, 1e-8], ["auto", "tsit5", "rodas5p"]]
    param_names = ["rtol", "solver"]
    timeout = 300

    def setup_cache(self):
        problem, model, _, _ = _svm_problem()
        ref = fs.solve(fs.GradientFlow(problem), model, log_t1=math.log(1e8), clock="log", solver="kvaerno5",
                       rtol=1e-11, atol=1e-13, error_norm="componentwise", metrics=(), saveat=fs.SaveAt(num=2))
        return [float(x) for x in ref.final.weight]

    def setup(self, w_ref, rtol, solver):
        self.problem, self.model, _, _ = _svm_problem()
        self.w_ref = jnp.asarray(w_ref)
        self.kw = dict(log_t1=math.log(1e8), clock="log", solver=solver, rtol=rtol, atol=1e-2 * rtol,
                       metrics=(), saveat=fs.SaveAt(num=2), max_steps=100_000)
        self.sol = fs.solve(fs.GradientFlow(self.problem), self.model, **self.kw)

    def time_solve(self, w_ref, rtol, solver):
        fs.solve(fs.GradientFlow(self.problem), self.model, **self.kw)

    def track_steps(self, w_ref, rtol, solver):
        return int(self.sol.stats["num_steps"])

    track_steps.unit = "steps (accepted + rejected)"

    def track_error(self, w_ref, rtol, solver):
        w = self.sol.final.weight
        return float(jnp.linalg.norm(w - self.w_ref) / jnp.linalg.norm(self.w_ref))

    track_error.unit = "relative error"


class DescendVsForiLoop:
    """`fs.descend` GD against a hand-written `lax.fori_loop` over `jax.grad`, per
    step (100 000 steps, n = 200, d = 50)."""

    steps = 100_000
    timeout = 300

    def setup(self):
        self.problem, self.model, X, y = _svm_problem()
        Xj, yj = jnp.asarray(X), jnp.asarray(y)

        @jax.jit
        def loop(w0, X, y):
            grad = jax.grad(lambda w: jnp.mean(jax.nn.softplus(-y * (X @ w))))
            return lax.fori_loop(0, self.steps, lambda _, w: w - grad(w), w0)

        self.loop = lambda: loop(jnp.zeros(50), Xj, yj)
        jax.block_until_ready(self.loop())
        self.run = lambda: fs.descend(self.problem, self.model, lr=1.0, steps=self.steps,
                                      metrics=("loss",), saveat=fs.SaveAt(num=100))
        self.run()

    def time_descend(self):
        self.run()

    def time_hand_written_fori_loop(self):
        jax.block_until_ready(self.loop())


def _ensemble_case(width):
    """256 two-layer tanh networks (1/√m scaling) on the 2-D clusters data, n = 20
    (width 16) or 50 (width 50), t1 = 10, Tsit5, rtol 1e-6, the loss at 20 points."""
    enable_x64()
    X, y = fs.datasets.two_d_nonlinear(n=20 if width == 16 else 50, kind="clusters", seed=0)
    models = [fs.models.TwoLayer(X.shape[1], width, key=jr.key(i), activation="tanh", scaling="ntk")
              for i in range(256)]
    flow = fs.GradientFlow(fs.Problem(models[0], fs.losses.Logistic(), X, y))
    kw = dict(t1=10.0, solver="tsit5", rtol=1e-6, atol=1e-8, metrics=("loss",), saveat=fs.SaveAt(num=20))
    return models, flow, kw


class Ensemble:
    """`fs.ensemble.solve` of 256 two-layer-network gradient flows (`_ensemble_case`)
    with JAX seeing the CPU as 1 or 2 devices (one per core of a 2-core machine;
    members sharded over them, each device running its own loop): the default
    `batch_size="auto"` (chunks of at most 32 members per device) and all of a
    device's members at once. `EnsembleBaselines` times what it replaces;
    `scripts/ensemble_throughput.py` has the breakdown."""

    params = [[16, 50], [1, 2]]
    param_names = ["width", "cpu_devices"]
    timeout = 600

    def setup(self, width, cpu_devices):
        use_cpu_devices(cpu_devices)
        self.models, self.flow, self.kw = _ensemble_case(width)
        fs.ensemble.solve(self.flow, self.models, **self.kw)
        fs.ensemble.solve(self.flow, self.models, batch_size=None, **self.kw)
        fs.solve(self.flow, self.models[0], **self.kw)

    def time_ensemble(self, width, cpu_devices):
        fs.ensemble.solve(self.flow, self.models, **self.kw)

    def time_ensemble_all_at_once(self, width, cpu_devices):
        fs.ensemble.solve(self.flow, self.models, batch_size=None, **self.kw)

    def track_ensemble_flows_per_second(self, width, cpu_devices):
        sol = fs.ensemble.solve(self.flow, self.models, **self.kw)
        return len(self.models) / max(sol.stats["wall_time"], math.ulp(1.0))

    track_ensemble_flows_per_second.unit = "flows/s"

    def track_speedup_over_python_loop(self, width, cpu_devices):
        """Whole `fs.ensemble.solve` calls against a loop of `fs.solve` over 64 of
        the members (scaled to 256), min of 3 each, interleaved."""
        ens, loop = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            fs.ensemble.solve(self.flow, self.models, **self.kw)
            ens.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for m in self.models[:64]:
                fs.solve(self.flow, m, **self.kw)
            loop.append((time.perf_counter() - t0) * len(self.models) / 64)
        return min(loop) / min(ens)

    track_speedup_over_python_loop.unit = "×"


class EnsembleBaselines:
    """What `Ensemble` replaces, on one CPU device: a Python loop of single
    (compiled, reused) `fs.solve` calls, and a hand-written `jax.vmap` of
    `diffrax.diffeqsolve` saving the same metric at the same points."""

    params = [[16, 50]]
    param_names = ["width"]
    timeout = 600

    def setup(self, width):
        self.models, self.flow, self.kw = _ensemble_case(width)
        fs.solve(self.flow, self.models[0], **self.kw)

        params = [eqx.filter(m, eqx.is_inexact_array) for m in self.models]
        static = eqx.partition(self.models[0], eqx.is_inexact_array)[1]
        self.stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *params)
        save_points = jnp.asarray(self.kw["saveat"].clock_points(0.0, 10.0, "linear"))
        flow = self.flow

        @jax.jit
        @jax.vmap
        def hand(y0):
            loss = lambda t, y, args: fs.metrics.loss(flow.problem, eqx.combine(y, static))
            saveat = diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=save_points, fn=loss), diffrax.SubSaveAt(t1=True)])
            return diffrax.diffeqsolve(
                flow, diffrax.Tsit5(), 0.0, 10.0, None, y0, saveat=saveat,
                stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-8), max_steps=100_000,
                throw=False,
            ).ys

        self.hand = hand
        jax.block_until_ready(self.hand(self.stacked))

    def time_python_loop(self, width):
        for m in self.models:
            fs.solve(self.flow, m, **self.kw)

    def time_hand_written_vmap(self, width):
        jax.block_until_ready(self.hand(self.stacked))
