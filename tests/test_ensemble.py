"""`fs.ensemble`: one compiled solve over many members, checked against member-by-
member solves and, on 4 forced host devices, against the unsharded ensemble."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import equinox as eqx
import jax
import jax.extend.core
import jax.random as jr
import numpy as np
import pytest

import flowsolve as fs


@pytest.fixture(scope="module")
def two_layer_setup():
    X, y = fs.datasets.two_d_nonlinear(n=30, kind="clusters", seed=0)
    models = [fs.models.TwoLayer(X.shape[1], 12, key=jr.key(i), activation="tanh", scaling="ntk") for i in range(6)]
    problem = fs.Problem(models[0], fs.losses.Logistic(), X, y)
    return problem, models


KW = dict(t1=10.0, solver="tsit5", rtol=1e-9, atol=1e-11, metrics=("loss", "param_norm"), saveat=fs.SaveAt(num=8))


def test_ensemble_matches_member_by_member(two_layer_setup):
    problem, models = two_layer_setup
    flow = fs.GradientFlow(problem)
    ens = fs.ensemble.solve(flow, models, **KW)
    assert ens.num_members == len(models) and ens.success
    assert ens.metrics["loss"].shape == (len(models), 8)
    for i, m in enumerate(models):
        single = fs.solve(flow, m, **KW)
        member = ens[i]
        # The same arithmetic, batched: equal to rounding (measured: within 2e-15;
        # `batch_size=1` is bitwise, see below).
        np.testing.assert_allclose(member.metrics["loss"], single.metrics["loss"], rtol=1e-12)
        np.testing.assert_allclose(member.final.hidden, single.final.hidden, rtol=1e-12, atol=1e-15)
        assert member.stats["num_steps"] == single.stats["num_steps"]
        assert member.result == single.result


def test_stacked_model_and_batch_size_give_the_same_answer(two_layer_setup):
    problem, models = two_layer_setup
    flow = fs.GradientFlow(problem)
    ref = fs.ensemble.solve(flow, models, **KW)
    stacked = fs.ensemble.stack(models)
    again = fs.ensemble.solve(flow, stacked, batch_size=4, **KW)  # 6 members → padded to 8
    np.testing.assert_allclose(again.metrics["loss"], ref.metrics["loss"], rtol=1e-12)
    assert again.num_members == 6



def test_members_built_stacked_with_filter_vmap_equal_the_stacked_list(two_layer_setup):
    # The guide's recipe for large ensembles: one `eqx.filter_vmap` of the
    # constructor instead of a list (whose stacking costs a host copy per array).
    # Same keys, same arrays: exactly, as the constructor's arithmetic is the same.
    problem, models = two_layer_setup
    make = lambda k: fs.models.TwoLayer(problem.X.shape[1], 12, key=k, activation="tanh", scaling="ntk")
    built = eqx.filter_vmap(make)(jax.vmap(jr.key)(np.arange(len(models))))
    listed = fs.ensemble.stack(models)
    for a, b in zip(jax.tree_util.tree_leaves(built), jax.tree_util.tree_leaves(listed)):
        np.testing.assert_array_equal(a, b)
    assert eqx.tree_equal(eqx.filter(built, eqx.is_array, inverse=True),
                          eqx.filter(listed, eqx.is_array, inverse=True))
    ens = fs.ensemble.solve(fs.GradientFlow(problem), built, **KW)
    assert ens.num_members == len(models) and ens.success

_ON_CPU = pytest.mark.skipif(jax.devices()[0].platform != "cpu", reason="batch_size='auto' batches all members off CPU")


def test_auto_batch_size_batches_smooth_flows_at_once(two_layer_setup):
    problem, models = two_layer_setup
    ens = fs.ensemble.solve(fs.GradientFlow(problem), models[:2], **KW)
    assert ens.info["batch_size"] is None


@_ON_CPU
def test_auto_batch_size_chunks_of_at_most_32_per_cpu_device(two_layer_setup):
    """Structural: the rule `batch_size="auto"` follows for smooth flows on CPU
    devices (equal chunks of at most 32 members per device, the fewest that do; the
    measurements behind it are in `_auto_batch_size`'s docstring)."""
    from flowsolve._ensemble import _auto_batch_size

    model = two_layer_setup[1][0]
    cases = {(32, 1): None, (33, 1): 17, (100, 1): 25, (256, 1): 32, (256, 2): 32, (257, 2): 26, (6, 4): None}
    for (m, n_dev), expected in cases.items():
        assert _auto_batch_size(model, n_dev, m) == expected, (m, n_dev)


@_ON_CPU
def test_kinked_members_one_after_another_are_single_solves():
    """ReLU flows (step counts that vary by orders of magnitude between members) go
    one after another on one CPU: `fs.solve`'s own program, so bitwise its answer."""
    X, y = fs.datasets.two_d_nonlinear(n=20, kind="clusters", seed=0)
    models = [fs.models.TwoLayer(X.shape[1], 8, key=jr.key(i), activation="relu", scaling="ntk") for i in range(3)]
    flow = fs.GradientFlow(fs.Problem(models[0], fs.losses.Logistic(), X, y))
    kw = dict(t1=2.0, solver="tsit5", rtol=1e-6, atol=1e-8, metrics=("loss",), saveat=fs.SaveAt(num=5))
    ens = fs.ensemble.solve(flow, models, shard=False, **kw)
    assert ens.info["batch_size"] == 1
    for i, m in enumerate(models):
        single = fs.solve(flow, m, **kw)
        np.testing.assert_array_equal(ens[i].metrics["loss"], single.metrics["loss"])
        np.testing.assert_array_equal(ens[i].final.hidden, single.final.hidden)
        assert ens[i].stats["num_steps"] == single.stats["num_steps"]


def _primitives_outside_cond(jaxpr, inside=False, found=None):
    """Names of the primitives of `jaxpr` (recursively) that run outside any
    `lax.cond` branch."""
    found = set() if found is None else found
    for eqn in jaxpr.eqns:
        in_branch = inside or eqn.primitive.name == "cond"
        if not inside:
            found.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            _primitives_outside_cond(sub, in_branch, found)
    return found


def test_log_clock_auto_members_switch_together():
    """Log-clock classification flows with `solver="auto"` (Tsit5, then Rodas5P once
    stiff), vmapped: the members switch in the same step, so the switch stays a
    `lax.cond` (a predicate that differed between members would make `vmap` run
    both branches — a Jacobian and an LU factorisation on every explicit step);
    and each member still solves its own flow, checked against a tight
    per-parameter Rodas5P solve."""
    from flowsolve._ensemble import _ensemble_program
    from flowsolve._solve import prepare

    X, y = fs.datasets.separable_gaussian(n=40, d=5, seed=0)
    models = [fs.models.Linear(5, weight=0.3 * np.asarray(jr.normal(jr.key(i), (5,)))) for i in range(3)]
    flow = fs.GradientFlow(fs.Problem(models[0], fs.losses.Logistic(), X, y))
    kw = dict(log_t1=300.0, clock="log", rtol=1e-8, atol=1e-10, metrics=("loss",), saveat=fs.SaveAt(num=5))
    ens = fs.ensemble.solve(flow, models, batch_size=None, **kw)
    assert ens.success and ens.info["solver"] == "tsit5→rodas5p"
    # Measured: every member switches near log t ≈ 4.7–4.9 (on its own, at 4.85–4.96).
    assert np.all(np.isfinite(ens.info["switched_at"]))
    for i, m in enumerate(models):
        assert ens[i].info["solver"] == "tsit5→rodas5p" and ens[i].info["switched_at"] == ens.info["switched_at"][i]
        ref = fs.solve(flow, m, **{**kw, "rtol": 1e-12, "atol": 1e-14}, solver="rodas5p", error_norm="componentwise")
        # Measured 2e-12 to 8e-12 relative (a single auto solve: 5e-12 to 8e-12);
        # the bound leaves 100× for other BLAS and CPUs.
        w, w_ref = ens[i].final.weight, ref.final.weight
        assert np.linalg.norm(w - w_ref) <= 1e-9 * np.linalg.norm(w_ref)

    setup = prepare(flow, models[0], None, **kw, t0=0.0, solver="auto", dt0=None, progress=False,
                    max_steps=10_000, error_norm="auto")
    y0s = fs.ensemble.stack([eqx.filter(m, eqx.is_inexact_array) for m in models])
    jaxpr = eqx.filter_make_jaxpr(_ensemble_program)((setup.args, y0s, flow, False, None, "log", None, False, True))[0].jaxpr
    # Rodas5P's LU factorisation runs only inside the switch's `cond`.
    assert "lu" not in _primitives_outside_cond(jaxpr)


def test_linear_clock_completion_members_switch_to_the_gauss_newton_w_method():
    """Squared-loss flows with n < p on the linear clock: `auto`'s implicit side is
    the Gauss–Newton ROS34PW2, also vmapped (JVP/VJP of the predictions, a batched
    Cholesky factorisation of the n×n Gram system inside the switch's `cond`).
    Every entry is observed, so each member's limit is the matrix itself."""
    from flowsolve._ensemble import _ensemble_program
    from flowsolve._solve import prepare

    data = fs.datasets.low_rank_completion((8, 8), 1, n_observed=64, seed=0)
    models = [fs.models.MatrixFactorization((8, 8), depth=3, key=jr.key(i), init_scale=1e-4) for i in range(3)]
    flow = fs.GradientFlow(fs.Problem(models[0], fs.losses.Squared(), data.X, data.y))
    kw = dict(t1=1e6, clock="linear", rtol=1e-8, atol=1e-10, metrics=("loss",), saveat=fs.SaveAt(num=5))
    ens = fs.ensemble.solve(flow, models, batch_size=None, **kw)
    assert ens.success and ens.info["solver"] == "tsit5→ros34pw2-gn"
    assert np.all(np.isfinite(ens.info["switched_at"]))  # measured: log t ≈ 10.8–10.9
    for i in range(3):
        W = np.asarray(ens[i].final.end_to_end())
        # Measured 6e-12 to 8e-12: what is left of the init (scale 1e-4, cubed) in
        # the directions the data do not excite, plus the rtol-sized error.
        assert np.linalg.norm(W - data.truth) <= 1e-9 * np.linalg.norm(data.truth)

    setup = prepare(flow, models[0], 1e6, **{k: v for k, v in kw.items() if k != "t1"}, log_t1=None,
                    t0=0.0, solver="auto", dt0=None, progress=False, max_steps=10_000, error_norm="auto")
    y0s = fs.ensemble.stack([eqx.filter(m, eqx.is_inexact_array) for m in models])
    jaxpr = eqx.filter_make_jaxpr(_ensemble_program)((setup.args, y0s, flow, False, None, "linear", None, False, True))[0].jaxpr
    assert "cholesky" in str(jaxpr)  # the W-method is in the program: inside the cond
    assert "cholesky" not in _primitives_outside_cond(jaxpr)


def test_flows_varying_in_damping(two_layer_setup):
    problem, models = two_layer_setup
    dampings = [0.0, 0.1, 1.0]
    flows = [fs.NaturalGradientFlow(problem, damping=lam) for lam in dampings]
    ens = fs.ensemble.solve(flows, models[:3], t1=3.0, solver="tsit5", rtol=1e-10, atol=1e-12, metrics=("loss",))
    for i, flow in enumerate(flows):
        single = fs.solve(flow, models[i], t1=3.0, solver="tsit5", rtol=1e-10, atol=1e-12, metrics=("loss",))
        # Batched eigendecompositions differ from single ones in the last bits.
        np.testing.assert_allclose(ens[i].metrics["loss"], single.metrics["loss"], rtol=1e-8)
    # More damping, slower descent.
    assert ens.metrics["loss"][0, -1] < ens.metrics["loss"][1, -1] < ens.metrics["loss"][2, -1]


def test_one_failed_member_does_not_sink_the_batch(two_layer_setup):
    problem, models = two_layer_setup
    flow = fs.GradientFlow(problem)
    bad = eqx.tree_at(lambda m: m.output, models[1], models[1].output.at[0].set(np.nan))
    ens = fs.ensemble.solve(flow, [models[0], bad, models[2]], t1=5.0, solver="tsit5", metrics=("loss",), max_steps=2000)
    assert ens.results[0].success and ens.results[2].success
    assert not ens.results[1].success
    assert not ens.success and ens.result == ens.results[1]
    assert np.all(np.isfinite(ens.metrics["loss"][[0, 2]]))


def test_ensemble_descend_matches_single(two_layer_setup):
    problem, models = two_layer_setup
    ens = fs.ensemble.descend(problem, models, lr=0.5, steps=300, metrics=("loss",))
    for i in (0, 4):
        single = fs.descend(problem, models[i], lr=0.5, steps=300, metrics=("loss",))
        np.testing.assert_allclose(ens[i].metrics["loss"], single.metrics["loss"], rtol=1e-12)
        np.testing.assert_array_equal(ens[i].log_ts, single.log_ts)



@pytest.mark.parametrize("interrupt_at", [0, 2])
def test_ensemble_descend_interrupted_keeps_the_chunks_done(two_layer_setup, monkeypatch, interrupt_at):
    """A KeyboardInterrupt during chunk `interrupt_at` (chunks of 4 save points):
    every member keeps the points of the chunks before it, bitwise those of an
    uninterrupted run, ends at the last of them, and is marked interrupted. An
    interrupt before any chunk finished returns an empty trajectory at θ0."""
    from flowsolve import _descend

    problem, models = two_layer_setup
    kw = dict(lr=0.5, steps=200, metrics=("loss",), saveat=fs.SaveAt(num=20, spacing="linear", params=True), chunk=4)
    full = fs.ensemble.descend(problem, models[:3], **kw)
    real, calls = _descend.compile_and_run, []

    def interrupting(*args):
        calls.append(1)
        if len(calls) == interrupt_at + 1:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(_descend, "compile_and_run", interrupting)
    ens = fs.ensemble.descend(problem, models[:3], **kw)
    kept = 4 * interrupt_at
    assert ens.result is fs.RESULTS.interrupted and ens.results == (fs.RESULTS.interrupted,) * 3
    assert ens.metrics["loss"].shape == (3, kept)
    np.testing.assert_array_equal(ens.metrics["loss"], full.metrics["loss"][:, :kept])
    np.testing.assert_array_equal(ens.log_ts, full.log_ts[:kept])
    for i in range(3):
        want = full.params.output[i, kept - 1] if kept else models[i].output
        np.testing.assert_array_equal(ens[i].final.output, want)

def test_ensemble_round_trips(tmp_path, two_layer_setup):
    problem, models = two_layer_setup
    ens = fs.ensemble.solve(fs.GradientFlow(problem), models[:2], **KW)
    back = fs.Trajectory.load(ens.save(tmp_path / "ens.traj"))
    assert back.results == ens.results
    np.testing.assert_array_equal(back.metrics["loss"], ens.metrics["loss"])
    np.testing.assert_array_equal(back[1].metrics["loss"], ens[1].metrics["loss"])


def test_bad_ensemble_arguments(two_layer_setup):
    problem, models = two_layer_setup
    flow = fs.GradientFlow(problem)
    with pytest.raises(ValueError, match="one model with the problem's parameter shapes, not an ensemble"):
        fs.ensemble.solve(flow, models[0], t1=1.0)
    with pytest.raises(ValueError, match="one flow per member"):
        fs.ensemble.solve([flow, flow], models[:3], t1=1.0)
    other = fs.models.TwoLayer(problem.X.shape[1], 12, key=jr.key(0), activation="relu")
    with pytest.raises(ValueError, match="non-array attribute"):
        fs.ensemble.stack([models[0], other])
    with pytest.raises(ValueError, match="batch_size"):
        fs.ensemble.solve(flow, models, t1=1.0, batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        fs.ensemble.solve(flow, models, t1=1.0, batch_size="all")


_SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.random as jr, numpy as np, flowsolve as fs
    assert len(jax.devices()) == 4, jax.devices()
    X, y = fs.datasets.two_d_nonlinear(n=30, kind="clusters", seed=0)
    models = [fs.models.TwoLayer(X.shape[1], 12, key=jr.key(i), activation="tanh", scaling="ntk") for i in range(6)]
    problem = fs.Problem(models[0], fs.losses.Logistic(), X, y)
    flow = fs.GradientFlow(problem)
    kw = dict(t1=10.0, solver="tsit5", rtol=1e-9, atol=1e-11, metrics=("loss",), saveat=fs.SaveAt(num=8))
    sharded = fs.ensemble.solve(flow, models, **kw)
    unsharded = fs.ensemble.solve(flow, models, shard=False, **kw)
    singles = [fs.solve(flow, m, **kw) for m in models]
    chunked = fs.ensemble.solve(flow, models, batch_size=1, **kw)  # one member at a time on each device
    steps = np.array([s.stats["num_steps"] for s in singles])
    singles = np.stack([s.metrics["loss"] for s in singles])
    ngfs = [fs.NaturalGradientFlow(problem, damping=10.0 ** -k) for k in range(1, 7)]  # one flow per member
    kw_ngf = dict(t1=2.0, solver="tsit5", rtol=1e-9, atol=1e-11, metrics=("loss",), saveat=fs.SaveAt(num=4))
    ngf_sharded = fs.ensemble.solve(ngfs, models, batch_size=2, **kw_ngf)
    ngf_singles = np.stack([fs.solve(f, m, **kw_ngf).metrics["loss"] for f, m in zip(ngfs, models)])
    # Kvaerno5 goes through lineax, whose structure checks fail inside shard_map:
    # the ensemble falls back to a sharded vmap.
    Xl, yl = fs.datasets.separable_gaussian(n=40, d=5, seed=0)
    lins = [fs.models.Linear(5, key=jr.key(i)) for i in range(6)]
    lin_flow = fs.GradientFlow(fs.Problem(lins[0], fs.losses.Logistic(), Xl, yl))
    kw_k = dict(log_t1=20.0, clock="log", solver="kvaerno5", rtol=1e-8, atol=1e-11, metrics=("loss",),
                saveat=fs.SaveAt(num=4))
    kv = fs.ensemble.solve(lin_flow, lins, batch_size=1, **kw_k)
    kv_singles = np.stack([fs.solve(lin_flow, m, **kw_k).metrics["loss"] for m in lins])
    d_sharded = fs.ensemble.descend(problem, models, lr=0.5, steps=100, metrics=("loss",))
    d_single = np.stack([fs.descend(problem, m, lr=0.5, steps=100, metrics=("loss",)).metrics["loss"] for m in models])
    json.dump({
        "devices": sharded.stats["num_devices"],
        "sharded_vs_unsharded": float(np.max(np.abs(sharded.metrics["loss"] - unsharded.metrics["loss"]))),
        "sharded_vs_singles": float(np.max(np.abs(sharded.metrics["loss"] - singles))),
        "chunks_vs_singles": float(np.max(np.abs(chunked.metrics["loss"] - singles))),
        "chunks_steps_equal": bool(np.array_equal(chunked.stats["num_steps"], steps)),
        "flows_chunks_vs_singles": float(np.max(np.abs(ngf_sharded.metrics["loss"] - ngf_singles))),
        "per_device_loop": [sharded.info["per_device_loop"], kv.info["per_device_loop"]],
        "kvaerno_vs_singles": float(np.max(np.abs(kv.metrics["loss"] - kv_singles) / kv_singles)),
        "descend_sharded_vs_singles": float(np.max(np.abs(d_sharded.metrics["loss"] - d_single))),
        "members": sharded.num_members,
    }, sys.stdout)
    """
)


def test_sharded_over_four_host_devices():
    """The member axis sharded over 4 (forced) CPU devices gives the unsharded and
    the member-by-member answers, all at once and one member at a time per device;
    and so do per-member flows in chunks. Tolerance 1e-12 on losses of order 0.1–1:
    the same arithmetic, batched differently (measured ≤ 3e-14)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["devices"] == 4 and res["members"] == 6  # 6 members padded to 8 over 4 devices
    assert res["sharded_vs_unsharded"] <= 1e-12
    assert res["sharded_vs_singles"] <= 1e-12
    # Each device runs its own loop (`shard_map`): one member at a time on each, a
    # member takes its own step count.
    assert res["chunks_vs_singles"] <= 1e-12 and res["chunks_steps_equal"]
    # Flows that differ per member (NGF damping 1e-1 … 1e-6), chunks of 2 per device.
    assert res["flows_chunks_vs_singles"] <= 1e-12
    # Kvaerno5 falls back to a sharded vmap (its losses reach ~1e-9: compared
    # relatively, same bound).
    assert res["per_device_loop"] == [True, False]
    assert res["kvaerno_vs_singles"] <= 1e-12
    assert res["descend_sharded_vs_singles"] <= 1e-12


@_ON_CPU
def test_large_ensemble_on_one_cpu_device_hints_once_at_the_cores(monkeypatch):
    """Structural: a multi-core CPU seen as one device gets a one-time hint naming the
    setting that shards members over the cores; small ensembles and later calls do
    not."""
    from flowsolve import _ensemble

    if len(jax.devices()) > 1:
        pytest.skip("JAX already sees several devices")
    monkeypatch.setattr(_ensemble.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(_ensemble, "_hinted", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _ensemble._hint_cpu_devices(63)  # below the threshold: silent
    with pytest.warns(UserWarning, match=r'jax_num_cpu_devices", 8\)'):
        _ensemble._hint_cpu_devices(64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _ensemble._hint_cpu_devices(256)  # once per process


@_ON_CPU
def test_interrupted_one_after_another_keeps_the_members_solved(monkeypatch):
    """A KeyboardInterrupt during the third member's solve: the first two are
    returned as `fs.solve` gives them (bitwise), the rest marked interrupted and
    left at θ0 with no save point reached."""
    from flowsolve import _ensemble

    X, y = fs.datasets.two_d_nonlinear(n=20, kind="clusters", seed=0)
    models = [fs.models.TwoLayer(X.shape[1], 8, key=jr.key(i), activation="relu", scaling="ntk") for i in range(5)]
    flow = fs.GradientFlow(fs.Problem(models[0], fs.losses.Logistic(), X, y))
    kw = dict(t1=2.0, solver="tsit5", rtol=1e-6, atol=1e-8, metrics=("loss",), saveat=fs.SaveAt(num=5))
    singles = [fs.solve(flow, m, **kw) for m in models[:2]]
    real, calls = _ensemble.compile_and_run, []

    def interrupt_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(_ensemble, "compile_and_run", interrupt_third)
    ens = fs.ensemble.solve(flow, models, shard=False, **kw)
    assert ens.info["batch_size"] == 1 and ens.num_members == 5
    assert ens.results[:2] == (fs.RESULTS.successful,) * 2
    assert ens.results[2:] == (fs.RESULTS.interrupted,) * 3 and ens.result is fs.RESULTS.interrupted
    for i, single in enumerate(singles):
        np.testing.assert_array_equal(ens[i].metrics["loss"], single.metrics["loss"])
        np.testing.assert_array_equal(ens[i].final.hidden, single.final.hidden)
    for i in range(2, 5):
        assert np.all(np.isnan(ens.metrics["loss"][i])) and ens.stats["num_steps"][i] == 0
        np.testing.assert_array_equal(ens[i].final.hidden, models[i].hidden)
    # Nothing solved yet: the interrupt propagates.
    calls.clear()
    monkeypatch.setattr(_ensemble, "compile_and_run", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        fs.ensemble.solve(flow, models, shard=False, **kw)


def test_progress_is_one_bar_over_members(two_layer_setup, capfd):
    """Chunked (or one-after-another) ensembles show one bar counting members
    (not a clock bar per chunk), and the answers are those without a bar."""
    problem, models = two_layer_setup  # 6 members
    flow = fs.GradientFlow(problem)
    quiet = fs.ensemble.solve(flow, models, batch_size=4, **KW)  # 8 with padding
    capfd.readouterr()
    for batch_size in (4, 1):
        shown = fs.ensemble.solve(flow, models, batch_size=batch_size, progress=True, shard=False, **KW)
        err = capfd.readouterr().err
        assert "flowsolve ensemble" in err and "6/6" in err and "t = " not in err, err[-300:]
        np.testing.assert_allclose(shown.metrics["loss"], quiet.metrics["loss"], rtol=1e-12)


@_ON_CPU
def test_auto_solver_choice_does_not_depend_on_member_order():
    """On the linear clock `"auto"` decides from a stiffness estimate; over an
    ensemble the stiffest member decides. A ReLU network at init scale 30 is stiff
    (ρ·t ≈ 6e4: Tsit5 → Rodas5P) and one at 0.1 is not (Bosh3 alone). Whatever
    the order, both members get the switching solver, the stiff one the answer
    `fs.solve` gives it, and permuting the members permutes the answers exactly
    (member 0 alone once decided, and the stiff member took 92× its steps)."""
    X, y = fs.datasets.separable_gaussian(n=10, d=3, seed=0)
    keys = jr.split(jr.key(0), 2)
    small = fs.models.TwoLayer(3, 4, key=keys[0], activation="relu", init_scale=0.1)
    large = fs.models.TwoLayer(3, 4, key=keys[1], activation="relu", init_scale=30.0)
    flow = fs.GradientFlow(fs.Problem(small, fs.losses.Squared(), X, np.asarray(X)[:, 0]))
    kw = dict(t1=200.0, metrics=("loss",), saveat=fs.SaveAt(num=5), rtol=1e-6, max_steps=20000)
    alone = fs.solve(flow, large, **kw)
    assert alone.info["solver"] == "tsit5→rodas5p" and fs.solve(flow, small, **kw).info["solver"] == "bosh3"
    a = fs.ensemble.solve(flow, [small, large], batch_size=1, **kw)
    b = fs.ensemble.solve(flow, [large, small], batch_size=1, **kw)
    assert a.info["stiffness"] == b.info["stiffness"]
    assert a.info["stiffness"] == pytest.approx(alone.info["stiffness"], rel=1e-12)  # vmapped power iteration
    np.testing.assert_array_equal(a.metrics["loss"], b.metrics["loss"][::-1])
    np.testing.assert_array_equal(a.stats["num_steps"], b.stats["num_steps"][::-1])
    np.testing.assert_array_equal(a.metrics["loss"][1], alone.metrics["loss"])
    assert a.stats["num_steps"][1] == alone.stats["num_steps"]


def test_member_data_and_chunk_size_checks():
    """Per-member data: a linear margin needs every member's data separable, as
    `fs.solve` requires of one (only member 0's was checked, so the order decided
    whether the call raised). A `batch_size` past the member count runs them all at
    once instead of padding the ensemble with copies to fill the chunk."""
    X, y = fs.datasets.separable_gaussian(n=12, d=3, seed=0)
    Xn, yn = (np.array(a) for a in fs.datasets.separable_gaussian(n=12, d=3, seed=1))
    Xn[1], yn[1] = Xn[0], -yn[0]  # the same input with both labels: no separator
    model = fs.models.Linear(3)
    sep = fs.GradientFlow(fs.Problem(model, fs.losses.Logistic(), X, y))
    nonsep = fs.GradientFlow(fs.Problem(model, fs.losses.Logistic(), Xn, yn))
    kw = dict(t1=5.0, metrics=("loss", "margin"), saveat=fs.SaveAt(num=3))
    for flows, bad in (([sep, nonsep], "Member 1's flow"), ([nonsep, sep], "not linearly separable")):
        with pytest.raises(ValueError, match=bad):
            fs.ensemble.solve(flows, [model, model], **kw)
    models = [fs.models.Linear(3, weight=[0.1 * i, 0.0, 0.0]) for i in range(4)]
    ens = fs.ensemble.solve(sep, models, batch_size=64, shard=False, **kw)
    assert ens.info["batch_size"] is None and ens.num_members == 4
    np.testing.assert_array_equal(ens.metrics["loss"], fs.ensemble.solve(sep, models, batch_size=None, shard=False, **kw).metrics["loss"])
