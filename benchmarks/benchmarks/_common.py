"""Shared setup for the asv benchmarks.

Nothing here touches JAX at import time (asv imports every module to discover
benchmarks, and JAX's global config must not be flipped as a side effect); call
`enable_x64()` — or a builder that calls it — from inside `setup`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
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
