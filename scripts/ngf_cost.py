"""What does a natural-gradient vector field cost next to gradient flow?

Times one call of each vector field — gradient flow, natural-gradient flow through
the n×n Gram system, the p×p Fisher and matrix-free CG — on a two-layer mean-field
ReLU network (n = 200 points of the 2-D clusters data with a bias coordinate,
logistic loss) as the parameter count p grows, next to the "floor": forming the
empirical NTK Gram matrix J Jᵀ in plain JAX (`vmap(grad)` per-sample gradients,
then one matmul). Every program is jitted with its arrays as arguments, compiled
ahead of time, run once to warm up, then timed over several calls (median).

    python scripts/ngf_cost.py                 # p = 1e3, 1e4, 1e5 (a few minutes)
    python scripts/ngf_cost.py --quick         # p = 1e3, 1e4, fewer calls
    python scripts/ngf_cost.py --dense-max-p 10000   # also time the O(p³) dense path at p = 1e4

Prints a table and writes it, with the raw timings, to `--out` (JSON).

On a small CPU machine that is busy with other work, set `OPENBLAS_NUM_THREADS=1`
to compare like with like: jaxlib runs its CPU LAPACK kernels (the `eigh`/`solve`
of the Gram and dense paths) on scipy's OpenBLAS, whose own thread pool competes
with XLA's; oversubscribed, a 200×200 `eigh` then takes ~100× longer. The thread
settings in effect are recorded in the JSON.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.flatten_util import ravel_pytree

import flowsolve as fs


N_TRAIN = 200


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--p",
        type=int,
        nargs="+",
        default=None,
        help="parameter counts (multiples of 4; default 1000 10000 100000, "
        "--quick: 1000 10000)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small p grid, fewer calls"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed calls per cell after warm-up (default 7, --quick: 3)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop timing a cell once its timed calls took this long, keeping at "
        "least one call (default 20, --quick: 5)",
    )
    parser.add_argument(
        "--dense-max-p",
        type=int,
        default=5_000,
        help="time the p×p (dense) path only up to this p: it eigendecomposes the "
        "Fisher, O(p³) — minutes per call at p = 1e4 on 2 cores (default 5000)",
    )
    parser.add_argument(
        "--cg-rtol",
        type=float,
        default=1e-8,
        help="relative residual for the CG path (default 1e-8)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="ngf-cost.json", help="JSON output path")
    args = parser.parse_args(argv)
    if args.p is None:
        args.p = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.max_seconds is None:
        args.max_seconds = 5.0 if args.quick else 20.0
    return args


def make_problem(p, seed):
    X, y = fs.datasets.two_d_nonlinear(n=N_TRAIN, kind="clusters", seed=seed)
    d = X.shape[1]
    width, rest = divmod(p, d + 1)
    if rest:
        raise SystemExit(f"p = {p} must be a multiple of d + 1 = {d + 1}.")
    model = fs.models.TwoLayer(d, width, key=jr.key(seed), activation="relu")
    return fs.Problem(model, fs.losses.Logistic(), jnp.asarray(X), jnp.asarray(y))


def ntk_gram(params, static, X):
    """The floor: J Jᵀ from per-sample gradients (`vmap(grad)`) and one matmul."""
    theta, unravel = ravel_pytree(params)

    def single(th, x):
        return eqx.combine(unravel(th), static)(x)

    J = jax.vmap(jax.grad(single), in_axes=(None, 0))(theta, X)
    return J @ J.T


def velocity(flow, params):
    return flow.direction(params, 0.0)


def velocity_with_info(flow, params):
    return flow.direction_with_info(params)


def measure(fn, args, repeats, max_seconds):
    """Compile `fn(*args)` ahead of time (arrays traced, not constants), warm up
    once, time up to `repeats` calls. Returns the timings and the last output."""
    dynamic, static = eqx.partition(args, eqx.is_array)
    flat = lambda dynamic: fn(*eqx.combine(dynamic, static))
    t0 = time.perf_counter()
    compiled = jax.jit(flat).lower(dynamic).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(dynamic))  # warm-up
    calls = []
    while len(calls) < repeats and sum(calls) < max_seconds:
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(dynamic))
        calls.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(calls),
        "min_s": min(calls),
        "calls_s": calls,
        "compile_s": compile_s,
    }, out


def relative_difference(a, b):
    va, vb = ravel_pytree(a)[0], ravel_pytree(b)[0]
    return float(jnp.linalg.norm(va - vb) / jnp.linalg.norm(vb))


def run_p(p, args, log):
    problem = make_problem(p, args.seed)
    params = eqx.filter(problem.model, eqx.is_inexact_array)
    static = eqx.filter(problem.model, eqx.is_inexact_array, inverse=True)
    t = lambda fn, *a: measure(fn, a, args.repeats, args.max_seconds)
    row = {"p": p, "width": problem.model.output.shape[0], "n": problem.n}

    log(f"p = {p}: gradient flow")
    row["gf"], _ = t(velocity, fs.GradientFlow(problem), params)

    log(f"p = {p}: NGF gram")
    row["ngf_gram"], v_gram = t(
        velocity, fs.NaturalGradientFlow(problem, solve="gram"), params
    )

    log(f"p = {p}: NGF dense")
    try:
        dense = fs.NaturalGradientFlow(problem, solve="dense")
    except ValueError as err:
        row["ngf_dense"] = {"refused": str(err)}
    else:
        if p > args.dense_max_p:
            row["ngf_dense"] = {
                "skipped": f"p = {p} > --dense-max-p = {args.dense_max_p} "
                "(O(p³) eigendecomposition of the p×p Fisher)"
            }
        else:
            row["ngf_dense"], _ = t(velocity, dense, params)

    log(f"p = {p}: NGF cg (rtol {args.cg_rtol:g})")
    cg = fs.NaturalGradientFlow(problem, solve="cg", cg_rtol=args.cg_rtol)
    # `direction_with_info`: the program `direction` runs, plus the iteration count.
    row["ngf_cg"], (v_cg, info) = t(velocity_with_info, cg, params)
    row["cg_iterations"] = int(info["cg_steps"])
    row["cg_max_steps"] = cg.cg_max_steps
    row["cg_vs_gram_relative_difference"] = relative_difference(v_cg, v_gram)

    auto = fs.NaturalGradientFlow(problem, solve="auto").solve
    row["auto_solve"] = auto
    row["ngf_auto"] = row[f"ngf_{auto}"]

    log(f"p = {p}: J Jᵀ floor")
    row["ntk_gram_floor"], _ = t(ntk_gram, params, static, problem.X)

    if "median_s" in row["ngf_auto"]:
        row["ngf_auto_over_gf"] = row["ngf_auto"]["median_s"] / row["gf"]["median_s"]
        row["ngf_auto_over_floor"] = (
            row["ngf_auto"]["median_s"] / row["ntk_gram_floor"]["median_s"]
        )
    return row


def fmt_s(cell, key="median_s"):
    if "refused" in cell:
        return "refused*"
    if "skipped" in cell:
        return "skipped*"
    s = cell[key]
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def ratio(row, name, key):
    """NGF(auto) time over the `name` column's time."""
    if key not in row["ngf_auto"]:
        return "-"
    return f"{row['ngf_auto'][key] / row[name][key]:.2f}"


