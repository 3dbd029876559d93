"""Shared setup for the asv benchmarks.

Nothing here touches JAX at import time (asv imports every module to discover
benchmarks, and JAX's global config must not be flipped as a side effect); call
`enable_x64()` — or a builder that calls it — from inside `setup`.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
from jax.flatten_util import ravel_pytree

import flowsolve as fs


#: Training-set size of the natural-gradient benchmarks (n < p everywhere).
N_TRAIN = 200
#: Parameter counts p = width · (d + 1) of the two-layer network, d = 3 (two
#: coordinates and a bias), i.e. widths 250, 2 500, 25 000.
P_GRID = [1_000, 10_000, 100_000]
#: Relative residual the CG benchmarks ask for.
CG_RTOL = 1e-8


def enable_x64() -> None:
    """flowsolve works in float64; switch it on in the benchmark process."""
    jax.config.update("jax_enable_x64", True)


def use_cpu_devices(n: int) -> None:
    """Make JAX see the CPU as `n` devices (one per core), for the sharded ensemble
    cases. asv starts every benchmark in a fresh interpreter (`"launch_method":
    "spawn"`), so this runs before JAX does; where it cannot (JAX already running
    with another count, or not on a CPU), the case is skipped."""
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as err:  # backends already initialised
        raise NotImplementedError(f"cannot make {n} CPU devices here: {err}") from None
    if jax.devices()[0].platform != "cpu" or len(jax.devices()) != n:
        raise NotImplementedError(f"wanted {n} CPU devices, JAX has {jax.devices()}")


def two_layer_problem(p: int, *, n: int = N_TRAIN, seed: int = 0) -> fs.Problem:
    """Logistic regression with a two-layer mean-field ReLU network on the 2-D
    clusters data (with a bias coordinate), sized to `p` parameters."""
    enable_x64()
    X, y = fs.datasets.two_d_nonlinear(n=n, kind="clusters", seed=seed)
    d = X.shape[1]
    width, rest = divmod(p, d + 1)
    if rest:
        raise ValueError(f"p = {p} is not a multiple of d + 1 = {d + 1}.")
    model = fs.models.TwoLayer(d, width, key=jr.key(seed), activation="relu")
    return fs.Problem(model, fs.losses.Logistic(), jnp.asarray(X), jnp.asarray(y))


def trainable(problem: fs.Problem):
    """θ0: the model's inexact arrays (what the flows differentiate)."""
    return eqx.filter(problem.model, eqx.is_inexact_array)


def compile_call(fn, *args):
    """Jit and ahead-of-time compile `fn(*args)` with every array in `args` traced
    (none baked in as a constant), run it once to warm up, and return a
    zero-argument callable that runs the compiled program on the same inputs."""
    dynamic, static = eqx.partition(args, eqx.is_array)

    def flat(dynamic):
        return fn(*eqx.combine(dynamic, static))

    compiled = jax.jit(flat).lower(dynamic).compile()
    jax.block_until_ready(compiled(dynamic))
    return lambda: compiled(dynamic)


def velocity(flow, params):
    """The flow's vector field at t = 0 (log scale 0): one velocity pytree."""
    return flow.direction(params, 0.0)


def ntk_gram(params, static, X):
    """The "floor": the empirical NTK Gram matrix J Jᵀ in plain JAX — per-sample
    gradients by `vmap(grad)`, then one matrix product. Any natural-gradient step
    that goes through the n×n system costs at least about this much (without a
    closed-form Gram)."""
    theta, unravel = ravel_pytree(params)

    def single(th, x):
        return eqx.combine(unravel(th), static)(x)

    J = jax.vmap(jax.grad(single), in_axes=(None, 0))(theta, X)
    return J @ J.T


def model_static(problem: fs.Problem):
    """The non-array part of the model, to recombine with θ."""
    return eqx.filter(problem.model, eqx.is_inexact_array, inverse=True)


def relative_difference(a, b) -> float:
    """‖a − b‖ / ‖b‖ over two pytrees of the same structure."""
    va, _ = ravel_pytree(a)
    vb, _ = ravel_pytree(b)
    return float(jnp.linalg.norm(va - vb) / jnp.linalg.norm(vb))


