"""Models: each an `equinox.Module` that *is* its parameters (an initialised model is
θ0), maps one input row to a scalar, and declares its homogeneity degree."""

from ._models import (
    AbstractModel as AbstractModel,
    DeepLinear as DeepLinear,
    DiagonalLinear as DiagonalLinear,
    Linear as Linear,
    MatrixFactorization as MatrixFactorization,
    TwoLayer as TwoLayer,
)
