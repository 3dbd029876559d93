"""Throughput of `fs.ensemble.solve` against a Python loop of single `fs.solve`
calls (compiled once, reused), for two-layer-network gradient flows.

    python scripts/ensemble_throughput.py [--members 256] [--quick]

Prints flows per second for each, their ratio, and for ReLU networks (whose step
counts vary a lot between members, so a vmapped loop waits for its slowest member)
the effect of solving in chunks of members sorted by a cheap difficulty proxy.
"""

import argparse
import json
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import flowsolve as fs  # noqa: E402


def timed(fn):
    fn()  # compile / warm up
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def case(activation, n, width, members, loop_members, t1):
    X, y = fs.datasets.two_d_nonlinear(n=n, kind="clusters", seed=0)
    models = [fs.models.TwoLayer(X.shape[1], width, key=jr.key(i), activation=activation, scaling="ntk")
              for i in range(members)]
    problem = fs.Problem(models[0], fs.losses.Logistic(), X, y)
    flow = fs.GradientFlow(problem)
    kw = dict(t1=t1, solver="tsit5", rtol=1e-6, atol=1e-8, metrics=("loss",), saveat=fs.SaveAt(num=20))
    t_ens, ens = timed(lambda: fs.ensemble.solve(flow, models, **kw))
    t_loop, _ = timed(lambda: [fs.solve(flow, m, **kw) for m in models[:loop_members]])
    t_loop *= members / loop_members
    row = {
        "activation": activation, "n": n, "width": width, "members": members, "t1": t1,
        "ensemble_s": t_ens, "loop_s": t_loop,
        "ensemble_flows_per_s": members / t_ens, "loop_flows_per_s": members / t_loop,
        "speedup": t_loop / t_ens,
        "steps_min": int(ens.stats["num_steps"].min()), "steps_max": int(ens.stats["num_steps"].max()),
        "failed": sum(not r.success for r in ens.results),
    }
    if activation == "relu":
        # Bucketing: order members by their step count on a short pilot horizon,
        # then solve in chunks of 32 so each chunk waits only for its own slowest.
        pilot = fs.ensemble.solve(flow, models, **{**kw, "t1": t1 / 10})
        order = np.argsort(pilot.stats["num_steps"])
        sorted_models = [models[i] for i in order]
        t_b, _ = timed(lambda: fs.ensemble.solve(flow, sorted_models, batch_size=32, **kw))
        row["bucketed_s"] = t_b + pilot.stats["wall_time"]
        row["bucketed_speedup_vs_loop"] = t_loop / row["bucketed_s"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="fewer members in the loop estimate")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    loop_members = 32 if args.quick else 64
    rows = [
        case("tanh", 20, 16, args.members, loop_members, 10.0),
        case("tanh", 50, 50, args.members, loop_members, 10.0),
        case("relu", 20, 16, args.members, loop_members, 10.0),
    ]
    print(f"{'act':>5} {'n':>4} {'width':>5} {'M':>5} {'ensemble [flows/s]':>19} {'loop [flows/s]':>15} "
          f"{'speedup':>8} {'steps (min–max)':>16} {'bucketed ×loop':>15}")
    for r in rows:
        extra = f"{r['bucketed_speedup_vs_loop']:>15.2f}" if "bucketed_s" in r else f"{'—':>15}"
        print(f"{r['activation']:>5} {r['n']:>4} {r['width']:>5} {r['members']:>5} "
              f"{r['ensemble_flows_per_s']:>19.1f} {r['loop_flows_per_s']:>15.1f} {r['speedup']:>8.2f} "
              f"{str(r['steps_min']) + '–' + str(r['steps_max']):>16} {extra}")
    print(f"devices: {jax.devices()}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