# ------------------------------------------------------------------ canonical workloads
#
# The workloads of `scripts/compare_peers.py`, at horizons that keep an asv run
# short: GF on a separable logistic problem (n = 200, d = 50, log clock, t = 1e8),
# a width-1000 two-layer mean-field ReLU network on 50 points of the 2-D clusters
# data (log clock, t = 1e4, rtol 1e-4: at 1e-6 adaptive solvers crawl along the
# kinks, ~16 500 Tsit5 steps to t = 1e4), depth-3 completion of a 30 × 30 rank-2 matrix (linear clock, t = 1e4,
# through the escape from the saddle), and NGF on the logistic problem (log clock,
# t = 1e8).

WORKLOADS = ["logistic", "relu", "mc", "ngf"]


class Workload:
    """A flow, θ0, the keyword arguments of its `fs.solve`, and the same vector
    field written by hand in JAX on the flat parameter vector (for diffrax)."""

    def __init__(self, name: str):
        enable_x64()
        self.name = name
        if name in ("logistic", "ngf"):
            X, y = fs.datasets.separable_gaussian(n=200, d=50, seed=0)
            self.model = fs.models.Linear(50)
            problem = fs.Problem(self.model, fs.losses.Logistic(), X, y)
            self.flow = (fs.GradientFlow if name == "logistic" else fs.NaturalGradientFlow)(problem)
            self.kw = dict(log_t1=math.log(1e8), clock="log", rtol=1e-8, atol=1e-10)
            self.args = (jnp.asarray(X), jnp.asarray(y))
        elif name == "relu":
            X, y = fs.datasets.two_d_nonlinear(n=50, kind="clusters", seed=0)
            self.model = fs.models.TwoLayer(X.shape[1], 1000, key=jr.key(0), activation="relu")
            self.flow = fs.GradientFlow(fs.Problem(self.model, fs.losses.Logistic(), X, y))
            self.kw = dict(log_t1=math.log(1e4), clock="log", rtol=1e-4, atol=1e-6)
            self.args = (jnp.asarray(X), jnp.asarray(y))
        elif name == "mc":
            data = fs.datasets.low_rank_completion((30, 30), 2, seed=0)
            X, y = data
            self.model = fs.models.MatrixFactorization((30, 30), depth=3, key=jr.key(0), init_scale=1e-3)
            self.flow = fs.GradientFlow(fs.Problem(self.model, fs.losses.Squared(), X, y))
            self.kw = dict(t1=1e4, clock="linear", rtol=1e-8, atol=1e-10)
            self.args = (jnp.asarray(X[:, 0]), jnp.asarray(X[:, 1]), jnp.asarray(y))
        else:
            raise ValueError(f"unknown workload {name!r}")
        self.kw.update(saveat=fs.SaveAt(num=2), max_steps=100_000,
                       metrics=("loss",) if name == "mc" else ("log_loss",))
        self.theta0, self.unravel = ravel_pytree(trainable_of(self.model))

    @property
    def s1(self) -> float:
        if self.kw["clock"] == "log":
            return float(np.logaddexp(0.0, self.kw["log_t1"]))
        return float(self.kw["t1"])

    def solve(self, solver="auto", flow=None):
        return fs.solve(flow or self.flow, self.model, solver=solver, **self.kw)

    def hand_vf(self, s, theta, args):
        """What a careful user writes: JAX autodiff of the model, and on the log clock
        the loss derivative fused with e^s in the log domain."""
        if self.name == "mc":
            rows, cols, y = args

            def loss(th):
                W1, W2, W3 = (th[900 * k: 900 * (k + 1)].reshape(30, 30) for k in range(3))
                return 0.5 * jnp.mean(((W3 @ W2 @ W1)[rows, cols] - y) ** 2)

            return -jax.grad(loss)(theta)
        X, y = args
        if self.name == "ngf":
            u = y * (X @ theta)
            log_h = -jnp.logaddexp(0.0, u) - jnp.logaddexp(0.0, -u)
            c = jnp.max(log_h)
            F = X.T @ (jnp.exp(log_h - c)[:, None] * X)
            b = X.T @ (y * jnp.exp(-jnp.logaddexp(0.0, u) - c))
            return jnp.exp(s) * (jnp.linalg.pinv(F, rtol=1e-10, hermitian=True) @ b)
        if self.name == "logistic":
            predict = lambda th: X @ th
        else:
            m = self.model.hidden.shape[0]
            predict = lambda th: jnp.maximum(X @ th[: 3 * m].reshape(m, 3).T, 0.0) @ th[3 * m:] / m
        f, vjp = jax.vjp(predict, theta)
        (g,) = vjp(y * jnp.exp(s - jnp.logaddexp(0.0, y * f) - jnp.log(y.shape[0])))
        return g

    def hand_diffrax(self, solver_name: str):
        """A jitted `diffeqsolve` of `hand_vf` with the solver `solver_name`, flowsolve's
        PID tolerances and save points, compiled and run once; returns a zero-argument
        callable."""
        solver = diffrax_solver(solver_name)
        term = diffrax.ODETerm(self.hand_vf)
        rtol, atol, s1 = self.kw["rtol"], self.kw["atol"], self.s1

        def run(theta0, args):
            return diffrax.diffeqsolve(
                term, solver, 0.0, s1, None, theta0, args=args,
                stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=jnp.array([0.0, s1])),
                                            diffrax.SubSaveAt(t1=True)]),
                max_steps=100_000, throw=False,
            ).ys

        return compile_call(run, self.theta0, self.args)

    def error(self, sol, reference) -> float:
        """Accuracy of a solve: ReLU, the drift of the conserved ‖a_j‖² − b_j² relative
        to their scale (exact: 0); otherwise the relative distance of the final
        parameters (matrix completion: of the end-to-end matrix) to `reference`."""
        if self.name == "relu":
            c0 = self.model.conserved_quantities()
            drift = jnp.max(jnp.abs(sol.final.conserved_quantities() - c0))
            scale = jnp.maximum(sol.final.conserved_scale(), self.model.conserved_scale())
            return float(drift / scale)
        if self.name == "mc":
            a, b = sol.final.end_to_end(), reference.final.end_to_end()
            return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
        return relative_difference(trainable_of(sol.final), trainable_of(reference.final))


