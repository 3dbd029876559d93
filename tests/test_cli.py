import contextlib
import io
import json
import math

import numpy as np
import pytest
import scipy.optimize

import flowsolve as fs
from flowsolve._cli import main


N, D, LOG_T1 = 40, 5, 50.0


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    argv = [
        "demo",
        "--out",
        str(folder),
        "--log-t1",
        str(LOG_T1),
        "--n",
        str(N),
        "--d",
        str(D),
        "--no-progress",
    ]
    code, stdout, stderr = _run(argv)
    return folder, code, stdout, stderr


def _svm_margin(X, y):
    """Hard-margin SVM through the origin by SLSQP, independent of fs.reference:
    min ½‖w‖² s.t. y_i xᵢᵀw ≥ 1, margin 1/‖w‖."""
    Z = y[:, None] * X
    w0 = np.linalg.lstsq(Z, np.ones(len(y)), rcond=None)[0]
    w0 = w0 / np.min(Z @ w0)  # feasible start (the data are separable)
    res = scipy.optimize.minimize(
        lambda w: 0.5 * w @ w,
        w0,
        jac=lambda w: w,
        constraints=[
            {"type": "ineq", "fun": lambda w: Z @ w - 1.0, "jac": lambda w: Z}
        ],
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 1000},
    )
    assert res.success, res.message
    # Polish on the active set: w = Z_Sᵀ (Z_S Z_Sᵀ)⁻¹ 1 is exact there.
    active = Z @ res.x <= 1.0 + 1e-6
    Zs = Z[active]
    w = Zs.T @ np.linalg.solve(Zs @ Zs.T, np.ones(len(Zs)))
    assert np.min(Z @ w) > 1.0 - 1e-9  # still feasible
    return 1.0 / np.linalg.norm(w)


def _numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


def test_demo_writes_plot_and_summary(demo):
    folder, code, stdout, stderr = demo
    assert code == 0, stderr
    png, summary_path = folder / "demo.png", folder / "summary.json"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000  # three panels, not an empty canvas
    assert str(png) in stdout and str(summary_path) in stdout
    summary = json.loads(summary_path.read_text())
    assert all(math.isfinite(x) for x in _numbers(summary))
    assert summary["data"] == {
        "generator": "separable_gaussian",
        "n": N,
        "d": D,
        "seed": 0,
    }
    linear, deep = summary["runs"]
    assert (linear["model"], linear["solver"]) == ("Linear", "kvaerno5")
    assert (deep["model"], deep["solver"]) == ("DeepLinear", "tsit5")
    assert linear["log_t_reached"] == pytest.approx(LOG_T1)
    assert deep["log_t_reached"] == pytest.approx(min(LOG_T1, 30.0))
    for run in (linear, deep):
        assert run["result"] == "successful" and run["success"] is True
        assert run["accepted_steps"] > 0 and run["rejected_steps"] >= 0
        assert run["wall_time_s"] >= 0 and run["compile_time_s"] >= 0
        # Logistic loss ≈ 1/t on separable data: log10 L ≈ -log10 t, up to
        # the log-t corrections.
        assert run["log10_loss"] < -0.8 * run["log_t_reached"] / math.log(10)


def test_demo_margin_against_independent_svm(demo):
    folder, code, _, stderr = demo
    assert code == 0, stderr
    summary = json.loads((folder / "summary.json").read_text())
    X, y = fs.datasets.separable_gaussian(n=N, d=D, seed=0)
    gamma = _svm_margin(np.asarray(X), np.asarray(y))
    assert summary["svm_margin"] == pytest.approx(gamma, rel=1e-6)
    for run in summary["runs"]:
        # The normalised margin approaches γ* from below at rate ~C/log t
        # (Soudry et al. 2018): at log t = 30…50 the relative gap is a few
        # percent. Loose band: strictly positive, below 10%.
        gap = (gamma - run["margin"]) / gamma
        assert 0.0 < gap < 0.1, run
        assert run["margin_gap"] == pytest.approx(gap, abs=1e-5)


def test_demo_prints_table(demo):
    _, code, stdout, _ = demo
    assert code == 0
    assert "kvaerno5" in stdout and "tsit5" in stdout
    for header in (
        "log t",
        "accepted",
        "rejected",
        "compile",
        "log10 loss",
        "gap to SVM",
    ):
        assert header in stdout
    assert "γ*" in stdout and "successful" in stdout


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["demo", "--log-t1", "-1"], "--log-t1"),
        (["demo", "--log-t1", "nan"], "--log-t1"),
        (["demo", "--n", "1"], "--n"),
        (["demo", "--d", "three"], "--d"),
        (["demo", "--bogus"], "unrecognized"),
        (["frobnicate"], "invalid choice"),
        ([], "usage"),
    ],
)
def test_bad_arguments(argv, fragment):
    code, _, stderr = _run(argv)
    assert code == 2
    assert fragment in stderr
    assert "Traceback" not in stderr


def test_output_folder_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, stderr = _run(["demo", "--out", str(blocker / "sub"), "--no-progress"])
    assert code == 1
    assert "cannot create the output folder" in stderr
    assert "Traceback" not in stderr


def test_version():
    code, stdout, _ = _run(["--version"])
    assert code == 0 and stdout.startswith("flowsolve ")
