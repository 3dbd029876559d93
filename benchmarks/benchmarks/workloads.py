"""The canonical workloads of `scripts/compare_peers.py` (see `_common.Workload`):
gradient flow on a separable logistic problem, a width-1000 two-layer ReLU network
and depth-3 matrix completion, and natural-gradient flow on the logistic problem.

`time_solve` is `fs.solve` with `solver="auto"` after compilation and a warm-up
run; `time_solve_same_solver` is `fs.solve` with the fixed solver that `"auto"`
resolved to, and `time_hand_diffrax` a jitted `diffrax.diffeqsolve` of the same
vector field written by hand, with that solver, the same tolerances and save points
(their ratio is flowsolve's overhead). `timeraw_first_solve` is the first call in
a fresh interpreter (trace, compile, one run); `track_*` report steps, vector-field
evaluations, accuracy and compile time from one process (`setup_cache`).
"""

import textwrap

import jax

import flowsolve as fs

from ._common import WORKLOADS, Workload, count_vf_evals


def _fixed_solver(sol) -> str:
    """The fixed solver behind an `"auto"` solve (a switched one: the implicit end)."""
    return sol.info["solver"].split("→")[-1]


class SolveWorkloads:
    """Wall time after compile: flowsolve (auto, and the solver auto resolved to)
    against hand-written diffrax with that solver."""

    params = [WORKLOADS]
    param_names = ["workload"]
    timeout = 600
    warmup_time = 0.0  # setup already ran every compiled program once

    def setup(self, workload):
        self.w = Workload(workload)
        sol = self.w.solve()  # compile + warm up
        self.fixed = _fixed_solver(sol)
        self.w.solve(self.fixed)
        self.hand = self.w.hand_diffrax(self.fixed)

    def time_solve(self, workload):
        self.w.solve()

    def time_solve_same_solver(self, workload):
        self.w.solve(self.fixed)

    def time_hand_diffrax(self, workload):
        jax.block_until_ready(self.hand())


class SolveMemory:
    """Peak resident memory of a process that builds a workload and solves it
    (compilation included)."""

    params = [WORKLOADS]
    param_names = ["workload"]
    timeout = 300

    def setup(self, workload):
        self.w = Workload(workload)

    def peakmem_solve(self, workload):
        self.w.solve()


class SolveStats:
    """Steps, vector-field evaluations, accuracy and compile time of `fs.solve`
    (auto) on each workload, computed once per process."""

    params = [WORKLOADS]
    param_names = ["workload"]
    timeout = 900

    def setup_cache(self):
        results = {}
        for name in WORKLOADS:
            w = Workload(name)
            sol = w.solve()
            # Reference: the same solve at rtol 1e-11 / atol 1e-13 (ReLU: the exact
            # conserved quantities instead; a tight solve stalls on the kinks).
            ref = None
            if name != "relu":
                ref = fs_solve_tight(w)
            results[name] = {
                "accepted": sol.stats["num_accepted_steps"],
                "rejected": sol.stats["num_rejected_steps"],
                "vf_evals": count_vf_evals(lambda wrap, w=w: w.solve(flow=wrap(w.flow))),
                "error": w.error(sol, ref),
                "compile": sol.stats["compile_time"],
                "solver": sol.info["solver"],
            }
        return results

    def track_accepted_steps(self, results, workload):
        return results[workload]["accepted"]

    track_accepted_steps.unit = "steps"

    def track_rejected_steps(self, results, workload):
        return results[workload]["rejected"]

    track_rejected_steps.unit = "steps"

    def track_vf_evals(self, results, workload):
        return results[workload]["vf_evals"]

    track_vf_evals.unit = "evaluations"

    def track_error(self, results, workload):
        return results[workload]["error"]

    track_error.unit = "relative error (relu: conserved-quantity drift)"

    def track_compile_time(self, results, workload):
        return results[workload]["compile"]

    track_compile_time.unit = "seconds"


def fs_solve_tight(w):
    return fs.solve(w.flow, w.model, **dict(w.kw, rtol=1e-11, atol=1e-13))


