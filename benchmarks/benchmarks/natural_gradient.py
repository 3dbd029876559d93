"""Cost of the natural-gradient vector field as the parameter count grows.

A two-layer mean-field ReLU network (`fs.models.TwoLayer`) on n = 200 points of
the 2-D clusters data with a bias coordinate, logistic loss, p = 1e3 → 1e5. Each
`time_*` times one evaluation of a jitted, compiled, warmed-up vector field at θ0;
the "floor" is forming the empirical NTK Gram matrix J Jᵀ in plain JAX, which any
Gram-system natural-gradient step must roughly pay. Same model, data and θ0 for
every class, so the rows line up.
"""

import os
import sys
import textwrap

import jax

import flowsolve as fs

from ._common import (
    CG_RTOL,
    N_TRAIN,
    P_GRID,
    compile_call,
    model_static,
    ntk_gram,
    relative_difference,
    trainable,
    two_layer_problem,
    velocity,
)


class GradientFlowCost:
    """Plain gradient flow −∇L: the baseline the natural-gradient cost is read against."""

    params = [P_GRID]
    param_names = ["p"]
    warmup_time = 0.0  # setup already ran the compiled program once

    def setup(self, p):
        problem = two_layer_problem(p)
        self.call = compile_call(velocity, fs.GradientFlow(problem), trainable(problem))

    def time_gf(self, p):
        jax.block_until_ready(self.call())


class NaturalGradientGramCost:
    """NGF through the n×n Gram system (TwoLayer forms J Jᵀ in closed form). This is
    also what `solve="auto"` picks on this problem for every p in the grid."""

    params = [P_GRID]
    param_names = ["p"]
    warmup_time = 0.0

    def setup(self, p):
        problem = two_layer_problem(p)
        flow = fs.NaturalGradientFlow(problem, solve="gram")
        self.call = compile_call(velocity, flow, trainable(problem))

    def time_ngf_gram(self, p):
        jax.block_until_ready(self.call())


class NaturalGradientDenseCost:
    """NGF through the p×p Fisher (eigendecomposition: O(p³)). Skipped where the
    Fisher would not fit (flowsolve refuses p×p above 8 GiB with a ValueError). At
    p = 1e4 one call takes minutes on a laptop-class CPU (2.6 min on 2 cores, twice
    with the warm-up: more than the rest of the suite together), so that case runs
    only with `FLOWSOLVE_BENCH_SLOW=1` in the environment, and as a single sample."""

    params = [P_GRID]
    param_names = ["p"]
    number = 1
    repeat = 1
    rounds = 1
    warmup_time = 0.0
    timeout = 1800

    def setup(self, p):
        if p >= 10_000 and not os.environ.get("FLOWSOLVE_BENCH_SLOW"):
            raise NotImplementedError("dense NGF at p ≥ 1e4 takes minutes: set FLOWSOLVE_BENCH_SLOW=1")
        problem = two_layer_problem(p)
        try:
            flow = fs.NaturalGradientFlow(problem, solve="dense")
        except ValueError as err:
            # asv reports a NotImplementedError from setup as "skipped"; keep the
            # library's reason in the log.
            print(f"NaturalGradientDenseCost(p={p}) skipped: {err}", file=sys.stderr)
            raise NotImplementedError(str(err)) from err
        self.call = compile_call(velocity, flow, trainable(problem))

    def time_ngf_dense(self, p):
        jax.block_until_ready(self.call())


class NaturalGradientCGCost:
    """Matrix-free NGF: lineax CG on the Gram system with JVP∘VJP products, to a
    1e-8 relative residual (iteration counts: `NaturalGradientCGAccuracy`)."""

    params = [P_GRID]
    param_names = ["p"]
    warmup_time = 0.0
    repeat = (1, 5, 30.0)
    rounds = 1
    timeout = 600

    def setup(self, p):
        problem = two_layer_problem(p)
        flow = fs.NaturalGradientFlow(problem, solve="cg", cg_rtol=CG_RTOL)
        self.call = compile_call(velocity, flow, trainable(problem))

    def time_ngf_cg(self, p):
        jax.block_until_ready(self.call())


class NTKGramFloorCost:
    """The floor: J Jᵀ from `vmap(grad)` per-sample gradients and one matmul, in
    plain JAX, on the same model and data."""

    params = [P_GRID]
    param_names = ["p"]
    warmup_time = 0.0

    def setup(self, p):
        problem = two_layer_problem(p)
        self.call = compile_call(
            ntk_gram, trainable(problem), model_static(problem), problem.X
        )

    def time_ntk_gram_floor(self, p):
        jax.block_until_ready(self.call())


class NaturalGradientCGAccuracy:
    """CG iterations to the 1e-8 relative residual, and how far the CG direction is
    from the (exact, eigendecomposition-based) Gram direction.

    `cg_steps` counts every CG iteration of the call: where the Gram system is
    inconsistent (rank-deficient J) flowsolve's CG falls back to the p-space normal
    equations after `cg_max_steps` (1000) iterations, so a count ≥ 1000 means the
    first solve did not converge and 2000 means neither did.
    """

    params = [P_GRID]
    param_names = ["p"]
    timeout = 600

    def setup_cache(self):
        # One process computes every p (the CG solve at p = 1e5 takes seconds);
        # the track_* methods only read the result.
        results = {}
        for p in P_GRID:
            problem = two_layer_problem(p)
            params = trainable(problem)
            cg = fs.NaturalGradientFlow(problem, solve="cg", cg_rtol=CG_RTOL)
            gram = fs.NaturalGradientFlow(problem, solve="gram")
            v_cg, info = compile_call(
                lambda f, th: f.direction_with_info(th), cg, params
            )()
            v_gram = compile_call(velocity, gram, params)()
            results[p] = {
                "cg_steps": int(info["cg_steps"]),
                "relative_difference": relative_difference(v_cg, v_gram),
            }
        return results

    def track_cg_iterations(self, results, p):
        return results[p]["cg_steps"]

    track_cg_iterations.unit = "iterations"

    def track_cg_vs_gram_relative_difference(self, results, p):
        return results[p]["relative_difference"]

    track_cg_vs_gram_relative_difference.unit = "relative difference"


class NaturalGradientCompile:
    """Trace + lower + XLA-compile time of the NGF vector field, each sample in a
    fresh interpreter (so no JAX cache is warm); imports and data are untimed."""

    params = [P_GRID, ["auto", "cg"]]
    param_names = ["p", "solve"]
    timeout = 300

    def timeraw_ngf_compile(self, p, solve):
        setup = textwrap.dedent(
            f"""
            import equinox as eqx
            import jax
            import jax.numpy as jnp
            import jax.random as jr
            jax.config.update("jax_enable_x64", True)
            import flowsolve as fs

            X, y = fs.datasets.two_d_nonlinear(n={N_TRAIN}, kind="clusters", seed=0)
            d = X.shape[1]
            model = fs.models.TwoLayer(d, {p} // (d + 1), key=jr.key(0))
            problem = fs.Problem(model, fs.losses.Logistic(), jnp.asarray(X), jnp.asarray(y))
            flow = fs.NaturalGradientFlow(problem, solve={solve!r}, cg_rtol={CG_RTOL!r})
            params = eqx.filter(model, eqx.is_inexact_array)
            dynamic, static = eqx.partition((flow, params), eqx.is_array)
            """
        )
        stmt = textwrap.dedent(
            """
            def vector_field(dynamic):
                flow, params = eqx.combine(dynamic, static)
                return flow.direction(params, 0.0)
            jax.jit(vector_field).lower(dynamic).compile()
            """
        )
        return stmt, setup
