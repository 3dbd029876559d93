"""Reproduce Chizat & Bach (2020), "Implicit bias of gradient descent for wide
two-layer neural networks trained with the logistic loss", through flowsolve's
public API.

A wide two-layer ReLU network f(x) = (1/m) Σ_j b_j (a_jᵀx)₊ (mean-field scaling,
inputs augmented by a constant 1) is trained by gradient flow on the logistic loss,
on their kind of data: a 3 × 3 grid of Gaussian clusters in the first two
coordinates with random ±1 cluster labels, plus uniform spurious coordinates that
carry no information. Training both layers tends to a max-margin classifier in
the variation-norm (F1) space, which adapts to the 2-D structure; training the
output layer only is a linear classifier on fixed random features, tending to
their max-margin (kernel) SVM, which does not. The script measures, over seeds and
as the number of spurious coordinates grows:

- the test error of both trainings at a long horizon (log clock, t = e^50 by
  default), and of the output-only limit itself (the random-feature SVM, from
  `fs.reference.max_margin` on the features);
- normalised margins along the flows;
- the learned decision boundaries in the 2-D plane.

ReLU flows are only piecewise smooth: a unit can slide along its kink on a training
point (Filippov sliding) and an adaptive solver then crawls. Every solve's result
is checked and stalls are reported in the summary.

Writes PNG plots and `summary.json` (each finding: claim, measured numbers, holds)
into `--out`.

    python scripts/reproduce_chizat_bach2020.py [--out results/chizat_bach2020] [--quick] [--seed 0]
"""

import argparse
import sys
import time
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import flowsolve as fs  # noqa: E402


sys.path.insert(0, str(Path(__file__).resolve().parent))  # the scripts' shared helpers
from _repro import finding, log, log_clock_axis, log_clock_saves, write_summary  # noqa: E402


DEFAULTS = {
    "n": 256,               # training points
    "n_test": 2000,
    "width": 200,           # hidden units m
    "spurious": (0, 4, 8, 16, 32),
    "seeds": 3,             # data sets (and initialisations) per point
    "log_t1": 50.0,         # horizon t = e^50 on the log clock
    "rtol": 1e-3,           # loose: ReLU kinks make tight tolerances crawl
    "max_steps": 20_000,
    "num_saves": 60,
    "boundary_spurious": 16,
}
QUICK = {
    **DEFAULTS,
    "n": 128, "n_test": 1000, "width": 100, "spurious": (0, 16), "seeds": 2,
    "log_t1": 20.0, "num_saves": 30, "boundary_spurious": 16,
}


# ------------------------------------------------------------------- the networks


def _relu_features(A, X, m):
    return np.maximum(X @ A.T, 0.0) / m


def _predict(A, b, X, m):
    """f(x) = (1/m) Σ_j b_j (a_jᵀx)₊ for parameter arrays (possibly with leading axes)."""
    return np.einsum("...j,...ij->...i", b, np.maximum(np.einsum("...jd,id->...ij", A, X), 0.0)) / m


