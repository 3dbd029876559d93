import equinox as eqx
import numpy as np

from ._misc_np import log1p_exp_np


class SaveAt(eqx.Module):
    """Where a solve or descent records its metrics (and, if asked, its parameters).

    **Arguments:**

    - `num`: number of save points (default 100), including both ends.
    - `spacing`: `"log"` (default) puts them uniformly in $\\log(1+t)$ — that is,
        logarithmically spaced for $t \\gg 1$ and starting at $t = 0$ — and
        `"linear"` uniformly in $t$.
    - `ts`: explicit save times (overrides `num`/`spacing`).
    - `log_ts`: explicit save times given as $\\log t$, for horizons past float64.
    - `params`: also save the full parameters at every save point (memory grows
        with `num × p`; off by default, the final parameters are always kept).
    """

    num: int = 100
    spacing: str = "log"
    ts: np.ndarray | None = None
    log_ts: np.ndarray | None = None
    params: bool = False

    def __check_init__(self):
        if self.ts is not None and self.log_ts is not None:
            raise ValueError("Give `SaveAt(ts=...)` or `SaveAt(log_ts=...)`, not both.")
        if self.spacing not in ("log", "linear"):
            raise ValueError(
                f"`SaveAt(spacing=...)` must be 'log' or 'linear', got {self.spacing!r}."
            )
        if isinstance(self.num, bool) or not isinstance(self.num, int) or self.num < 1:
            raise ValueError(f"`SaveAt(num=...)` must be a positive integer, got {self.num!r}.")

    def clock_points(self, s0: float, s1: float, clock: str) -> np.ndarray:
        """The save points as values of the integration variable of `clock`
        (`t` for the linear clock, `s = log(1 + t)` for the log clock), sorted,
        within `[s0, s1]`."""
        if self.ts is not None or self.log_ts is not None:
            if self.ts is not None:
                ts = np.asarray(self.ts, dtype=np.float64).ravel()
                if np.any(ts < 0) or not np.all(np.isfinite(ts)):
                    raise ValueError("`SaveAt(ts=...)` must be finite and non-negative.")
                s = ts if clock == "linear" else np.log1p(ts)
            else:
                lts = np.asarray(self.log_ts, dtype=np.float64).ravel()
                if not np.all(np.isfinite(lts)):
                    raise ValueError("`SaveAt(log_ts=...)` must be finite.")
                s = np.exp(lts) if clock == "linear" else log1p_exp_np(lts)
            if np.any(np.diff(s) < 0):
                raise ValueError("Save times must be sorted in increasing order.")
            if s.size == 0:
                raise ValueError("Save times must not be empty.")
            lo, hi = min(s0, s1), max(s0, s1)
            tol = 1e-12 * max(1.0, abs(hi))
            if s[0] < lo - tol or s[-1] > hi + tol:
                raise ValueError(
                    "Save times must lie within the solve's time span; got "
                    f"[{s[0]:.6g}, {s[-1]:.6g}] in the clock variable for a span "
                    f"[{lo:.6g}, {hi:.6g}]."
                )
            return np.clip(s, lo, hi)
        if self.num == 1:
            return np.array([s1])
        if clock == "linear":
            if self.spacing == "linear":
                return np.linspace(s0, s1, self.num)
            s = np.expm1(np.linspace(np.log1p(s0), np.log1p(s1), self.num))
        else:
            if self.spacing == "log":
                s = np.linspace(s0, s1, self.num)
            else:
                with np.errstate(over="ignore"):
                    t0, t1 = np.expm1(s0), np.expm1(s1)
                if not np.isfinite(t1):
                    raise ValueError(
                        "`SaveAt(spacing='linear')` cannot space points linearly in t "
                        "past t ≈ 1e308; use the default log spacing."
                    )
                s = np.log1p(np.linspace(t0, t1, self.num))
        s[0], s[-1] = s0, s1
        return s
