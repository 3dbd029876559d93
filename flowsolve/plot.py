"""Long-horizon convergence plots: log axes that survive t = e^1000, flows and
discrete optimizers overlaid on one time axis, reference lines."""

from ._plot import (
    convergence as convergence,
    overview as overview,
)
