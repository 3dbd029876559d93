"""Throughput of `fs.ensemble.solve` against a Python loop of single `fs.solve`
calls (compiled once, reused) and against hand-written `jax.vmap`s of
`diffrax.diffeqsolve`, for two-layer-network gradient flows.

    python scripts/ensemble_throughput.py [--members 256] [--repeats 5] [--quick] [--full]
        [--cases tanh20,tanh50,relu20] [--loop-members K] [--cpu-devices N] [--out results.json]

`--cpu-devices` (default: one per core) sets how many devices JAX makes of the
CPU (`jax_num_cpu_devices`); `fs.ensemble` shards its members over them, each
device running its own loop. A loop of `fs.solve` and the hand-written baselines
run on the first device, as such code does.

Every timing is the minimum over `--repeats` runs, the contenders interleaved
(run 1 of each, then run 2 of each, ...), after a warm-up call that compiles.
Printed per case, in flows per second:

- `ensemble`: `fs.ensemble.solve` with its default `batch_size="auto"` (on CPU
  devices: each device's members in equal chunks of at most 32 for smooth flows,
  one after another for kinked ones), sharded over all devices; `compiled` is its
  compiled part alone (`stats["wall_time"]`). `1 device`: the same with
  `shard=False` (whole call). `stacked`: the same call given one stacked model
  (built once, as `eqx.filter_vmap` of a model's constructor gives it) instead of
  the list: no per-member stacking in the call.
- `all at once` (compiled part; for ReLU with `--full` only: it takes minutes):
  `batch_size=None`, each device's members vmapped together. The hand vmaps also
  run for ReLU with `--full` only. `comp/hand` and `comp/hand+m` divide its time
  by the hand vmaps': like for like with `--cpu-devices 1`.
- `loop`: a Python loop of `fs.solve` over all members (`--quick`: over 32 of them
  for the smooth cases; `--loop-members K`: over the first K in every case), its
  time scaled up to all members. For kinked flows a subset's steps can be far from
  the whole's (heavy tail): the printed `loop steps` and `steps` medians show it.
- `hand vmap`: `jax.jit(jax.vmap(diffeqsolve))` of the same flow, solver, tolerances
  and initial step, saving the final state only; `hand vmap+metrics` also saves the
  metric at the same save points (what `fs.ensemble` computes). `hand loop`: a loop
  of the jitted single solve (final state only), over the same members as `loop`.
- On one device (one GPU, say) `1 device` is `ensemble` and is not run again.

Whether `fs.ensemble` and the hand vmap took the same step counts, member by member,
is printed (`same steps`): then ratios compare the same work. For ReLU they differ:
batched arithmetic rounds differently, and kinks turn that into other step counts.
"""

import argparse
import json
import os
import sys
import time

import jax


jax.config.update("jax_enable_x64", True)
if __name__ == "__main__":  # before JAX first runs: one device per core unless told
    _n = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--cpu-devices=")), None)
    if _n is None and "--cpu-devices" in sys.argv[:-1]:
        _n = sys.argv[sys.argv.index("--cpu-devices") + 1]
    jax.config.update("jax_num_cpu_devices", int(_n) if _n else os.cpu_count() or 1)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import flowsolve as fs  # noqa: E402


T1, NUM, RTOL, ATOL = 10.0, 20, 1e-6, 1e-8


def hand_solvers(flow, save_points, static):
    """The hand-written baselines: a jitted `diffeqsolve` of one member, vmapped or
    not, saving the final state only or also the loss at the save points."""

    def one(y0, metrics):
        subs = [diffrax.SubSaveAt(t1=True)]
        if metrics:
            loss = lambda t, y, args: fs.metrics.loss(flow.problem, eqx.combine(y, static))
            subs.append(diffrax.SubSaveAt(ts=save_points, fn=loss))
        sol = diffrax.diffeqsolve(
            flow, diffrax.Tsit5(), 0.0, T1, None, y0, saveat=diffrax.SaveAt(subs=subs),
            stepsize_controller=diffrax.PIDController(rtol=RTOL, atol=ATOL),
            max_steps=100_000, throw=False,
        )
        return sol.ys, sol.stats["num_steps"]

    return {
        "vmap": jax.jit(jax.vmap(lambda y0: one(y0, False))),
        "vmap+metrics": jax.jit(jax.vmap(lambda y0: one(y0, True))),
        "single": jax.jit(lambda y0: one(y0, False)),
    }


