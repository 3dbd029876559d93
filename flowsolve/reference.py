"""Ground-truth implicit-bias limits from convex solvers (cvxpy + Clarabel, and a
Newton dual solver for diagonal networks), computed independently of any flow."""

from ._reference import (
    DiagonalBias as DiagonalBias,
    MaxMargin as MaxMargin,
    diagonal_implicit_bias as diagonal_implicit_bias,
    diagonal_regularizer as diagonal_regularizer,
    diagonal_scale as diagonal_scale,
    max_margin as max_margin,
    min_norm_interpolant as min_norm_interpolant,
    min_nuclear_norm_completion as min_nuclear_norm_completion,
    min_nuclear_norm_sensing as min_nuclear_norm_sensing,
)