def run_point(cfg, sd, seed0):
    """All seeds at one number of spurious dimensions: both trainings as two ensemble
    solves, plus the output-only limit (random-feature SVM) per seed.

    Output-layer-only training of f(x) = (1/m) Σ_j b_j (a_jᵀx)₊ with the a_j frozen is
    gradient flow of a linear model on the features φ(x) = (Ax)₊/m, from the same b(0):
    it is solved as exactly that (`fs.models.Linear` on the features; checked against
    `TwoLayer(train="output")` in `check_output_only_equivalence`). Its log-clock flow is
    stiff (support-vector margins equilibrate fast, the direction drifts slowly): as a
    linear model with m parameters it gets the implicit Kvaerno5 solver, which needs a
    few hundred steps to any horizon where Tsit5 on the two-layer model (whose frozen
    hidden layer is part of the state, too large for an implicit solver's Jacobian)
    exhausts 20,000 steps before e^50."""
    m, n = cfg["width"], cfg["n"]
    data = [fs.datasets.two_d_nonlinear(n, kind="clusters", seed=seed0 + i, spurious_dims=sd,
                                        n_test=cfg["n_test"]) for i in range(cfg["seeds"])]
    d = data[0].X.shape[1]
    loss = fs.losses.Logistic()
    out = {}
    nets = {train: [fs.models.TwoLayer(d, m, key=jr.key(1000 * (seed0 + i) + sd), scaling="mean-field",
                                       train=train, balanced=True, init_scale=1.0)
                    for i in range(cfg["seeds"])] for train in ("both", "output")}
    for train in ("both", "output"):
        t0 = time.perf_counter()
        saveat = log_clock_saves(cfg["log_t1"], cfg["num_saves"], params=True)
        if train == "both":
            models = nets["both"]
            flows = [fs.GradientFlow(fs.Problem(mod, loss, ds.X, ds.y)) for mod, ds in zip(models, data)]
            traj = fs.ensemble.solve(
                flows, models, log_t1=cfg["log_t1"], clock="log", solver="tsit5", rtol=cfg["rtol"],
                atol=cfg["rtol"] * 1e-3, metrics=("log_loss",), saveat=saveat, max_steps=cfg["max_steps"],
            )
            A = np.asarray(traj.params.hidden)   # (members, saves, m, d)
            b = np.asarray(traj.params.output)   # (members, saves, m)
        else:
            feats = [_relu_features(np.asarray(net.hidden), ds.X, m) for net, ds in zip(nets["output"], data)]
            models = [fs.models.Linear(m, weight=net.output) for net in nets["output"]]
            flows = [fs.GradientFlow(fs.Problem(mod, loss, F, ds.y)) for mod, F, ds in zip(models, feats, data)]
            traj = fs.ensemble.solve(
                flows, models, log_t1=cfg["log_t1"], clock="log", solver="kvaerno5", rtol=1e-6,
                atol=1e-9, metrics=("log_loss",), saveat=saveat, max_steps=cfg["max_steps"],
            )
            b = np.asarray(traj.params.weight)   # (members, saves, m)
            A = np.stack([np.broadcast_to(np.asarray(net.hidden), b.shape[1:2] + net.hidden.shape)
                          for net in nets["output"]])
        wall = time.perf_counter() - t0
        members = []
        for i, ds in enumerate(data):
            f_test = _predict(A[i], b[i], ds.X_test, m)                   # (saves, n_test)
            f_train = _predict(A[i], b[i], ds.X, m)
            u = ds.y * f_train
            if train == "both":
                # Margin normalised by the variation (F1) norm (1/m) Σ_j |b_j| ‖a_j‖.
                norm = np.sum(np.abs(b[i]) * np.linalg.norm(A[i], axis=-1), axis=-1) / m
            else:
                norm = np.linalg.norm(b[i], axis=-1)                     # the RKHS (ℓ2 in b) norm
            with np.errstate(invalid="ignore", divide="ignore"):
                margin = np.min(u, axis=-1) / norm
            reached = np.isfinite(traj.log_ts) & (traj.log_ts <= float(np.asarray(traj.log_t_final)[i]) + 1e-9)
            last = int(np.flatnonzero(reached)[-1])
            rec = {
                "result": traj.results[i].name,
                "log_t_reached": float(np.asarray(traj.log_t_final)[i]),
                "steps": int(np.asarray(traj.stats["num_steps"])[i]),
                "test_error": float(np.mean(np.sign(f_test[last]) != ds.y_test)),
                "train_error": float(np.mean(u[last] <= 0)),
                "margin": float(margin[last]),
                "test_error_path": np.mean(np.sign(f_test) != ds.y_test, axis=-1),
                "margin_path": margin,
            }
            if train == "output":
                svm = fs.reference.max_margin(feats[i], ds.y)
                rec["svm_margin"] = svm.margin
                rec["svm_test_error"] = float(np.mean(
                    np.sign(_relu_features(np.asarray(nets["output"][i].hidden), ds.X_test, m) @ svm.w)
                    != ds.y_test))
                rec["margin_ratio_to_svm"] = rec["margin"] / svm.margin
            members.append(rec)
        stalled = [i for i, r in enumerate(members) if r["result"] != "successful"]
        log(f"  spurious = {sd:3d}, train {train:6s}: {wall:5.1f} s, steps {[r['steps'] for r in members]}, "
            f"test error {[round(r['test_error'], 3) for r in members]}"
            + (f", SVM limit {[round(r['svm_test_error'], 3) for r in members]}" if train == "output" else "")
            + (f", STALLED members {stalled}" if stalled else ""))
        final = [eqx_final(traj, i, nets[train][i], train) for i in range(len(data))]
        out[train] = {"members": members, "log_ts": traj.log_ts, "wall_s": wall, "final_models": final}
    out["data"] = data
    return out


