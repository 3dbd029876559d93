"""Seeded synthetic data sets (numpy, float64) for implicit-bias experiments."""

from ._datasets import (
    Dataset as Dataset,
    low_rank_completion as low_rank_completion,
    low_rank_sensing as low_rank_sensing,
    separable_gaussian as separable_gaussian,
    sparse_regression as sparse_regression,
    sparse_teacher_classification as sparse_teacher_classification,
    two_d_nonlinear as two_d_nonlinear,
)
