import math

import equinox as eqx


class Stop(eqx.Module):
    r"""Stopping rules for `fs.solve`: whichever comes first of the horizon and

    - the loss falling below `loss_below` (or `log L` below `log_loss_below`, for
        targets past float64 such as `log_loss_below=-1e4`), detected at the first
        step past it (a diffrax event);
    - `metric` (a name given in `metrics=`) changing by less than `rtol`,
        relatively, over the last `over` units of the clock variable (`t`, or
        `log(1 + t)` on the log clock), checked at the save points of each chunk.

    The trajectory says which rule fired: `info["stopped_by"]` is `"horizon"`,
    `"loss"` or `"plateau"`, and `result` is `RESULTS.event_occurred` for the last two.
    """

    loss_below: float | None = None
    log_loss_below: float | None = None
    metric: str | None = None
    rtol: float = 1e-6
    over: float = 1.0

    def __check_init__(self):
        if self.loss_below is not None and self.log_loss_below is not None:
            raise ValueError("Give `Stop(loss_below=...)` or `Stop(log_loss_below=...)`, not both.")
        if self.loss_below is not None and not (0 < self.loss_below < math.inf):
            raise ValueError(f"`loss_below` must be a positive number, got {self.loss_below!r}.")
        if self.log_loss_below is not None and not math.isfinite(self.log_loss_below):
            raise ValueError(f"`log_loss_below` must be finite, got {self.log_loss_below!r}.")
        if self.metric is not None:
            if not isinstance(self.metric, str):
                raise ValueError("`Stop(metric=...)` must be the name of a metric given in `metrics=`.")
            if not (self.rtol > 0 and self.over > 0):
                raise ValueError("`Stop(rtol=..., over=...)` must be positive.")
        if self.loss_below is None and self.log_loss_below is None and self.metric is None:
            raise ValueError("A `Stop` needs `loss_below`, `log_loss_below` or `metric`.")

    @property
    def log_target(self) -> float | None:
        if self.loss_below is not None:
            return math.log(self.loss_below)
        return self.log_loss_below