def eqx_final(traj, i, net, train):
    """Member i's final network as a `TwoLayer` (for the output-only runs, the frozen
    hidden layer with the trained output weights of the feature-space linear model)."""
    final = traj[i].final
    if train == "both":
        return final
    return eqx.tree_at(lambda mdl: mdl.output, net, jnp.asarray(final.weight))


def check_output_only_equivalence(cfg, sd, seed):
    """`TwoLayer(train="output")` and `Linear` on its features follow the same flow."""
    m = cfg["width"]
    ds = fs.datasets.two_d_nonlinear(cfg["n"], kind="clusters", seed=seed, spurious_dims=sd)
    net = fs.models.TwoLayer(ds.X.shape[1], m, key=jr.key(7), scaling="mean-field", train="output",
                             balanced=True, init_scale=1.0)
    lin = fs.models.Linear(m, weight=net.output)
    kw = dict(log_t1=5.0, clock="log", solver="tsit5", rtol=1e-10, atol=1e-12, metrics=(), saveat=fs.SaveAt(num=2))
    loss = fs.losses.Logistic()
    a = fs.solve(fs.GradientFlow(fs.Problem(net, loss, ds.X, ds.y)), net, **kw)
    b = fs.solve(fs.GradientFlow(fs.Problem(lin, loss, _relu_features(np.asarray(net.hidden), ds.X, m), ds.y)),
                 lin, **kw)
    b_net, b_lin = np.asarray(a.final.output), np.asarray(b.final.weight)
    return {
        "relative_difference_of_output_weights": float(np.linalg.norm(b_net - b_lin) / np.linalg.norm(b_lin)),
        "hidden_layer_moved": float(np.max(np.abs(np.asarray(a.final.hidden) - np.asarray(net.hidden)))),
        "log_t": 5.0,
    }


