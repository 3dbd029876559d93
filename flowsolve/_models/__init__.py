from .base import AbstractModel as AbstractModel
from .deep_linear import DeepLinear as DeepLinear
from .diagonal import DiagonalLinear as DiagonalLinear
from .linear import Linear as Linear
from .matrix_factorization import MatrixFactorization as MatrixFactorization
from .two_layer import TwoLayer as TwoLayer
