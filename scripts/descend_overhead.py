"""Per-step cost of `fs.descend` against a hand-written jitted GD loop.

The hand-written loops are what a careful user writes: `lax.fori_loop` over
`jax.grad` of the mean logistic loss, or over the analytic gradient, jitted with
the data as arguments, no metrics, no checks. `fs.descend` runs the same steps
through the public API, saving the loss at 100 log-spaced points and refusing
non-finite steps.

    python scripts/descend_overhead.py [--steps 100000] [--repeats 5]
"""

import argparse
import json
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.lax as lax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import flowsolve as fs  # noqa: E402


def hand_written(kind, lr, steps):
    def grad(w, X, y):
        if kind == "jax.grad":
            return jax.grad(lambda w: jnp.mean(jax.nn.softplus(-y * (X @ w))))(w)
        return -(X.T @ (y * jax.nn.sigmoid(-y * (X @ w)))) / X.shape[0]

    @jax.jit
    def run(w0, X, y):
        return lax.fori_loop(0, steps, lambda _, w: w - lr * grad(w, X, y), w0)

    return run


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(n, d, steps, repeats):
    X, y = fs.datasets.separable_gaussian(n=n, d=d, seed=0)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    model = fs.models.Linear(d)
    problem = fs.Problem(model, fs.losses.Logistic(), X, y)
    hand, final = {}, {}
    for kind in ("jax.grad", "analytic"):
        loop = hand_written(kind, 1.0, steps)
        final[kind] = np.asarray(jax.block_until_ready(loop(jnp.zeros(d), Xj, yj)))  # compile
        hand[kind] = best_of(lambda loop=loop: jax.block_until_ready(loop(jnp.zeros(d), Xj, yj)), repeats)

    def ours():
        return fs.descend(problem, model, optimizer="gd", lr=1.0, steps=steps,
                          metrics=("loss",), saveat=fs.SaveAt(num=100))

    ours()  # compile
    t_ours = best_of(ours, repeats)
    tr = ours()
    agree = float(np.max(np.abs(np.asarray(tr.final.weight) - final["jax.grad"])))
    return {
        "n": n, "d": d, "steps": steps,
        "grad_loop_us_per_step": 1e6 * hand["jax.grad"] / steps,
        "analytic_loop_us_per_step": 1e6 * hand["analytic"] / steps,
        "descend_us_per_step": 1e6 * t_ours / steps,
        "ratio_vs_grad_loop": t_ours / hand["jax.grad"],
        "ratio_vs_analytic_loop": t_ours / hand["analytic"],
        "max_abs_diff": agree,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    rows = [measure(n, d, args.steps, args.repeats) for n, d in [(200, 50), (1000, 200)]]
    print(f"{'n':>5} {'d':>4} {'jax.grad loop':>14} {'analytic loop':>14} {'fs.descend':>11} "
          f"{'÷ grad':>7} {'÷ analytic':>10} {'max |Δw|':>9}   (µs per step)")
    for r in rows:
        print(f"{r['n']:>5} {r['d']:>4} {r['grad_loop_us_per_step']:>14.3f} "
              f"{r['analytic_loop_us_per_step']:>14.3f} {r['descend_us_per_step']:>11.3f} "
              f"{r['ratio_vs_grad_loop']:>7.3f} {r['ratio_vs_analytic_loop']:>10.3f} {r['max_abs_diff']:>9.1e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