# ------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/chizat_bach2020", help="output folder")
    parser.add_argument("--quick", action="store_true", help="small, fast version (smoke test)")
    parser.add_argument("--seed", type=int, default=0, help="first data/initialisation seed")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else DEFAULTS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    log(f"Two-layer ReLU, m = {cfg['width']}, n = {cfg['n']}, spurious dimensions {cfg['spurious']}, "
        f"{cfg['seeds']} seeds, horizon t = e^{cfg['log_t1']:g}")
    points = {sd: run_point(cfg, sd, args.seed) for sd in cfg["spurious"]}
    equivalence = check_output_only_equivalence(cfg, cfg["spurious"][-1], args.seed)

    table = {}
    for sd, pt in points.items():
        both, outp = pt["both"]["members"], pt["output"]["members"]
        table[sd] = {
            "both_test_error_mean": float(np.mean([r["test_error"] for r in both])),
            "output_test_error_mean": float(np.mean([r["test_error"] for r in outp])),
            "output_svm_limit_test_error_mean": float(np.mean([r["svm_test_error"] for r in outp])),
            "both_test_error": [r["test_error"] for r in both],
            "output_test_error": [r["test_error"] for r in outp],
            "output_svm_limit_test_error": [r["svm_test_error"] for r in outp],
            "both_train_error": [r["train_error"] for r in both],
            "output_train_error": [r["train_error"] for r in outp],
            "output_margin_ratio_to_svm": [r["margin_ratio_to_svm"] for r in outp],
            "both_F1_margin": [r["margin"] for r in both],
            "results_both": [r["result"] for r in both],
            "results_output": [r["result"] for r in outp],
            "log_t_reached_both": [r["log_t_reached"] for r in both],
            "log_t_reached_output": [r["log_t_reached"] for r in outp],
            "steps_both": [r["steps"] for r in both],
            "steps_output": [r["steps"] for r in outp],
        }
    sds = list(table)
    hi = sds[-1]
    both_err = [table[sd]["both_test_error_mean"] for sd in sds]
    out_err = [table[sd]["output_test_error_mean"] for sd in sds]
    svm_err = [table[sd]["output_svm_limit_test_error_mean"] for sd in sds]
    stalls = {f"spurious={sd} {train}": [i for i, r in enumerate(table[sd][f"results_{train}"]) if r != "successful"]
              for sd in sds for train in ("both", "output")}
    stalls = {k: v for k, v in stalls.items() if v}

    findings = {}
    both_inc = [e - both_err[0] for e in both_err]
    svm_inc = [e - svm_err[0] for e in svm_err]
    ratio = [bi / si for bi, si in zip(both_inc, svm_inc) if si >= 0.05]
    findings["both_layers_robust"] = finding(
        "Training both layers is far less sensitive to the spurious dimensions than training the "
        "output layer only: wherever the output-only limit has lost ≥ 5 points of accuracy, the "
        "both-layer test error has risen by less than half as much.",
        {"spurious_dims": sds, "both_test_error_mean": both_err, "output_svm_limit_test_error_mean": svm_err,
         "rise_both_over_rise_output_svm": ratio},
        bool(ratio) and max(ratio) < 0.5,
    )
    findings["output_only_degrades"] = finding(
        "Training the output layer only (random features, kernel regime) degrades as spurious "
        "dimensions are added: its max-margin limit (the random-feature SVM) and the flow at "
        "the horizon both lose accuracy.",
        {"spurious_dims": sds, "svm_limit_test_error_mean": svm_err, "flow_test_error_mean": out_err,
         "svm_limit_increase_first_to_last": svm_err[-1] - svm_err[0],
         "flow_increase_first_to_last": out_err[-1] - out_err[0]},
        svm_err[-1] > svm_err[0] + 0.1 and out_err[-1] > out_err[0] + 0.05,
    )
    findings["both_layers_beat_output_only"] = finding(
        f"With spurious dimensions ({hi}), both-layer training generalises better than output-layer "
        "training (flow at the horizon) and than the output-only limit.",
        {"spurious_dims": hi, "both": table[hi]["both_test_error_mean"],
         "output_flow": table[hi]["output_test_error_mean"],
         "output_svm_limit": table[hi]["output_svm_limit_test_error_mean"]},
        table[hi]["both_test_error_mean"] < table[hi]["output_test_error_mean"] - 0.05
        and table[hi]["both_test_error_mean"] < table[hi]["output_svm_limit_test_error_mean"] - 0.05,
    )
    ratios = [x for sd in sds for x in table[sd]["output_margin_ratio_to_svm"]]
    findings["output_only_margin_to_svm"] = finding(
        "Output-only training is a linear classifier on the random features: its normalised "
        "margin climbs towards the random-feature SVM margin (Soudry et al.), from below.",
        {"margin_ratio_to_svm_min": min(ratios), "margin_ratio_to_svm_max": max(ratios),
         "horizon_log_t": cfg["log_t1"]},
        0.5 < min(ratios) and max(ratios) <= 1.0 + 1e-6, source="flowsolve check",
    )
    findings["output_only_is_a_linear_model_on_features"] = finding(
        "Output-layer-only training of the two-layer network (TwoLayer(train='output')) follows "
        "the same flow as a linear model on its frozen random features (how the output-only runs "
        "are solved).",
        equivalence,
        equivalence["relative_difference_of_output_weights"] < 1e-6 and equivalence["hidden_layer_moved"] == 0.0,
        source="flowsolve check",
    )
    findings["solver_stalls"] = finding(
        "Every flow reached the horizon: no Filippov-sliding stall of the adaptive solver on the "
        f"both-layer ReLU flows (Tsit5, rtol = {cfg['rtol']:g}, max_steps = {cfg['max_steps']}), "
        "nor on the output-only ones (Kvaerno5).",
        {"stalled_members": stalls, "steps_max": max(max(table[sd]["steps_both"] + table[sd]["steps_output"]) for sd in sds)},
        not stalls, source="numerics",
    )

    _plot_test_error(table, cfg, out)
    _plot_paths(points, cfg, out)
    _plot_boundary(points, cfg, out)
    summary = {
        "paper": "Chizat & Bach (2020), Implicit bias of gradient descent for wide two-layer neural "
                 "networks trained with the logistic loss",
        "settings": {**cfg, "seed": args.seed, "quick": args.quick},
        "findings": findings,
        "details": {"per_spurious_dims": table},
        "wall_time_s": time.perf_counter() - start,
    }
    return write_summary(summary, out, start)


