"""Horizon-scaling table: steps, wall time and margin gap to the hard-margin SVM for
gradient flow on the 200 × 50 separable logistic problem, as the horizon grows
from t = 1e2 to t = e^(1e6), for solver "auto", Tsit5, Kvaerno5 and Rodas5P on the log
clock, and fixed-step GD (η = 1) where it is feasible.

    python scripts/horizon_scaling.py [--max-steps 200000] [--out horizons.json]

A run that cannot reach a horizon within `--max-steps` (or GD past 1e6 steps) is
reported as such, with how far it got.
"""

import argparse
import json
import math

import jax


jax.config.update("jax_enable_x64", True)

import flowsolve as fs  # noqa: E402


HORIZONS = [  # (label, log t)
    ("1e2", math.log(1e2)),
    ("1e4", math.log(1e4)),
    ("1e8", math.log(1e8)),
    ("e^100", 100.0),
    ("e^1000", 1000.0),
    ("e^1e4", 1e4),
    ("e^1e6", 1e6),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-steps", type=int, default=200_000)
    parser.add_argument("--gd-max-steps", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per cell (min is reported)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    X, y = fs.datasets.separable_gaussian(n=200, d=50, seed=0)
    gamma = fs.reference.max_margin(X, y, norm=2).margin
    model = fs.models.Linear(50)
    problem = fs.Problem(model, fs.losses.Logistic(), X, y)
    flow = fs.GradientFlow(problem)
    rows = []
    for label, log_t1 in HORIZONS:
        for solver in ("auto", "tsit5", "kvaerno5", "rodas5p"):
            def run(solver=solver, log_t1=log_t1):
                return fs.solve(flow, model, log_t1=log_t1, clock="log", solver=solver,
                                max_steps=args.max_steps, metrics=("margin",), saveat=fs.SaveAt(num=2))

            sol = run()  # compiles
            walls = [run().stats["wall_time"] for _ in range(args.repeat if sol.success else 1)]
            rows.append({
                "horizon": label, "log_t1": log_t1, "method": solver if solver != "auto" else f"auto ({sol.info['solver']})",
                "reached": sol.success, "log_t_reached": sol.log_t_final,
                "accepted": sol.stats["num_accepted_steps"], "rejected": sol.stats["num_rejected_steps"],
                "wall_s": min(walls),
                "margin_gap": (gamma - float(fs.metrics.margin(problem, sol.final))) / gamma,
            })
        auto, *others = rows[-4:]
        done = [r["wall_s"] for r in others if r["reached"]]
        auto["vs_best"] = auto["wall_s"] / min(done) if done else None
        steps = math.exp(min(log_t1, 700.0))  # GD with η = 1: one step per unit of time
        if steps <= args.gd_max_steps:
            gd = fs.descend(problem, model, lr=1.0, steps=int(round(steps)), metrics=("margin",), saveat=fs.SaveAt(num=2))
            gd = fs.descend(problem, model, lr=1.0, steps=int(round(steps)), metrics=("margin",), saveat=fs.SaveAt(num=2))
            rows.append({
                "horizon": label, "log_t1": log_t1, "method": "GD η=1", "reached": True,
                "log_t_reached": gd.log_t_final, "accepted": gd.stats["num_steps"], "rejected": 0,
                "wall_s": gd.stats["wall_time"],
                "margin_gap": (gamma - float(fs.metrics.margin(problem, gd.final))) / gamma,
            })
        else:
            rows.append({"horizon": label, "log_t1": log_t1, "method": "GD η=1", "reached": False,
                         "log_t_reached": None, "accepted": None, "rejected": None, "wall_s": None,
                         "margin_gap": None, "note": f"needs e^{log_t1:.4g} steps"})
    print(f"{'horizon':>8} {'method':>22} {'accepted':>9} {'rejected':>9} {'wall [s]':>9} {'gap to SVM':>11}  reached")
    for r in rows:
        if r["accepted"] is None:
            print(f"{r['horizon']:>8} {r['method']:>22} {'—':>9} {'—':>9} {'—':>9} {'—':>11}  no ({r['note']})")
            continue
        reached = "yes" if r["reached"] else f"no (log t = {r['log_t_reached']:.4g})"
        vs = f"  (÷ best of tsit5/kvaerno5/rodas5p: {r['vs_best']:.2f})" if r.get("vs_best") else ""
        print(f"{r['horizon']:>8} {r['method']:>22} {r['accepted']:>9} {r['rejected']:>9} {r['wall_s']:>9.4f} "
              f"{r['margin_gap']:>11.3e}  {reached}{vs}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
