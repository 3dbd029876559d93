"""Host-side (numpy) counterparts of the clock conversions."""

import numpy as np


def log1p_exp_np(log_t):
    """`log(1 + e^{log_t})` without overflow (numpy)."""
    return np.logaddexp(0.0, np.asarray(log_t, dtype=np.float64))


def log_expm1_np(s):
    """`log(e^s - 1)` for `s >= 0` without overflow; `-inf` at `s = 0` (numpy)."""
    s = np.asarray(s, dtype=np.float64)
    out = np.full(s.shape, -np.inf)
    big = s > 1.0
    small = (s > 0) & ~big
    out[big] = s[big] + np.log(-np.expm1(-s[big]))
    out[small] = np.log(np.expm1(s[small]))
    return out
