"""flowsolve: the continuous-time training dynamics of ML models, solved as ODEs.

Gradient and natural-gradient flow as diffrax vector fields, integrated with
adaptive explicit and implicit solvers over horizons no fixed-step loop reaches
(a logarithmic clock, log-domain losses, float64), and compared with discrete
optimizers on the quantities the implicit-bias literature cares about.
"""

from importlib.metadata import (
    PackageNotFoundError as _PackageNotFoundError,
    version as _version,
)

from . import (
    datasets as datasets,
    ensemble as ensemble,
    losses as losses,
    metrics as metrics,
    models as models,
    plot as plot,
    reference as reference,
)
from ._compare import Comparison as Comparison, compare as compare
from ._descend import descend as descend
from ._flow import (
    AbstractFlow as AbstractFlow,
    GradientFlow as GradientFlow,
    NaturalGradientFlow as NaturalGradientFlow,
)
from ._problem import Problem as Problem
from ._results import RESULTS as RESULTS
from ._rosenbrock import Rodas5P as Rodas5P, Ros34PW2 as Ros34PW2
from ._saveat import SaveAt as SaveAt
from ._solve import solve as solve
from ._stop import Stop as Stop
from ._trajectory import Trajectory as Trajectory


try:
    __version__ = _version("flowsolve")
except _PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
