"""Metrics: functions of `(problem, model)`; their names can be passed to
`fs.solve(..., metrics=(...))` and are computed inside the compiled solve."""

from ._metrics import (
    NAMES as NAMES,
    conserved as conserved,
    conserved_scale as conserved_scale,
    effective_rank as effective_rank,
    homogeneous_margin as homogeneous_margin,
    linearly_separable as linearly_separable,
    log_loss as log_loss,
    loss as loss,
    margin as margin,
    margin_l1 as margin_l1,
    param_norm as param_norm,
    singular_values as singular_values,
    smoothed_margin as smoothed_margin,
    train_error as train_error,
)