def table(rows, key="median_s"):
    head = [
        "p",
        "GF",
        "NGF gram",
        "NGF dense",
        "NGF cg",
        "NGF auto",
        "JJᵀ floor",
        "NGF/GF",
        "NGF/floor",
        "CG its",
        "cg vs gram",
    ]
    lines = []
    for r in rows:
        cg_its = f"{r['cg_iterations']}"
        if r["cg_iterations"] >= r["cg_max_steps"]:
            cg_its += "!"
        lines.append(
            [
                f"{r['p']:.0e}",
                fmt_s(r["gf"], key),
                fmt_s(r["ngf_gram"], key),
                fmt_s(r["ngf_dense"], key),
                fmt_s(r["ngf_cg"], key),
                f"{fmt_s(r['ngf_auto'], key)} ({r['auto_solve']})",
                fmt_s(r["ntk_gram_floor"], key),
                ratio(r, "gf", key),
                ratio(r, "ntk_gram_floor", key),
                cg_its,
                f"{r['cg_vs_gram_relative_difference']:.1e}",
            ]
        )
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)
    ]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def notes(rows):
    out = []
    for r in rows:
        for what in ("refused", "skipped"):
            if what in r["ngf_dense"]:
                out.append(
                    f"* NGF dense at p = {r['p']} {what}: {r['ngf_dense'][what]}"
                )
        if r["cg_iterations"] >= r["cg_max_steps"]:
            out.append(
                f"! CG at p = {r['p']}: {r['cg_iterations']} iterations ≥ cg_max_steps = "
                f"{r['cg_max_steps']}: the Gram-space CG did not reach rtol and flowsolve "
                "fell back to CG on the p-space normal equations"
                + (
                    " (which did not converge either)."
                    if r["cg_iterations"] >= 2 * r["cg_max_steps"]
                    else "."
                )
            )
    return "\n".join(out)


def main(argv=None):
    args = parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    log = lambda msg: print(
        f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True
    )
    meta = {
        "n": N_TRAIN,
        "data": "fs.datasets.two_d_nonlinear(kind='clusters') with bias, d = 3",
        "model": "fs.models.TwoLayer(relu, mean-field), p = 4 * width",
        "loss": "logistic",
        "cg_rtol": args.cg_rtol,
        "repeats": args.repeats,
        "statistic": "median of the timed calls after one warm-up call",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
        "thread_env": {
            k: os.environ.get(k)
            for k in (
                "OPENBLAS_NUM_THREADS",
                "OMP_NUM_THREADS",
                "MKL_NUM_THREADS",
                "XLA_FLAGS",
            )
        },
    }
    t0 = time.perf_counter()
    rows = [run_p(p, args, log) for p in args.p]
    meta["loadavg_end"] = os.getloadavg()
    meta["total_s"] = time.perf_counter() - t0

    print("Seconds per vector-field call (median); NGF/GF and NGF/floor use NGF auto.")
    print(table(rows))
    print()
    print("Fastest call (min), less sensitive to other load on the machine:")
    print(table(rows, key="min_s"))
    print(notes(rows))
    print(
        f"\n{meta['backend']}, {meta['cpu_count']} CPUs, load average "
        f"{meta['loadavg_start'][0]:.2f} → {meta['loadavg_end'][0]:.2f}; "
        f"total {meta['total_s']:.0f} s; OPENBLAS_NUM_THREADS="
        f"{meta['thread_env']['OPENBLAS_NUM_THREADS']}; written to {args.out}"
    )
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
