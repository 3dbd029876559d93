"""A tqdm progress bar in the clock's own units (t, or log(1+t) on the log clock)."""

import threading

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback


class _Bars:
    def __init__(self):
        self.idx = 0
        self.bars = {}
        self.lock = threading.Lock()

    def open(self, label, lo, hi):
        import tqdm

        with self.lock:
            self.idx += 1
            span = float(hi - lo)
            self.bars[self.idx] = (
                tqdm.tqdm(
                    total=span,
                    desc="flowsolve",
                    bar_format=(
                        "{desc} |{bar}| {percentage:5.1f}% "
                        "[{elapsed}<{remaining}]"
                    ),
                    mininterval=0.2,
                ),
                float(lo),
                float(hi),
                label,
            )
            return np.array(self.idx, dtype=np.int32)

    def update(self, idx, progress):
        with self.lock:
            entry = self.bars.get(int(np.unique(idx).item()))
            if entry is not None:
                bar, lo, hi, label = entry
                frac = float(np.min(progress))
                bar.n = frac * (hi - lo)
                bar.set_description_str(f"flowsolve: {label} = {lo + frac * (hi - lo):.4g} / {hi:.4g}", refresh=False)
                bar.refresh()
        return idx

    def close(self, idx, progress):
        with self.lock:
            entry = self.bars.pop(int(np.asarray(idx).item()), None)
            if entry is not None:
                bar, lo, hi, label = entry
                frac = float(np.min(progress))
                bar.n = frac * (hi - lo)
                bar.set_description_str(f"flowsolve: {label} = {lo + frac * (hi - lo):.4g} / {hi:.4g}", refresh=False)
                bar.refresh()
                bar.close()


_BARS = _Bars()


class _MeterState(eqx.Module):
    idx: jax.Array
    step: jax.Array
    progress: jax.Array


class ClockProgressMeter(diffrax.AbstractProgressMeter):
    """Shows the solve's progress in its clock variable (`t` or `log(1+t)`)."""

    label: str = eqx.field(static=True)
    lo: float = eqx.field(static=True)
    hi: float = eqx.field(static=True)
    refresh_steps: int = eqx.field(static=True, default=25)

    def init(self):
        idx = io_callback(
            lambda: _BARS.open(self.label, self.lo, self.hi),
            jax.ShapeDtypeStruct((), jnp.int32),
        )
        return _MeterState(idx=eqxi.nonbatchable(idx), step=jnp.array(0), progress=jnp.array(0.0))

    def step(self, state, progress):
        def _update(idx):
            return jax.pure_callback(
                _BARS.update, idx, idx, jnp.min(progress), vmap_method="expand_dims"
            )

        idx = jax.lax.cond(
            eqxi.nonbatchable(eqxi.unvmap_max(state.step) % self.refresh_steps == 0),
            _update,
            lambda i: i,
            state.idx,
        )
        return _MeterState(idx=idx, step=state.step + 1, progress=jnp.asarray(progress, float))

    def close(self, state):
        io_callback(_BARS.close, None, eqxi.unvmap_max(state.idx), jnp.min(state.progress))