# ------------------------------------------------------------------- plots


def _plot_test_error(table, cfg, out):
    sds = np.array(list(table))
    fig = Figure(figsize=(7, 4.6), layout="constrained")
    ax = fig.add_subplot()
    series = [
        ("both_test_error", f"both layers (flow at t = e^{cfg['log_t1']:g})", "C0", "o", "-"),
        ("output_test_error", f"output layer only (flow at t = e^{cfg['log_t1']:g})", "C1", "s", "-"),
        ("output_svm_limit_test_error", "output layer only, t → ∞ (random-feature SVM)", "C3", "^", "--"),
    ]
    for key, label, color, marker, ls in series:
        vals = np.array([table[sd][key] for sd in table])          # (points, seeds)
        open_marker = key.startswith("output_svm")  # drawn over the flow's: keep both visible
        ax.plot(sds, vals.mean(axis=1), color=color, marker=marker, linestyle=ls, linewidth=1.6, label=label,
                markersize=10 if open_marker else 6, markerfacecolor="none" if open_marker else color)
        if not open_marker:
            ax.fill_between(sds, vals.min(axis=1), vals.max(axis=1), color=color, alpha=0.12, linewidth=0)
    ax.set_xlabel("number of spurious dimensions")
    ax.set_ylabel("test error (mean; band: min–max over seeds)")
    ax.set_xticks(sds)
    ax.set_ylim(bottom=-0.01)
    ax.grid(True, alpha=0.35)
    ax.legend(fontsize=8.5, loc="upper left")
    ax.set_title(f"3×3 cluster grid + uniform spurious dims (n = {cfg['n']}, m = {cfg['width']}, "
                 f"{cfg['seeds']} seeds)", fontsize=10)
    fig.savefig(out / "test_error_vs_spurious_dims.png", dpi=120)


