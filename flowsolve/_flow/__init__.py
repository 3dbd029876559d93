from .base import AbstractFlow as AbstractFlow
from .gradient import GradientFlow as GradientFlow
from .natural import NaturalGradientFlow as NaturalGradientFlow
