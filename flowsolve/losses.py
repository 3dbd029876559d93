"""Losses: per-sample value, mean, and a log-domain `log_loss` that stays finite far
below the smallest float64."""

from ._losses import (
    AbstractLoss as AbstractLoss,
    Exponential as Exponential,
    Logistic as Logistic,
    Squared as Squared,
)