def _plot_paths(points, cfg, out):
    fig = Figure(figsize=(15, 5.4), layout="constrained")
    axes = fig.subplots(1, 3)
    colors = {sd: f"C{i}" for i, sd in enumerate(points)}
    for sd, pt in points.items():
        s = np.logaddexp(0.0, np.asarray(pt["both"]["log_ts"], dtype=float))
        for ax, train, key, transform in (
            (axes[0], "both", "test_error_path", None),
            (axes[0], "output", "test_error_path", None),
            (axes[1], "both", "margin_path", None),
            (axes[2], "output", "margin_path", "svm"),
        ):
            vals = []
            for r in pt[train]["members"]:
                v = np.asarray(r[key], dtype=float)
                if transform == "svm":
                    v = v / r["svm_margin"]
                vals.append(v)
            v = np.nanmedian(np.array(vals), axis=0)
            ls = "-" if train == "both" else "--"
            label = f"{sd} spurious, {'both layers' if train == 'both' else 'output only'}"
            if key == "margin_path":
                v = np.where(v > 0, v, np.nan)
            ax.plot(s, v, color=colors[sd], linestyle=ls, linewidth=1.6, label=label)
    axes[0].set_ylabel("test error (median over seeds)")
    axes[0].set_title("test error (solid: both layers, dashed: output only)", fontsize=10)
    axes[1].set_ylabel("min margin / variation norm (1/m)Σ|b_j|‖a_j‖")
    axes[1].set_title("both layers: F1-normalised margin", fontsize=10)
    axes[1].set_yscale("log")
    axes[2].set_ylabel("min margin / ‖b‖  ÷  random-feature SVM margin")
    axes[2].set_title("output only: margin relative to its SVM limit", fontsize=10)
    axes[2].axhline(1.0, color="0.3", linestyle=":", linewidth=1.2)
    s1 = float(np.logaddexp(0.0, cfg["log_t1"]))
    for i, ax in enumerate(axes):
        # Margins are positive (drawn) only once the training data are fit.
        ax.set_xlim(1e-2 if i == 0 else 1.0, 1.3 * s1)
        log_clock_axis(ax)
        ax.grid(True, alpha=0.35)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(points), fontsize=8.5)
    fig.savefig(out / "margins_and_test_error.png", dpi=120)


def _plot_boundary(points, cfg, out):
    sd = cfg["boundary_spurious"] if cfg["boundary_spurious"] in points else max(points)
    pt = points[sd]
    # The seed where the two trainings differ most (seeds whose cluster labels happen to
    # be linearly separable in the plane show nothing).
    gaps = [o["test_error"] - b["test_error"] for b, o in zip(pt["both"]["members"], pt["output"]["members"])]
    k = int(np.argmax(gaps))
    ds = pt["data"][k]
    g = np.linspace(-1.6, 1.6, 161)
    G1, G2 = np.meshgrid(g, g)
    # The plane of the two informative coordinates, spurious ones at their mean 0, bias 1.
    grid = np.zeros((G1.size, ds.X.shape[1]))
    grid[:, 0], grid[:, 1], grid[:, -1] = G1.ravel(), G2.ravel(), 1.0
    fig = Figure(figsize=(11, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, train, title in ((axes[0], "both", "both layers trained"), (axes[1], "output", "output layer only")):
        model = pt[train]["final_models"][k]
        f = np.asarray(jax.vmap(model)(jnp.asarray(grid))).reshape(G1.shape)
        ax.contourf(G1, G2, np.sign(f), levels=[-2, 0, 2], colors=["#f4c7c3", "#c6dbef"], alpha=0.9)
        ax.contour(G1, G2, f, levels=[0.0], colors="k", linewidths=1.2)
        for label, color in ((1.0, "C0"), (-1.0, "C3")):
            sel = ds.y == label
            ax.scatter(ds.X[sel, 0], ds.X[sel, 1], s=9, color=color, edgecolors="none",
                       label=f"train, y = {label:+.0f}")
        rec = pt[train]["members"][k]
        ax.set_title(f"{title}: test error {rec['test_error']:.3f}", fontsize=10)
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
        ax.set_aspect("equal")
        ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    fig.suptitle(f"decision regions at t = e^{cfg['log_t1']:g} in the informative plane (x₁, x₂) with the "
                 f"{sd} spurious coordinates set to 0 (data set {k}); training points projected onto it",
                 fontsize=11)
    fig.savefig(out / "decision_boundary.png", dpi=120)


if __name__ == "__main__":
    main()
