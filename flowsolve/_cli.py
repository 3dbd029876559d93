"""The `flowsolve` command line.

`flowsolve demo` solves a real long-horizon gradient flow and compares it with the
hard-margin SVM; `flowsolve run EXPERIMENT.toml --out DIR` runs an experiment file
(see `docs/experiments.md`) into a results folder; `flowsolve plot DIR` redraws the
plots of such a folder. Each subcommand is a `_add_<name>(subparsers)` that
registers its arguments and sets `func=` to the function that runs it, returning an
exit code.
"""

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


_PROG = "flowsolve"
_LN10 = math.log(10.0)


class CLIError(Exception):
    """A problem the user can fix: printed as one line, without a traceback."""


# --------------------------------------------------------------------- argument types


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a finite positive number, got {text!r}"
        )
    return value


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer, got {text!r}"
            ) from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer ≥ {lo}, got {value}")
        return value

    parse.__name__ = f"integer ≥ {lo}"
    return parse


# ------------------------------------------------------------------------------ demo

#: The contrasting deep run uses an explicit solver, whose step count grows with
#: log t (~12 steps per unit): cap its horizon so the demo stays quick.
_DEMO_DEEP_MAX_LOG_T = 30.0
_DEMO_METRICS = ("loss", "log_loss", "margin")


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="solve a long-horizon gradient flow and compare it with the max-margin SVM",
        description=(
            "Gradient flow of a linear model on separable Gaussian data with the "
            "logistic loss, on the log clock to t = e^LOG_T1 with solver='auto' "
            "(Tsit5, switching to the linearly implicit Rodas5P once the flow turns stiff); and, for contrast, a depth-2 linear network with Tsit5 "
            f"to t = e^min(LOG_T1, {_DEMO_DEEP_MAX_LOG_T:g}). Prints a summary, "
            "compares the normalised margins with the hard-margin SVM, and writes "
            "a convergence plot (demo.png) and a JSON summary (summary.json)."
        ),
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("flowsolve-demo"),
        metavar="DIR",
        help="output folder (default: ./flowsolve-demo)",
    )
    p.add_argument(
        "--log-t1",
        type=_positive_float,
        default=1000.0,
        metavar="FLOAT",
        help="horizon as the natural log of t (default: 1000, i.e. t = e^1000)",
    )
    p.add_argument(
        "--n", type=_int_at_least(2), default=200, help="training points (default: 200)"
    )
    p.add_argument(
        "--d", type=_int_at_least(1), default=50, help="dimension (default: 50)"
    )
    p.add_argument(
        "--seed",
        type=_int_at_least(0),
        default=0,
        help="data and init seed (default: 0)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_demo)


def _finite_or_none(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _demo_run(
    name, model, solver, log_t1, X, y, svm_margin, progress
) -> tuple[dict, Any]:
    import flowsolve as fs

    problem = fs.Problem(model, fs.losses.Logistic(), X, y)
    sol = fs.solve(
        fs.GradientFlow(problem),
        model,
        log_t1=log_t1,
        clock="log",
        solver=solver,
        metrics=_DEMO_METRICS,
        saveat=fs.SaveAt(num=200),
        progress=progress,
    )
    # Evaluated on the final model, i.e. exactly at `log_t_final`, reached or not.
    log_loss = float(fs.metrics.log_loss(problem, sol.final))
    margin = float(fs.metrics.margin(problem, sol.final))
    row = {
        "name": name,
        "model": type(model).__name__,
        "method": sol.info["method"],
        "solver": sol.info["solver"],
        "clock": sol.info["clock"],
        "rtol": sol.info["rtol"],
        "atol": sol.info["atol"],
        "num_params": sol.stats["num_params"],
        "log_t1": log_t1,
        "log_t_reached": _finite_or_none(sol.log_t_final),
        "accepted_steps": sol.stats["num_accepted_steps"],
        "rejected_steps": sol.stats["num_rejected_steps"],
        "wall_time_s": sol.stats["wall_time"],
        "compile_time_s": sol.stats["compile_time"],
        "log10_loss": _finite_or_none(log_loss / _LN10),
        "margin": _finite_or_none(margin),
        "margin_gap": _finite_or_none((svm_margin - margin) / svm_margin),
        "result": sol.result.name,
        "success": sol.success,
    }
    if not sol.success:
        row["message"] = sol.result.message
    return row, sol


_TABLE = (
    # header, key, format, width
    ("run", "name", "s", 13),
    ("model", "model", "s", 10),
    ("solver", "solver", "s", 9),
    ("log t", "log_t_reached", ".6g", 8),
    ("accepted", "accepted_steps", "d", 8),
    ("rejected", "rejected_steps", "d", 8),
    ("wall [s]", "wall_time_s", ".3f", 8),
    ("compile [s]", "compile_time_s", ".2f", 11),
    ("log10 loss", "log10_loss", ".6g", 10),
    ("margin", "margin", ".6f", 8),
    ("gap to SVM", "margin_gap", ".3e", 10),
    ("result", "result", "s", 10),
)


def _table(rows: list[dict]) -> str:
    texts = [
        [_fmt(row[key], f) if f != "s" else str(row[key]) for _, key, f, _ in _TABLE]
        for row in rows
    ]
    # Each column as wide as its widest cell (a switched solver, `tsit5→rodas5p`,
    # overflowed a fixed width and shifted the rest of its row).
    widths = [
        max([w, len(h)] + [len(t[j]) for t in texts]) for j, (h, _, _, w) in enumerate(_TABLE)
    ]
    header = "  ".join(
        h.ljust(w) if f == "s" else h.rjust(w) for (h, _, f, _), w in zip(_TABLE, widths)
    )
    lines = [header, "-" * len(header)]
    for t in texts:
        cells = [
            text.ljust(w) if f == "s" else text.rjust(w)
            for text, (_, _, f, _), w in zip(t, _TABLE, widths)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    import jax
    import jax.random as jr

    import flowsolve as fs

    start = time.perf_counter()
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(
            f"cannot create the output folder {str(out)!r}: {e.strerror or e}"
        ) from None
    progress = not args.no_progress

    X, y = fs.datasets.separable_gaussian(n=args.n, d=args.d, seed=args.seed)
    svm = fs.reference.max_margin(X, y, norm=2)
    svm_margin = float(svm.margin)
    deep_log_t1 = min(args.log_t1, _DEMO_DEEP_MAX_LOG_T)
    print(
        f"flowsolve demo: separable Gaussian data, n = {args.n}, d = {args.d}, "
        f"seed = {args.seed}; logistic loss; gradient flow on the log clock.\n"
        f"hard-margin SVM (ℓ2) margin γ* = {svm_margin:.8f}",
        flush=True,
    )

    runs = [
        ("gf-linear", fs.models.Linear(args.d), "auto", args.log_t1),
        (
            "gf-deep2",
            fs.models.DeepLinear(
                args.d, depth=2, width=args.d, init_scale=1e-2, key=jr.key(args.seed)
            ),
            "tsit5",
            deep_log_t1,
        ),
    ]
    rows, sols = [], []
    for name, model, solver, log_t1 in runs:
        row, sol = _demo_run(name, model, solver, log_t1, X, y, svm_margin, progress)
        rows.append(row)
        sols.append(sol)

    print()
    print(_table(rows))
    print()

    labels = [f"{row['model']}, GF ({row['solver']})" for row in rows]
    fig, axes = fs.plot.overview(
        sols,
        metrics=("log_loss", "margin", "margin_gap"),
        reference=svm,
        labels=labels,
        title=(
            f"Gradient flow, logistic loss, separable Gaussian data "
            f"(n = {args.n}, d = {args.d}): convergence to the max-margin direction"
        ),
    )
    # The margin panel: zoom in on the approach to γ*; the early, strongly
    # negative margins of a small random initialisation would flatten it.
    margin_ax = axes[1]
    lo, hi = margin_ax.get_ylim()
    margin_ax.set_ylim(max(lo, -svm_margin), hi)
    png = out / "demo.png"
    summary_path = out / "summary.json"
    try:
        fig.savefig(png, dpi=150)
    except OSError as e:
        raise CLIError(f"cannot write {str(png)!r}: {e.strerror or e}") from None
    total = time.perf_counter() - start
    summary = {
        "flowsolve_version": fs.__version__,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "data": {
            "generator": "separable_gaussian",
            "n": args.n,
            "d": args.d,
            "seed": args.seed,
        },
        "loss": "Logistic",
        "svm_margin": svm_margin,
        "runs": rows,
        "total_time_s": total,
        "files": {"plot": str(png), "summary": str(summary_path)},
    }
    try:
        summary_path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    except OSError as e:
        raise CLIError(
            f"cannot write {str(summary_path)!r}: {e.strerror or e}"
        ) from None

    print(f"total time {total:.1f} s (including compilation)")
    print(f"wrote {png}")
    print(f"wrote {summary_path}")
    failed = [row for row in rows if not row["success"]]
    for row in failed:
        print(
            f"{_PROG} demo: run {row['name']} stopped early at log t = "
            f"{_fmt(row['log_t_reached'], '.6g')}: {row['message']}",
            file=sys.stderr,
        )
    return 1 if failed else 0


# ------------------------------------------------------------------------------- run


def _add_run(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="run an experiment file: flows and optimizers, summary, plots",
        description=(
            "Run the flows and optimizers of an experiment file (TOML; see "
            "docs/experiments.md) on its data, model and loss. The whole file is "
            "checked before anything is solved. Each run's trajectory is saved to "
            "DIR/<label>.traj as soon as it finishes, DIR/summary.json after every "
            "run, and the plots (DIR/overview.png and one file per metric) at the "
            "end. Running the same command again skips finished runs and resumes an "
            "interrupted flow from its checkpoint."
        ),
    )
    p.add_argument(
        "experiment", type=Path, metavar="EXPERIMENT.toml", help="the experiment file"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="results folder (default: ./<name of the experiment>)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="recompute every run, even those already saved",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only check the file (and build its data, model and "
        "reference); solve nothing",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from . import _experiment as ex

    exp = ex.load(args.experiment)
    out: Path = args.out if args.out is not None else Path(exp.name)
    print(
        f"{_PROG} run: {exp.name} ({args.experiment}): {len(exp.runs)} run(s), "
        f"data {exp.data['kind']}, model {exp.model['kind']}, loss {exp.loss['kind']}",
        flush=True,
    )
    built = ex.build(exp)
    if args.check:
        for spec in built.experiment.runs:
            print(
                f"  {spec.label}: {spec.describe()}; metrics {', '.join(spec.metrics)}"
            )
        print(f"{args.experiment}: valid")
        return 0
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(
            f"cannot create the output folder {str(out)!r}: {e.strerror or e}"
        ) from None
    try:
        outcome = ex.run(
            built,
            out,
            force=args.force,
            progress=not args.no_progress,
            echo=lambda line: print(line, flush=True),
        )
    except OSError as e:
        raise CLIError(f"cannot write the results: {e}") from None
    if outcome.interrupted is not None:
        print(
            f"{_PROG} run: interrupted in run {outcome.interrupted!r}; finished runs "
            f"and its trajectory so far are kept in {out}. Run the same command "
            "again to resume.",
            file=sys.stderr,
        )
        return 130
    print(f"wrote {outcome.summary}")
    for path in outcome.plots:
        print(f"wrote {path}")
    for label in outcome.failed:
        print(
            f"{_PROG} run: run {label!r} did not reach its horizon; see "
            f"{outcome.summary}",
            file=sys.stderr,
        )
    return 1 if outcome.failed else 0


# ------------------------------------------------------------------------------ plot


def _add_plot(subparsers) -> None:
    p = subparsers.add_parser(
        "plot",
        help="redraw the plots of a results folder written by `flowsolve run`",
        description=(
            "Reload the trajectories and summary.json that `flowsolve run` wrote "
            "into DIR and draw the plots again (nothing is solved)."
        ),
    )
    p.add_argument("folder", type=Path, metavar="DIR", help="the results folder")
    p.add_argument(
        "--format",
        dest="formats",
        nargs="+",
        choices=("png", "pdf", "svg"),
        default=None,
        metavar="FORMAT",
        help="png, pdf and/or svg (default: the experiment's [plot] formats)",
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="METRIC",
        help="the metrics to plot (default: the experiment's [plot] metrics)",
    )
    p.set_defaults(func=_plot)


def _plot(args: argparse.Namespace) -> int:
    from . import _experiment as ex

    if not args.folder.is_dir():
        raise CLIError(f"{str(args.folder)!r} is not a folder")
    try:
        paths = ex.replot(args.folder, metrics=args.metrics, formats=args.formats)
    except OSError as e:
        raise CLIError(f"cannot write the plots: {e}") from None
    for path in paths:
        print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------ main


def _parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("flowsolve")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        ver = "unknown"
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=(
            "Continuous-time training dynamics of ML models, solved as ODEs over "
            "horizons no fixed-step loop reaches."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {ver}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(subparsers)
    _add_run(subparsers)
    _add_plot(subparsers)
    return parser


def _float64():
    import jax

    scoped = getattr(jax, "enable_x64", None)
    if scoped is None:  # older JAX: the context manager lived in jax.experimental
        from jax.experimental import enable_x64 as scoped
    return scoped(True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `flowsolve` command line; returns the exit code.

    **Arguments:**

    - `argv`: the arguments after the program name (default: `sys.argv[1:]`).

    **Returns:**

    `0` on success, `1` when a run failed or could not be done, `2` for bad
    arguments.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage and the problem
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        # Long horizons and log-domain losses need float64. The command runs in
        # JAX's scoped x64 mode rather than flipping the global config, so calling
        # `main` from Python leaves the caller's JAX settings as they were.
        with _float64():
            return args.func(args)
    except (CLIError, ValueError) as e:
        print(f"{_PROG} {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{_PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
