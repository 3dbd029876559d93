"""Helpers shared by the `reproduce_*.py` scripts: findings, the JSON summary, log-
clock save points and the log-clock plot axis."""

import json
import math
import time
from pathlib import Path

import numpy as np

import flowsolve as fs


LN10 = math.log(10.0)


def log(msg: str) -> None:
    print(msg, flush=True)


def finding(claim, measured, holds, source="paper", note=None) -> dict:
    """One checked claim: what the paper says, what was measured, whether it holds."""
    out = {"claim": claim, "measured": measured, "holds": bool(holds), "source": source}
    if note:
        out["note"] = note
    return out


def jsonable(x):
    """`x` with NumPy scalars/arrays as Python values and non-finite floats as text."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    if isinstance(x, np.integer | int):
        return int(x)
    if isinstance(x, np.floating | float):
        x = float(x)
        return x if math.isfinite(x) else str(x)
    return x


def write_summary(summary: dict, out: Path, start: float) -> dict:
    """Write `summary.json` into `out`, print the findings, return the JSON form."""
    summary = jsonable(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    log("\nFindings:")
    for name, f in summary["findings"].items():
        log(f"  [{'holds' if f['holds'] else 'FAILS'}] {name}: {f['claim']}")
        log(f"      {json.dumps(f['measured'], ensure_ascii=False)}")
    log(f"\nWrote {out}/summary.json and plots in {time.perf_counter() - start:.0f} s.")
    return summary


def log_clock_saves(log_t1: float, num: int, params: bool = False) -> fs.SaveAt:
    """Save points log-spaced in s = log(1 + t) from s = 1e-2 to the horizon (the
    default spaces them linearly in s, which leaves the early phase with one point),
    given as log t so that horizons past float64 work."""
    s1 = float(np.logaddexp(0.0, log_t1))
    s = np.geomspace(1e-2, s1, num)
    log_t = s + np.log(-np.expm1(-s))  # log(e^s − 1), stably at both ends
    log_t[-1] = log_t1
    return fs.SaveAt(log_ts=log_t, params=params)


def log_clock_axis(ax, decades=(-1, 0, 2, 4, 10, 30, 100, 300, 1000, 3000, 10000)):
    """x = s = log(1 + t) on a log axis, with t = 10^k (k in `decades`) marked on a
    top axis."""
    ax.set_xscale("log")
    ax.set_xlabel("s = log(1 + t)")
    lo, hi = ax.get_xlim()
    top = ax.twiny()
    top.set_xscale("log")
    top.set_xlim(lo, hi)
    # s = log(1 + 10^k) = logaddexp(0, k ln 10): no overflow for t past float64.
    ticks = [(float(np.logaddexp(0.0, k * LN10)), f"$10^{{{k}}}$") for k in decades]
    ticks = [(s, text) for s, text in ticks if lo <= s <= hi]
    top.set_xticks([s for s, _ in ticks], [text for _, text in ticks], fontsize=8)
    top.minorticks_off()
    top.set_xlabel("t", fontsize=9)