_BUILD = {
    # Plain flowsolve calls (a fresh interpreter does not see this package).
    "logistic": """
        X, y = fs.datasets.separable_gaussian(n=200, d=50, seed=0)
        model = fs.models.Linear(50)
        flow = fs.GradientFlow(fs.Problem(model, fs.losses.Logistic(), X, y))
        kw = dict(log_t1=math.log(1e8), clock="log", rtol=1e-8, atol=1e-10)
        """,
    "ngf": """
        X, y = fs.datasets.separable_gaussian(n=200, d=50, seed=0)
        model = fs.models.Linear(50)
        flow = fs.NaturalGradientFlow(fs.Problem(model, fs.losses.Logistic(), X, y))
        kw = dict(log_t1=math.log(1e8), clock="log", rtol=1e-8, atol=1e-10)
        """,
    "relu": """
        X, y = fs.datasets.two_d_nonlinear(n=50, kind="clusters", seed=0)
        model = fs.models.TwoLayer(X.shape[1], 1000, key=jr.key(0), activation="relu")
        flow = fs.GradientFlow(fs.Problem(model, fs.losses.Logistic(), X, y))
        kw = dict(log_t1=math.log(1e4), clock="log", rtol=1e-4, atol=1e-6)
        """,
    "mc": """
        X, y = fs.datasets.low_rank_completion((30, 30), 2, seed=0)
        model = fs.models.MatrixFactorization((30, 30), depth=3, key=jr.key(0), init_scale=1e-3)
        flow = fs.GradientFlow(fs.Problem(model, fs.losses.Squared(), X, y))
        kw = dict(t1=1e4, clock="linear", rtol=1e-8, atol=1e-10)
        """,
}


class FirstSolve:
    """The first `fs.solve` of a workload in a fresh interpreter: tracing, XLA
    compilation and one run (imports and data untimed)."""

    params = [WORKLOADS]
    param_names = ["workload"]
    timeout = 300

    def timeraw_first_solve(self, workload):
        setup = textwrap.dedent(
            """
            import math
            import jax
            import jax.random as jr
            jax.config.update("jax_enable_x64", True)
            import flowsolve as fs
            """
        ) + textwrap.dedent(_BUILD[workload])
        stmt = 'fs.solve(flow, model, saveat=fs.SaveAt(num=2), metrics=("loss",), **kw)'
        return stmt, setup


class CompletionPastConvergence:
    """`mc` past convergence (t = 1e5, 1e8), where the flow is stiff: `"auto"`
    switches to the Gauss–Newton ROS34PW2 (an n×n Gram system per step, n = 464,
    p = 2 700). Tsit5 alone needs ~ρt/3.3 steps (6.7e6 to t = 1e8)."""

    params = [["1e5", "1e8"]]
    param_names = ["horizon"]
    timeout = 600
    warmup_time = 0.0

    def setup(self, horizon):
        self.w = Workload("mc")
        self.w.kw["t1"] = float(horizon)
        self.w.solve()  # compile + warm up

    def time_solve(self, horizon):
        self.w.solve()


class CompletionPastConvergenceStats:
    """Steps, switches and accuracy of `CompletionPastConvergence`, against a
    Tsit5 solve at rtol 1e-11 / atol 1e-13 to t = 1e5 (converged: loss ~1e-15, the
    limit for every later t)."""

    params = [["1e5", "1e8"]]
    param_names = ["horizon"]
    timeout = 900

    def setup_cache(self):
        w = Workload("mc")
        w.kw["t1"] = 1e5
        ref = fs.solve(w.flow, w.model, **dict(w.kw, solver="tsit5", rtol=1e-11, atol=1e-13))
        results = {}
        for horizon in ("1e5", "1e8"):
            w.kw["t1"] = float(horizon)
            sol = w.solve()
            results[horizon] = {
                "accepted": sol.stats["num_accepted_steps"],
                "rejected": sol.stats["num_rejected_steps"],
                "switches": sol.info.get("switches", 0),
                "error": w.error(sol, ref),
            }
        return results

    def track_accepted_steps(self, results, horizon):
        return results[horizon]["accepted"]

    track_accepted_steps.unit = "steps"

    def track_rejected_steps(self, results, horizon):
        return results[horizon]["rejected"]

    track_rejected_steps.unit = "steps"

    def track_switches(self, results, horizon):
        return results[horizon]["switches"]

    track_switches.unit = "switches to the implicit method"

    def track_error(self, results, horizon):
        return results[horizon]["error"]

    track_error.unit = "relative error of the end-to-end matrix"