def trainable_of(model):
    return eqx.filter(model, eqx.is_inexact_array)


def diffrax_solver(name: str):
    """The diffrax solver behind a flowsolve solver name, written out as a user would
    (implicit ones with Newton at the controller's tolerances; diffrax has no
    Rosenbrock solver, so `"rodas5p"` is flowsolve's, used as a diffrax solver)."""
    if name == "rodas5p":
        import flowsolve as fs

        return fs.Rodas5P()
    if name.startswith("kvaerno"):
        newton = diffrax.with_stepsize_controller_tols(optx.Newton)(cauchy_termination=False)
        return getattr(diffrax, name.capitalize())(root_finder=newton)
    return {"tsit5": diffrax.Tsit5, "bosh3": diffrax.Bosh3, "dopri5": diffrax.Dopri5,
            "dopri8": diffrax.Dopri8, "heun": diffrax.Heun}[name]()


_EVALS = [0]


def _tick():
    _EVALS[0] += 1


class CountingFlow(fs.AbstractFlow):
    """Wraps a flow and counts its vector-field evaluations through a host callback
    (a Jacobian — a vmapped JVP — counts once). For `track_*` only: the callback
    costs time."""

    inner: fs.AbstractFlow
    problem: fs.Problem

    def __init__(self, inner):
        self.inner = inner
        self.problem = inner.problem

    def direction(self, params, log_scale=0.0):
        jax.debug.callback(_tick)
        return self.inner.direction(params, log_scale)


def count_vf_evals(solve) -> int:
    """Vector-field evaluations made by `solve(flow_wrapper)`."""
    _EVALS[0] = 0
    solve(CountingFlow)
    return _EVALS[0]
