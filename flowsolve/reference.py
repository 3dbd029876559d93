"""Ground-truth implicit-bias limits from convex solvers (cvxpy + Clarabel), computed
independently of any flow."""

from ._reference import (
    MaxMargin as MaxMargin,
    max_margin as max_margin,
    min_norm_interpolant as min_norm_interpolant,
    min_nuclear_norm_completion as min_nuclear_norm_completion,
    min_nuclear_norm_sensing as min_nuclear_norm_sensing,
)