def case(activation, n, width, members, repeats, quick, full, loop_members=None):
    X, y = fs.datasets.two_d_nonlinear(n=n, kind="clusters", seed=0)
    models = [fs.models.TwoLayer(X.shape[1], width, key=jr.key(i), activation=activation, scaling="ntk")
              for i in range(members)]
    problem = fs.Problem(models[0], fs.losses.Logistic(), X, y)
    flow = fs.GradientFlow(problem)
    saveat = fs.SaveAt(num=NUM)
    kw = dict(t1=T1, solver="tsit5", rtol=RTOL, atol=ATOL, metrics=("loss",), saveat=saveat)
    kinked = not models[0].smooth
    if loop_members is None:
        loop_members = 32 if (quick and not kinked) else members
    loop_models = models[:loop_members]

    params = [eqx.filter(m, eqx.is_inexact_array) for m in models]
    static = eqx.partition(models[0], eqx.is_inexact_array)[1]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *params)
    hand = hand_solvers(flow, jnp.asarray(saveat.clock_points(0.0, T1, "linear")), static)

    stacked_models = fs.ensemble.stack(models)
    runs = {
        "ensemble": lambda: fs.ensemble.solve(flow, models, **kw),
        "stacked": lambda: fs.ensemble.solve(flow, stacked_models, **kw),
    }
    if len(jax.devices()) > 1:
        runs["1 device"] = lambda: fs.ensemble.solve(flow, models, shard=False, **kw)
    runs["loop"] = lambda: [fs.solve(flow, m, **kw) for m in loop_models]
    runs["hand loop"] = lambda: [jax.block_until_ready(hand["single"](p)) for p in params[:len(loop_models)]]
    if full or not kinked:  # all members at once: minutes for ReLU
        runs["all at once"] = lambda: fs.ensemble.solve(flow, models, batch_size=None, **kw)
        runs["hand vmap"] = lambda: jax.block_until_ready(hand["vmap"](stacked))
        runs["hand vmap+metrics"] = lambda: jax.block_until_ready(hand["vmap+metrics"](stacked))
    scale = {"loop": members / len(loop_models), "hand loop": members / len(loop_models)}
    warm = {name: run() for name, run in runs.items()}  # compile
    times = {name: [] for name in runs}
    compiled = {"ensemble": [], "all at once": []}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            out = run()
            times[name].append((time.perf_counter() - t0) * scale.get(name, 1.0))
            if name in compiled:
                compiled[name].append(out.stats["wall_time"])
    best = {name: min(v) for name, v in times.items()}
    best["ensemble compiled"] = min(compiled["ensemble"])
    if compiled["all at once"]:
        best["all at once"] = min(compiled["all at once"])

    ens = warm["ensemble"]
    steps = ens.stats["num_steps"]
    rate = {name: members / t for name, t in best.items()}
    ratio = lambda a, b: best[a] / best[b] if a in best and b in best else None
    return {
        "activation": activation, "n": n, "width": width, "members": members, "t1": T1,
        "batch_size": ens.info.get("batch_size"),
        "steps_equal_hand": bool(np.array_equal(steps, warm["hand vmap"][1])) if "hand vmap" in warm else None,
        "seconds": best, "flows_per_s": rate,
        "devices": len(jax.devices()),
        "speedup_vs_loop": ratio("loop", "ensemble"),
        "speedup_vs_loop_1_device": ratio("loop", "1 device"),
        "speedup_stacked_vs_loop": ratio("loop", "stacked"),
        # Like for like with `--cpu-devices 1`: all members vmapped at once, compiled part.
        "compiled_vs_hand_vmap": ratio("all at once", "hand vmap"),
        "compiled_vs_hand_vmap_metrics": ratio("all at once", "hand vmap+metrics"),
        "all_at_once_vs_ensemble_compiled": ratio("all at once", "ensemble compiled"),
        "hand_vmap_vs_hand_loop": ratio("hand loop", "hand vmap"),
        "loop_members": len(loop_models),
        "loop_steps_median": int(np.median([int(s.stats["num_steps"]) for s in warm["loop"]])),
        "steps_min": int(steps.min()), "steps_median": int(np.median(steps)), "steps_max": int(steps.max()),
        # Share of a batch-of-all's member-steps spent on members that had finished.
        "all_at_once_waste": float(1 - steps.sum() / (steps.size * steps.max())),
        "failed": sum(not r.success for r in ens.results),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="loop over 32 members for smooth flows; 3 repeats")
    parser.add_argument("--full", action="store_true", help="also time all ReLU members at once (minutes)")
    parser.add_argument("--cases", default="tanh20,tanh50,relu20", help="comma-separated subset")
    parser.add_argument("--loop-members", type=int, default=None,
                        help="loop over the first K members only, scaled up (default: see --quick)")
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="devices JAX makes of the CPU (default: one per core); read before JAX starts")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    cases = {
        "tanh20": ("tanh", 20, 16, repeats),
        "tanh50": ("tanh", 50, 50, repeats),
        "relu20": ("relu", 20, 16, max(1, repeats // 2)),
    }
    rows = [case(act, n, w, args.members, r, args.quick, args.full, args.loop_members)
            for name, (act, n, w, r) in cases.items() if name in args.cases.split(",")]
    cols = ["ensemble", "ensemble compiled", "stacked", "1 device", "all at once", "loop", "hand vmap",
            "hand vmap+metrics", "hand loop"]
    print("flows/s (min-of-N wall time; 'ensemble compiled', 'all at once': compiled part only)")
    print(f"{'act':>5} {'n':>3} {'w':>3} {'M':>4} {'batch':>5} " + " ".join(f"{c:>17}" for c in cols)
          + f" {'×loop':>6} {'×loop stk':>9} {'×loop 1 dev':>11} {'comp/hand':>9} {'comp/hand+m':>11} {'steps min/med/max':>18}"
          + f" {'waste':>6} {'same steps':>10} {'loop K, steps med':>17}")
    for r in rows:
        rate = r["flows_per_s"]
        cells = " ".join(f"{rate[c]:>17.1f}" if c in rate else f"{'—':>17}" for c in cols)
        steps = f"{r['steps_min']}/{r['steps_median']}/{r['steps_max']}"
        fmt = lambda x, w: f"{x:>{w}.2f}" if x is not None else f"{'—':>{w}}"
        print(f"{r['activation']:>5} {r['n']:>3} {r['width']:>3} {r['members']:>4} {str(r['batch_size']):>5} {cells} "
              f"{fmt(r['speedup_vs_loop'], 6)} {fmt(r['speedup_stacked_vs_loop'], 9)} "
              f"{fmt(r['speedup_vs_loop_1_device'], 11)} "
              f"{fmt(r['compiled_vs_hand_vmap'], 9)} "
              f"{fmt(r['compiled_vs_hand_vmap_metrics'], 11)} {steps:>18} {r['all_at_once_waste']:>6.0%} "
              f"{str(r['steps_equal_hand']):>10} {r['loop_members']:>9}, {r['loop_steps_median']:>5}")
    print(f"devices: {jax.devices()}; jax {jax.__version__}, diffrax {diffrax.__version__}, "
          f"equinox {eqx.__version__}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
