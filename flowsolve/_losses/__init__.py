from .base import AbstractLoss as AbstractLoss
from .exponential import Exponential as Exponential
from .logistic import Logistic as Logistic
from .squared import Squared as Squared
