"""Experiment files: a small TOML schema describing one problem (data, model, loss),
the flows and optimisers to run on it, the metrics to record, a reference and the
plots; validated as a whole before any solve starts, then run with results saved as
they finish (`flowsolve run`), and re-plotted from disk (`flowsolve plot`).

The schema is documented in `docs/experiments.md`. Every error is an
`ExperimentError` naming the offending key path (`run[2].lr`, `data.kind`, ...).
"""

import dataclasses
import difflib
import glob
import hashlib
import inspect
import json
import math
import re
import sys
import time
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _datasets


if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


_LN10 = math.log(10.0)
_MISSING = object()

# ------------------------------------------------------------------------ the names

#: `[data] kind = ...`: the generators of `fs.datasets`.
DATASETS: dict[str, Callable] = {
    "separable_gaussian": _datasets.separable_gaussian,
    "sparse_regression": _datasets.sparse_regression,
    "sparse_teacher_classification": _datasets.sparse_teacher_classification,
    "low_rank_completion": _datasets.low_rank_completion,
    "low_rank_sensing": _datasets.low_rank_sensing,
    "two_d_nonlinear": _datasets.two_d_nonlinear,
}
#: The 2-D data sets are named like the library names them (`Dataset.info["name"]`):
#: `two_d_nonlinear/xor`; plain `two_d_nonlinear` is the default, clusters.
_DATA_NAMES = tuple(DATASETS) + tuple(
    f"two_d_nonlinear/{k}" for k in ("clusters", "circles", "xor")
)


def _generator(name: str) -> tuple[Callable, dict]:
    """The generator of a `[data] kind` and the keyword arguments its name implies."""
    base, _, sub = name.partition("/")
    return DATASETS[base], ({"kind": sub} if sub else {})


def _model_classes() -> dict[str, type]:
    from . import _models

    return {name: getattr(_models, name) for name in MODELS}


def _loss_classes() -> dict[str, type]:
    from . import _losses

    return {
        "logistic": _losses.Logistic,
        "exponential": _losses.Exponential,
        "squared": _losses.Squared,
    }


MODELS = ("Linear", "DeepLinear", "DiagonalLinear", "TwoLayer", "MatrixFactorization")
LOSSES = ("logistic", "exponential", "squared")
FLOWS = ("gradient", "natural")
#: `optimizer = ...`: fs.descend's own optimisers, and a few optax ones by name
#: (full-batch, the learning rate being their only setting).
OPTIMIZERS = ("gd", "ngd", "loss-scaled-gd", "adam", "rmsprop", "adagrad")
_OPTAX = ("adam", "rmsprop", "adagrad")
CLOCKS = ("linear", "log")
#: `reference = ...`: what the runs are compared with.
REFERENCES = ("none", "l2", "l1", "min_l2", "min_l1", "nuclear", "truth")
PLOT_FORMATS = ("png", "pdf", "svg")
_CLASSIFICATION_LOSSES = ("logistic", "exponential")
_MATRIX_DATA = ("low_rank_completion", "low_rank_sensing")


def _solver_names() -> tuple[str, ...]:
    from ._solver import SOLVER_NAMES

    return SOLVER_NAMES


def _error_norms() -> tuple[str, ...]:
    from ._solver import ERROR_NORMS

    return ERROR_NORMS


def _metric_names() -> tuple[str, ...]:
    from ._metrics import NAMES

    return tuple(NAMES)


def _plot_metric_names() -> tuple[str, ...]:
    from ._plot import DERIVED

    return _metric_names() + tuple(DERIVED)


# ------------------------------------------------------------------------- the error


class ExperimentError(ValueError):
    """A problem with an experiment file, naming the offending key.

    **Attributes:**

    - `key`: the key path, e.g. `"run[2].lr"` (runs are numbered from 0 in file
        order), or `None` for the file as a whole.
    - `message`: what is wrong and what to do.
    - `source`: the file, when known.
    """

    def __init__(self, key: str | None, message: str, source: str | None = None):
        self.key = key
        self.message = message
        self.source = source
        super().__init__(self._text())

    def _text(self) -> str:
        parts = [p for p in (self.source, self.key) if p]
        return ": ".join([*parts, self.message])

    def with_source(self, source) -> "ExperimentError":
        return ExperimentError(
            self.key, self.message, None if source is None else str(source)
        )


class _Invalid(Exception):
    """Raised by a checker: the message that follows the key path."""


def _show(value: Any) -> str:
    """A value as it would be written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def _expected(what: str, value: Any) -> _Invalid:
    return _Invalid(f"expected {what}, got {_show(value)}")


def _unknown(what: str, value: str, valid: Sequence[str]) -> _Invalid:
    close = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.6)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    return _Invalid(
        f"unknown {what} {_show(value)}{hint} Valid: {', '.join(valid)}."
        if close
        else f"unknown {what} {_show(value)}. Valid: {', '.join(valid)}."
    )


# ------------------------------------------------------------------------ checkers


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(*, positive: bool = False, nonnegative: bool = False):
    what = (
        "a positive number"
        if positive
        else "a number ≥ 0"
        if nonnegative
        else "a finite number"
    )

    def check(v):
        if not _is_number(v) or not math.isfinite(v):
            raise _expected(what, v)
        if (positive and v <= 0) or (nonnegative and v < 0):
            raise _expected(what, v)
        return float(v)

    return check


def _integer(minimum: int | None = None):
    what = (
        "an integer"
        if minimum is None
        else "a positive integer"
        if minimum == 1
        else f"an integer ≥ {minimum}"
    )

    def check(v):
        # TOML integers are ints; accept 1e5-style floats that are whole numbers.
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise _expected(what, v)
        if minimum is not None and v < minimum:
            raise _expected(what, v)
        return v

    return check


def _string(v):
    if not isinstance(v, str) or not v.strip():
        raise _expected("a non-empty string", v)
    return v


def _boolean(v):
    if not isinstance(v, bool):
        raise _expected("true or false", v)
    return v


def _choice(what: str, options: Sequence[str], *, normalise=str.lower):
    def check(v):
        if not isinstance(v, str):
            raise _expected(f"a string naming {what}", v)
        key = normalise(v)
        for option in options:
            if normalise(option) == key:
                return option
        raise _unknown(what, v, options)

    return check


def _names(what: str, options: Sequence[str]):
    """A list of names from `options` (a single string is accepted as a list of one)."""
    one = _choice(what, options, normalise=lambda s: s)

    def check(v):
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v:
            raise _expected(f"a non-empty list of {what}s", v)
        out = []
        for j, item in enumerate(v):
            try:
                name = one(item)
            except _Invalid as e:
                raise _Invalid(f"[{j}]: {e}") from None
            if name in out:
                raise _Invalid(f"[{j}]: {_show(name)} is listed twice")
            out.append(name)
        return out

    return check


# Checks derived from the library's own signatures, so the file accepts exactly the
# keyword arguments the library does.


def _describe(ann) -> str | None:
    if ann is inspect.Parameter.empty:
        return None
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if any(a is np.ndarray for a in args):
            return "a number or a list of numbers"
        parts = [d for d in (_describe(a) for a in args) if d]
        return " or ".join(dict.fromkeys(parts)) or None
    if ann is bool:
        return "true or false"
    if ann is int:
        return "an integer"
    if ann in (float, complex):
        return "a number"
    if ann is str:
        return "a string"
    if origin is tuple or ann is tuple:
        args = typing.get_args(ann)
        if args and args[-1] is not Ellipsis:
            inner = _describe(args[0]) or "value"
            return f"a list of {len(args)} {inner.split(' ', 1)[-1]}s"
        return "a list"
    if origin in (list, Sequence) or ann in (list, Sequence):
        args = typing.get_args(ann)
        inner = _describe(args[0]) if args else None
        return f"a list of {inner.split(' ', 1)[-1]}s" if inner else "a list"
    return None


def _accepts(ann, v) -> bool | None:
    """Whether the TOML value `v` fits the annotation (`None`: cannot tell)."""
    if ann is inspect.Parameter.empty:
        return None
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        results = [_accepts(a, v) for a in typing.get_args(ann)]
        if any(r is True for r in results):
            return True
        return False if all(r is False for r in results) else None
    if ann is type(None):
        return False
    if ann is bool:
        return isinstance(v, bool)
    if ann is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if ann in (float, complex):
        return _is_number(v)
    if ann is str:
        return isinstance(v, str)
    if ann is np.ndarray:
        return _is_number(v) or (
            isinstance(v, list) and all(_numeric_tree(x) for x in v)
        )
    if (
        origin is tuple
        or ann is tuple
        or origin in (list, Sequence)
        or ann in (list, Sequence)
    ):
        if not isinstance(v, list):
            return False
        args = typing.get_args(ann)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(v) != len(args):
                return False
            return all(_accepts(a, x) is not False for a, x in zip(args, v))
        if args:
            return all(_accepts(args[0], x) is not False for x in v)
        return True
    if isinstance(ann, type) and issubclass(ann, (np.number, np.bool_)):
        return _is_number(v) or isinstance(v, bool)
    if ann is Callable or typing.get_origin(ann) is Callable or ann is typing.Callable:
        return False  # a function cannot be written in TOML
    return None


def _numeric_tree(v) -> bool:
    if isinstance(v, list):
        return all(_numeric_tree(x) for x in v)
    return _is_number(v)


def _to_python(ann, v):
    """TOML lists to the tuples a `tuple[...]` parameter expects."""
    origin = typing.get_origin(ann)
    if isinstance(v, list) and (origin is tuple or ann is tuple):
        return tuple(v)
    return v


def _signature_params(fn, exclude: Sequence[str]) -> dict[str, inspect.Parameter]:
    params = inspect.signature(fn).parameters
    return {
        n: p
        for n, p in params.items()
        if n != "self"
        and n not in exclude
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _check_kwargs(path: str, table: dict, params: dict[str, inspect.Parameter]) -> dict:
    out = {}
    for key, v in table.items():
        p = params[key]
        ok = _accepts(p.annotation, v)
        if (
            ok is None
            and p.default is not inspect.Parameter.empty
            and p.default is not None
        ):
            ok = _accepts(type(p.default), v)
        if ok is False:
            what = (
                _describe(p.annotation) or _describe(type(p.default)) or "another value"
            )
            raise ExperimentError(f"{path}.{key}", str(_expected(what, v)))
        out[key] = _to_python(p.annotation, v)
    return out


# ------------------------------------------------------------------------- tables


class _Table:
    """A TOML table being validated: `take` each known key, then `done` rejects the
    rest by name."""

    def __init__(self, data: Any, path: str, what: str):
        if not isinstance(data, dict):
            raise ExperimentError(path, f"expected a table ({what}), got {_show(data)}")
        self.data = dict(data)
        self.path = path
        self.seen: list[str] = []

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def take(
        self,
        name: str,
        check=None,
        default: Any = _MISSING,
        required: str | None = None,
    ):
        self.seen.append(name)
        if name not in self.data:
            if required is not None:
                raise ExperimentError(self.key(name), f"missing; {required}")
            return default
        v = self.data.pop(name)
        if check is None:
            return v
        try:
            return check(v)
        except _Invalid as e:
            text = str(e)
            if text.startswith("["):  # an item of a list: run[0].metrics[2]: ...
                index, _, rest = text.partition(": ")
                raise ExperimentError(self.key(name) + index, rest) from None
            raise ExperimentError(self.key(name), text) from None

    def done(
        self,
        valid: Sequence[str],
        context: str = "",
        hints: dict[str, str] | None = None,
    ):
        """Reject every key that is not in `valid`."""
        for name in self.data:
            if name in valid:
                continue
            if hints and name in hints:
                raise ExperimentError(self.key(name), hints[name])
            if self.path and name in _TOP_KEYS:
                raise ExperimentError(
                    self.key(name),
                    f"`{name}` is a top-level key. In TOML every key after a [table] "
                    "header belongs to that table: move it above the first table.",
                )
            close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            where = f" {context}" if context else ""
            raise ExperimentError(
                self.key(name),
                f"unknown key{where}; {hint}valid keys: {', '.join(valid)}.",
            )


# --------------------------------------------------------------------- the schema


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One `[[run]]`: a flow (`fs.solve`) or an optimiser (`fs.descend`)."""

    index: int
    label: str
    slug: str
    kind: str  # "flow" or "descent"
    options: dict  # normalised keys of the [[run]] table, label excluded
    metrics: tuple[str, ...]
    saves: int
    own_metrics: bool = False  # whether the [[run]] table set `metrics` itself

    def describe(self) -> str:
        o = self.options
        if self.kind == "flow":
            horizon = (
                f"t = {o['t1']:.6g}" if "t1" in o else f"log t = {o['log_t1']:.6g}"
            )
            name = {"gradient": "gradient flow", "natural": "natural-gradient flow"}[
                o["flow"]
            ]
            return f"{name}, {o['clock']} clock, {o.get('solver', 'auto')} solver, to {horizon}"
        if o["optimizer"] == "loss-scaled-gd":  # its time steps are lr / L
            return f"{o['optimizer']}, lr = {o['lr']:.6g}, {o['steps']} steps"
        return f"{o['optimizer']}, lr = {o['lr']:.6g}, {o['steps']} steps (to t = {o['lr'] * o['steps']:.6g})"


@dataclasses.dataclass(frozen=True)
class PlotSpec:
    metrics: tuple[str, ...]
    formats: tuple[str, ...]
    dpi: int
    title: str | None
    log_time: bool
    log10_t_scale: str = "auto"
    default_metrics: bool = False  # chosen from what the runs record


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A validated experiment file (`load` / `parse`); `build` makes its objects."""

    name: str
    description: str | None
    seed: int
    data: dict  # {"kind": ..., **generator kwargs}
    model: dict  # {"kind": ..., **constructor kwargs}
    loss: dict  # {"kind": ...}
    reference: str
    runs: tuple[RunSpec, ...]
    plot: PlotSpec
    default_metrics: bool = False  # no `metrics` anywhere: the defaults were used
    source: str | None = None
    text: str | None = None

    def echo(self) -> dict:
        """The experiment as plain JSON-able data (defaults filled in)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            out["description"] = self.description
        out.update(
            seed=self.seed,
            reference=self.reference,
            data=dict(self.data),
            model=dict(self.model),
            loss=dict(self.loss),
        )
        out["run"] = [
            {
                "label": r.label,
                **r.options,
                "metrics": list(r.metrics),
                "saves": r.saves,
            }
            for r in self.runs
        ]
        plot = {
            "metrics": list(self.plot.metrics),
            "formats": list(self.plot.formats),
            "dpi": self.plot.dpi,
            "log_time": self.plot.log_time,
            "log10_t_scale": self.plot.log10_t_scale,
        }
        if self.plot.title is not None:
            plot["title"] = self.plot.title
        out["plot"] = plot
        return out

    def run_hash(self, run: RunSpec) -> str:
        """What a saved trajectory must match to be reused: everything that shapes
        that run (data, model, loss, seed, its own keys, metrics, save points)."""
        payload = {
            "data": self.data,
            "model": self.model,
            "loss": self.loss,
            "seed": self.seed,
            "run": run.options,
            "metrics": list(run.metrics),
            "saves": run.saves,
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_TOP_KEYS = (
    "name",
    "description",
    "seed",
    "metrics",
    "saves",
    "reference",
    "data",
    "model",
    "loss",
    "run",
    "plot",
)
_FLOW_KEYS = (
    "label",
    "flow",
    "clock",
    "t1",
    "log_t1",
    "solver",
    "rtol",
    "atol",
    "error_norm",
    "dt0",
    "max_steps",
    "checkpoint_every",
    "metrics",
    "saves",
)
_DESCENT_KEYS = ("label", "optimizer", "lr", "steps", "metrics", "saves")


def _natural_params() -> dict[str, inspect.Parameter]:
    from ._flow import NaturalGradientFlow

    return _signature_params(NaturalGradientFlow.__init__, exclude=("problem",))


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", label).strip("-.")


def _default_metrics(loss: str) -> list[str]:
    return (
        ["loss", "log_loss", "margin"]
        if loss in _CLASSIFICATION_LOSSES
        else ["loss", "log_loss"]
    )


def _parse_run(index: int, raw: Any, *, metrics_default, saves_default) -> RunSpec:
    path = f"run[{index}]"
    t = _Table(raw, path, "one flow or optimiser")
    label = t.take("label", _string, default=None)
    has_flow, has_opt = "flow" in t.data, "optimizer" in t.data
    if has_flow == has_opt:
        raise ExperimentError(
            path,
            'give exactly one of `flow = "gradient" | "natural"` (a flow, solved '
            'with fs.solve) or `optimizer = "gd" | ...` (a discrete optimiser, run '
            "with fs.descend)" + ("; this run has both" if has_flow else ""),
        )
    own_metrics = "metrics" in t.data
    metrics = t.take(
        "metrics", _names("metric", _metric_names()), default=metrics_default
    )
    saves = t.take("saves", _integer(2), default=saves_default)
    hints: dict[str, str] = {}
    options: dict[str, Any] = {}
    if has_flow:
        kind = "flow"
        flow = t.take("flow", _choice("flow", FLOWS))
        natural = _natural_params()
        # Unknown keys first: a misspelt key is reported as such, not as a missing one.
        valid = list(_FLOW_KEYS) + (list(natural) if flow == "natural" else [])
        natural_hints = (
            {
                k: f"`{k}` is an option of the natural-gradient flow; this run has flow = {_show(flow)}"
                for k in natural
            }
            if flow != "natural"
            else {}
        )
        t.done(valid, f'of a flow run (flow = "{flow}")', {**hints, **natural_hints})
        options["flow"] = flow
        options["clock"] = t.take("clock", _choice("clock", CLOCKS), default="linear")
        if "t1" in t.data and "log_t1" in t.data:
            raise ExperimentError(
                t.key("log_t1"),
                "give the horizon as `t1` or as `log_t1` (its natural log), not both",
            )
        if "t1" in t.data:
            options["t1"] = t.take("t1", _number(positive=True))
        elif "log_t1" in t.data:
            options["log_t1"] = t.take("log_t1", _number())
        else:
            raise ExperimentError(
                t.key("t1"),
                "missing; give the horizon as `t1 = 1e4`, or as `log_t1 = 1000` (the "
                'natural log of t, for horizons past float64, with `clock = "log"`)',
            )
        if options["clock"] == "linear":
            log_t1 = options.get("log_t1", math.log(options.get("t1", 1.0)))
            if log_t1 > 709.0:
                raise ExperimentError(
                    t.key("log_t1" if "log_t1" in options else "t1"),
                    f"t1 = e^{log_t1:.6g} overflows float64 on the linear clock; add "
                    '`clock = "log"` to this run',
                )
        for name, check in (
            ("solver", _choice("solver", _solver_names())),
            ("rtol", _number(positive=True)),
            ("atol", _number(positive=True)),
            ("error_norm", _choice("error_norm", _error_norms())),
            ("dt0", _number(positive=True)),
            ("max_steps", _integer(1)),
            ("checkpoint_every", _integer(1)),
        ):
            v = t.take(name, check, default=_MISSING)
            if v is not _MISSING:
                options[name] = v
        extra = {k: t.data.pop(k) for k in list(t.data) if k in natural}
        options.update(_check_kwargs(path, extra, natural))
        default_label = {"gradient": "GF", "natural": "NGF"}[flow]
    else:
        kind = "descent"
        opt = t.take(
            "optimizer",
            _choice(
                "optimizer", OPTIMIZERS, normalise=lambda s: s.lower().replace("_", "-")
            ),
        )
        flow_only = {
            k: "a key of flow runs; a descent takes `lr` and `steps` (it "
            "reaches t = lr × steps)"
            for k in _FLOW_KEYS
            if k not in _DESCENT_KEYS
        }
        t.done(
            _DESCENT_KEYS,
            f'of an optimizer run (optimizer = "{opt}")',
            {**hints, **{k: f"`{k}` is {v}" for k, v in flow_only.items()}},
        )
        options["optimizer"] = opt
        options["lr"] = t.take(
            "lr", _number(positive=True), required="the step size, e.g. `lr = 1.0`"
        )
        options["steps"] = t.take(
            "steps", _integer(1), required="the number of steps, e.g. `steps = 10000`"
        )
        default_label = opt.upper() if opt in ("gd", "ngd") else opt
    label = default_label if label is None else label
    slug = _slug(label)
    if not slug:
        raise ExperimentError(
            f"run[{index}].label",
            f"{_show(label)} gives no usable file name; use letters or digits",
        )
    return RunSpec(
        index=index,
        label=label,
        slug=slug,
        kind=kind,
        options=options,
        metrics=tuple(metrics),
        saves=saves,
        own_metrics=own_metrics,
    )


def parse_dict(
    raw: dict,
    *,
    source: str | None = None,
    text: str | None = None,
    default_name: str = "experiment",
) -> Experiment:
    """Validate the parsed TOML of an experiment file (no arrays are built)."""
    try:
        return _parse_dict(raw, source=source, text=text, default_name=default_name)
    except ExperimentError as e:
        raise e.with_source(source) from None


def _parse_dict(raw, *, source, text, default_name) -> Experiment:
    top = _Table(raw, "", "the experiment")
    # Unknown top-level keys first: a misspelt `reference` would otherwise surface
    # as a confusing error elsewhere.
    run_keys = set(_FLOW_KEYS) | set(_DESCENT_KEYS) | set(_natural_params())
    top.done(
        list(_TOP_KEYS),
        "at the top level",
        {
            k: f"`{k}` is a key of a [[run]] table, not of the top level"
            for k in run_keys - set(_TOP_KEYS)
        },
    )
    top.data = dict(raw)
    name = top.take("name", _string, default=default_name)
    description = top.take("description", _string, default=None)
    seed = top.take("seed", _integer(0), default=0)
    reference = top.take("reference", _choice("reference", REFERENCES), default="none")
    saves = top.take("saves", _integer(2), default=100)
    metrics_given = "metrics" in top.data
    metrics = top.take("metrics", _names("metric", _metric_names()), default=None)

    # [data]
    data_t = _Table(
        top.take(
            "data", required='add a [data] table, e.g. kind = "separable_gaussian"'
        ),
        "data",
        "the data set",
    )
    data_kind = data_t.take(
        "kind",
        _choice("data set", _DATA_NAMES),
        required=f"name a generator of fs.datasets: {', '.join(_DATA_NAMES)}",
    )
    # `kind` is this table's own key: two_d_nonlinear's `kind` goes in the name.
    params = _signature_params(_generator(data_kind)[0], exclude=("kind",))
    data_t.take("seed", _integer(0), default=None)  # checked here, kept below
    data_seed = raw["data"].get("seed", seed)
    data_t.done(list(params), f'of data set "{data_kind}"')
    data_kwargs = _check_kwargs(
        "data",
        {k: v for k, v in raw["data"].items() if k not in ("kind", "seed")},
        params,
    )
    data = {"kind": data_kind, **data_kwargs, "seed": data_seed}

    # [model]
    model_t = _Table(
        top.take("model", required='add a [model] table, e.g. kind = "Linear"'),
        "model",
        "the model",
    )
    model_kind = model_t.take(
        "kind",
        _choice("model", MODELS),
        required=f"name a class of fs.models: {', '.join(MODELS)}",
    )
    cls = _model_classes()[model_kind]
    mparams = _signature_params(cls.__init__, exclude=("key",))
    model_t.take("seed", _integer(0), default=None)
    model_seed = raw["model"].get("seed", seed)
    model_t.done(
        list(mparams) + ["seed"],
        f'of model "{model_kind}"',
        {
            "key": "the initialisation key comes from `seed` (this table's, or the top-level one)"
        },
    )
    model_kwargs = _check_kwargs(
        "model",
        {k: v for k, v in raw["model"].items() if k not in ("kind", "seed")},
        mparams,
    )
    for pname, p in mparams.items():
        if (
            p.default is inspect.Parameter.empty
            and pname not in ("d", "shape")
            and pname not in model_kwargs
        ):
            raise ExperimentError(
                f"model.{pname}", f"missing; {model_kind} needs `{pname}`"
            )
    model = {"kind": model_kind, **model_kwargs, "seed": model_seed}

    # loss: a string or a table with `kind`
    loss_raw = top.take(
        "loss", required='add `loss = "logistic"` (or exponential, squared)'
    )
    if isinstance(loss_raw, str):
        loss_raw = {"kind": loss_raw}
    loss_t = _Table(loss_raw, "loss", "the loss")
    loss_kind = loss_t.take(
        "kind", _choice("loss", LOSSES), required="logistic, exponential or squared"
    )
    loss_t.done(["kind"], "of the loss")
    loss = {"kind": loss_kind}

    classification = loss_kind in _CLASSIFICATION_LOSSES
    if reference in ("l2", "l1") and not classification:
        raise ExperimentError(
            "reference",
            f"{_show(reference)} is a max-margin classifier: it needs a classification loss (logistic or exponential), not {_show(loss_kind)}",
        )
    if reference in ("min_l2", "min_l1") and classification:
        raise ExperimentError(
            "reference",
            f"{_show(reference)} is a minimum-norm interpolant: it needs the squared loss",
        )
    if reference == "nuclear" and data_kind not in _MATRIX_DATA:
        raise ExperimentError(
            "reference",
            f'"nuclear" (minimum nuclear-norm solution) needs matrix data ({", ".join(_MATRIX_DATA)}), not {_show(data_kind)}',
        )
    if reference == "truth" and data_kind.startswith("two_d_nonlinear"):
        raise ExperimentError(
            "reference",
            'the data set "two_d_nonlinear" has no ground truth to compare with',
        )

    # [[run]]
    runs_raw = top.take(
        "run", required="add at least one [[run]] table (a flow or an optimizer)"
    )
    if isinstance(runs_raw, dict):
        raise ExperimentError(
            "run", "write each run as [[run]] (an array of tables), not [run]"
        )
    if not isinstance(runs_raw, list) or not runs_raw:
        raise ExperimentError("run", "expected one or more [[run]] tables")
    metrics_default = metrics if metrics is not None else _default_metrics(loss_kind)
    runs = []
    for i, r in enumerate(runs_raw):
        runs.append(
            _parse_run(i, r, metrics_default=metrics_default, saves_default=saves)
        )
    seen: dict[str, int] = {}
    for r in runs:
        for key in (r.label, r.slug.lower()):
            if key in seen and seen[key] != r.index:
                raise ExperimentError(
                    f"run[{r.index}].label",
                    f"{_show(r.label)} clashes with the label of run[{seen[key]}] (the "
                    "runs' files are named after their labels); give each run its own label",
                )
            seen[key] = r.index
    # [plot]
    plot_t = _Table(top.take("plot", default={}), "plot", "the plots")
    recorded = {m for r in runs for m in r.metrics}
    default_plot = _default_plot_metrics(recorded, reference)
    pmetrics = plot_t.take(
        "metrics", _names("plot metric", _plot_metric_names()), default=default_plot
    )
    formats = plot_t.take("formats", _names("format", PLOT_FORMATS), default=["png"])
    dpi = plot_t.take("dpi", _integer(10), default=150)
    title = plot_t.take("title", _string, default=None)
    log_time = plot_t.take("log_time", _boolean, default=True)
    log10_t_scale = plot_t.take(
        "log10_t_scale", _choice("scale", ("auto", "linear", "log")), default="auto"
    )
    plot_t.done(
        ["metrics", "formats", "dpi", "title", "log_time", "log10_t_scale"], "of [plot]"
    )
    from ._plot import DERIVED

    for j, m in enumerate(pmetrics):
        need = DERIVED.get(m, m)
        if need not in recorded:
            raise ExperimentError(
                f"plot.metrics[{j}]",
                f"{_show(m)} needs the metric {_show(need)}, which no run records; add "
                f"it to `metrics` (recorded: {', '.join(sorted(recorded))})",
            )
        if m == "margin_gap" and reference != "l2":
            raise ExperimentError(
                f"plot.metrics[{j}]",
                '"margin_gap" is the gap to the ℓ2 max-margin: set `reference = "l2"`',
            )
        if m == "margin_l1_gap" and reference != "l1":
            raise ExperimentError(
                f"plot.metrics[{j}]",
                '"margin_l1_gap" is the gap to the ℓ1 max-margin: set `reference = "l1"`',
            )
    return Experiment(
        name=name,
        description=description,
        seed=seed,
        data=data,
        model=model,
        loss=loss,
        reference=reference,
        runs=tuple(runs),
        plot=PlotSpec(
            metrics=tuple(pmetrics),
            formats=tuple(formats),
            dpi=dpi,
            title=title,
            log_time=log_time,
            log10_t_scale=log10_t_scale,
            default_metrics=pmetrics is default_plot,
        ),
        default_metrics=not metrics_given and not any(r.own_metrics for r in runs),
        source=source,
        text=text,
    )


def _default_plot_metrics(recorded: set[str], reference: str) -> list[str]:
    out = []
    if "log_loss" in recorded:
        out.append("log_loss")
    elif "loss" in recorded:
        out.append("loss")
    for m in ("margin", "margin_l1"):
        if m in recorded:
            out.append(m)
    if "margin" in recorded and reference == "l2":
        out.append("margin_gap")
    if "margin_l1" in recorded and reference == "l1":
        out.append("margin_l1_gap")
    for m in ("singular_values", "effective_rank"):
        if m in recorded:
            out.append(m)
    if "conserved" in recorded:
        out.append("conserved_drift")
    for m in ("homogeneous_margin", "smoothed_margin", "param_norm", "train_error"):
        if m in recorded:
            out.append(m)
    return out or sorted(recorded)[:1]


def parse(
    text: str, *, source: str | None = None, default_name: str = "experiment"
) -> Experiment:
    """Parse and validate the text of an experiment file."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ExperimentError(None, f"not valid TOML: {e}", source) from None
    return parse_dict(raw, source=source, text=text, default_name=default_name)


def load(path: str | Path) -> Experiment:
    """Read and validate an experiment file (see `docs/experiments.md`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ExperimentError(
            None, f"cannot read the experiment file: {e.strerror or e}", str(path)
        ) from None
    except UnicodeDecodeError:
        raise ExperimentError(
            None, "the experiment file is not UTF-8 text", str(path)
        ) from None
    return parse(text, source=str(path), default_name=path.stem)


# -------------------------------------------------------------------------- build


@dataclasses.dataclass
class BuiltRun:
    spec: RunSpec
    flow: Any  # an AbstractFlow for flow runs, else None
    optimizer: Any  # a name or an optax transformation for descents, else None
    hash: str


@dataclasses.dataclass
class Built:
    """The objects of an experiment: everything checked against the library."""

    experiment: Experiment
    dataset: Any
    problem: Any
    model: Any
    reference: Any  # MaxMargin, an array, or None
    runs: list[BuiltRun]


def _library_error(path: str, error: Exception, keys: Sequence[str]) -> ExperimentError:
    """Point a library `ValueError` at the key it is about, when it names one."""
    text = str(error)
    for name in re.findall(r"`(\w+)", text):
        if name in keys:
            return ExperimentError(f"{path}.{name}", text)
    return ExperimentError(path, text)


def build(exp: Experiment) -> Built:
    """Make the data, model, problem, flows and reference of a validated experiment,
    checking every value with the library itself; nothing is solved yet."""
    try:
        return _build(exp)
    except ExperimentError as e:
        raise e.with_source(exp.source) from None


def _adaptive(solver: str, clock: str) -> bool:
    from ._solver import is_adaptive, resolve_solver

    return is_adaptive(resolve_solver(solver, clock=clock, num_params=1)[0])


def _applicable(exp: Experiment, problem, model) -> Experiment:
    """With the default metrics (none given), drop those that do not apply to this
    model and data (e.g. a margin on non-separable data), and re-derive the default
    plots; metrics the file asks for are never dropped."""
    from . import _metrics

    keep = []
    for m in exp.runs[0].metrics:
        try:
            _metrics.resolve((m,), problem, model)
        except ValueError:
            continue
        keep.append(m)
    runs = tuple(dataclasses.replace(r, metrics=tuple(keep)) for r in exp.runs)
    plot = exp.plot
    if plot.default_metrics:
        plot = dataclasses.replace(
            plot, metrics=tuple(_default_plot_metrics(set(keep), exp.reference))
        )
    return dataclasses.replace(exp, runs=runs, plot=plot)


def _build(exp: Experiment) -> Built:
    import jax.random as jr

    from . import _metrics
    from ._flow import GradientFlow, NaturalGradientFlow
    from ._problem import Problem

    data_kwargs = {k: v for k, v in exp.data.items() if k != "kind"}
    try:
        generator, implied = _generator(exp.data["kind"])
        dataset = generator(**implied, **data_kwargs)
    except (ValueError, TypeError) as e:
        raise _library_error("data", e, list(data_kwargs)) from None
    X, y = dataset

    cls = _model_classes()[exp.model["kind"]]
    kwargs = {k: v for k, v in exp.model.items() if k not in ("kind", "seed")}
    params = _signature_params(cls.__init__, exclude=())
    if "d" in params and "d" not in kwargs:
        if np.ndim(X) != 2 or not np.issubdtype(np.asarray(X).dtype, np.floating):
            raise ExperimentError(
                "model.d",
                f"cannot infer the input dimension from data of shape {np.shape(X)}; give `d`",
            )
        kwargs["d"] = int(np.shape(X)[1])
    if "shape" in params and "shape" not in kwargs:
        shape = dataset.info.get("shape")
        if shape is None:
            raise ExperimentError(
                "model.shape",
                f"the data set {_show(exp.data['kind'])} has no matrix shape; give `shape = [m, n]`",
            )
        kwargs["shape"] = tuple(shape)
    if "key" in params:
        kwargs["key"] = jr.key(exp.model["seed"])
    try:
        model = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise _library_error("model", e, list(kwargs)) from None

    loss = _loss_classes()[exp.loss["kind"]]()
    try:
        problem = Problem(model, loss, X, y)
    except ValueError as e:
        raise ExperimentError(
            "loss",
            f"{e} (data {_show(exp.data['kind'])}, model {_show(exp.model['kind'])})",
        ) from None

    if exp.default_metrics:
        exp = _applicable(exp, problem, model)
    runs = []
    for spec in exp.runs:
        path = f"run[{spec.index}]"
        o = spec.options
        flow = optimizer = None
        if spec.kind == "flow":
            if o["flow"] == "gradient":
                flow = GradientFlow(problem)
            else:
                natural = {k: v for k, v in o.items() if k in _natural_params()}
                try:
                    flow = NaturalGradientFlow(problem, **natural)
                except (ValueError, TypeError) as e:
                    raise _library_error(path, e, list(natural)) from None
            if (
                "solver" in o
                and "dt0" not in o
                and not _adaptive(o["solver"], o["clock"])
            ):
                raise ExperimentError(
                    f"{path}.dt0",
                    f"missing; solver {_show(o['solver'])} has no error estimate and "
                    "takes fixed steps: give the step `dt0` (in the clock variable)",
                )
        else:
            name = o["optimizer"]
            if name in _OPTAX:
                import optax

                optimizer = getattr(optax, name)(o["lr"])
            else:
                optimizer = name
        try:
            _metrics.resolve(spec.metrics, problem, model)
        except ValueError as e:
            raise ExperimentError(
                f"{path}.metrics" if spec.own_metrics else "metrics", str(e)
            ) from None
        runs.append(
            BuiltRun(spec=spec, flow=flow, optimizer=optimizer, hash=exp.run_hash(spec))
        )

    reference = _reference(exp, dataset, problem)
    return Built(
        experiment=exp,
        dataset=dataset,
        problem=problem,
        model=model,
        reference=reference,
        runs=runs,
    )


def _reference(exp: Experiment, dataset, problem):
    from . import _reference as ref

    kind = exp.reference
    X, y = np.asarray(dataset.X), np.asarray(dataset.y)
    try:
        if kind == "none":
            return None
        if kind in ("l2", "l1"):
            return ref.max_margin(X, y, norm=int(kind[1]))
        if kind in ("min_l2", "min_l1"):
            return ref.min_norm_interpolant(X, y, norm=int(kind[-1]))
        if kind == "nuclear":
            shape = dataset.info["shape"]
            if exp.data["kind"] == "low_rank_completion":
                return ref.min_nuclear_norm_completion(shape, X, y)
            return ref.min_nuclear_norm_sensing(shape, X, y)
        # truth
        if dataset.truth is None:
            raise ValueError(
                f"the data set {_show(exp.data['kind'])} has no ground truth"
            )
        return np.asarray(dataset.truth)
    except ValueError as e:
        raise ExperimentError("reference", str(e)) from None


# ---------------------------------------------------------------------------- run

SUMMARY = "summary.json"
_CHECKPOINTS = "checkpoints"


@dataclasses.dataclass
class Outcome:
    """What `run` did: files written, failed runs, and the run it was
    interrupted in (`None` if it went through)."""

    out: Path
    summary: Path
    trajectories: dict[str, Path]
    plots: list[Path]
    failed: list[str]
    interrupted: str | None


def _finite(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _jsonable(x):
    """numpy → Python, non-finite numbers → None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _finite(x)
    if x is None or isinstance(x, str):
        return x
    return str(x)


def _reference_info(kind: str, reference) -> dict | None:
    """What the plots and the summary need to know of the reference."""
    from ._reference import MaxMargin

    if reference is None:
        return None
    info: dict[str, Any] = {"kind": kind}
    if isinstance(reference, MaxMargin):
        info.update(
            margin=float(reference.margin),
            norm=int(reference.norm),
            support=[int(i) for i in reference.support],
            residual=_finite(reference.residual),
        )
        return info
    ref = np.asarray(reference, dtype=float)
    info["norm"] = float(np.linalg.norm(ref))
    if ref.ndim == 2:
        s = np.linalg.svd(ref, compute_uv=False)
        info["singular_values"] = s.tolist()
        info["rank"] = int(np.sum(s > 1e-6 * max(s[0], 1e-300)))
    return info


def _run_record(
    spec: RunSpec, traj, file: str | None, status: str, row: dict | None
) -> dict:
    rec: dict[str, Any] = {
        "label": spec.label,
        "file": file,
        "kind": spec.kind,
        "status": status,
    }
    o = spec.options
    if spec.kind == "flow":
        rec.update(flow=o["flow"], clock=o["clock"])
        rec["log_t1"] = o["log_t1"] if "log_t1" in o else math.log(o["t1"])
    else:
        rec.update(optimizer=o["optimizer"], lr=o["lr"], steps_requested=o["steps"])
        # Loss-scaled GD's time steps lr / L are only known as it runs.
        rec["log_t1"] = (
            None
            if o["optimizer"] == "loss-scaled-gd"
            else math.log(o["lr"] * o["steps"])
        )
    if traj is None:
        return rec
    stats = traj.stats
    rec.update(
        method=traj.info.get("method"),
        solver=traj.info.get("solver"),
        result=traj.result.name,
        success=traj.success,
        log_t_reached=_finite(traj.log_t_final),
        log10_t_reached=_finite(traj.log_t_final / _LN10),
        steps=stats.get("num_steps"),
        accepted_steps=stats.get("num_accepted_steps"),
        rejected_steps=stats.get("num_rejected_steps"),
        wall_time_s=stats.get("wall_time"),
        compile_time_s=stats.get("compile_time"),
    )
    if not traj.success:
        rec["message"] = traj.result.message
    final = {}
    for name, values in traj.metrics.items():
        values = np.asarray(values)
        final[name] = values[-1] if len(values) else None
    rec["final"] = final
    if row is not None:
        for key in (
            "log10_loss",
            "margin",
            "margin_gap",
            "cosine",
            "one_minus_cosine",
            "distance",
            "effective_rank",
            "test_error",
        ):
            rec[key] = row.get(key)
    return _jsonable(rec)


def _compare_row(built: Built, label: str, traj) -> dict | None:
    from ._compare import compare

    ds = built.dataset
    try:
        cmp = compare(
            built.problem,
            {label: traj},
            reference=built.reference,
            X_test=ds.X_test,
            y_test=ds.y_test,
        )
    except ValueError:  # e.g. a model whose final state has no finite prediction
        return None
    return cmp.rows[0]


def _write_summary(
    out: Path,
    built: Built,
    records: list[dict],
    plots: list[Path],
    started: float,
    complete: bool,
) -> Path:
    import jax

    from . import __version__

    exp = built.experiment
    summary = {
        "flowsolve_version": __version__,
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "experiment": exp.echo(),
        "source": exp.source,
        "source_text": exp.text,
        "reference": _reference_info(exp.reference, built.reference),
        "runs": records,
        "plots": [p.name for p in plots],
        "complete": complete,
        "total_time_s": time.perf_counter() - started,
    }
    path = out / SUMMARY
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps(_jsonable(summary), indent=2, allow_nan=False, ensure_ascii=False)
        + "\n",
        encoding="utf-8",
    )
    tmp.replace(path)  # never a torn summary, even on Ctrl-C
    return path


def _execute(built: Built, br: BuiltRun, checkpoint: Path, progress: bool):
    from ._descend import descend
    from ._saveat import SaveAt
    from ._solve import solve

    spec, o = br.spec, br.spec.options
    saveat = SaveAt(num=spec.saves)
    if spec.kind == "descent":
        return descend(
            built.problem,
            built.model,
            optimizer=br.optimizer,
            lr=o["lr"],
            steps=o["steps"],
            saveat=saveat,
            metrics=spec.metrics,
            progress=progress,
        )
    kwargs = {
        k: o[k]
        for k in (
            "clock", "t1", "log_t1", "solver", "rtol", "atol", "error_norm", "dt0",
            "max_steps",
        )
        if k in o
    }
    # About ten chunks: a checkpoint after each, so an interruption loses at most a
    # tenth of the run.
    every = o.get("checkpoint_every", max(1, math.ceil(spec.saves / 10)))
    for attempt in (0, 1):
        try:
            return solve(
                br.flow,
                built.model,
                saveat=saveat,
                metrics=spec.metrics,
                progress=progress,
                checkpoint=checkpoint,
                checkpoint_every=every,
                **kwargs,
            )
        except ValueError as e:
            # A checkpoint left by another version of this run: start afresh.
            if attempt == 0 and checkpoint.exists() and "checkpoint" in str(e):
                checkpoint.unlink()
                continue
            raise ExperimentError(
                f"run[{spec.index}]", str(e), built.experiment.source
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _result_line(traj) -> str:
    stats = traj.stats
    parts = [traj.result.name]
    when = (
        f"t = {traj.t_final:.6g}"
        if traj.log_t_final < 700
        else f"log t = {traj.log_t_final:.6g}"
    )
    if traj.info.get("kind") == "flow":
        parts.append(f"log t = {traj.log_t_final:.6g}")
        parts.append(f"{stats.get('num_accepted_steps')} steps")
    else:
        parts.append(f"{stats.get('num_steps')} steps, {when}")
    parts.append(
        f"{stats.get('wall_time', 0.0):.2f} s + {stats.get('compile_time', 0.0):.1f} s compile"
    )
    return ", ".join(parts)


def run(
    built: Built,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Outcome:
    """Run every `[[run]]` of a built experiment into the folder `out`.

    Each trajectory is saved to `out/<label>.traj` as soon as it finishes, and
    `out/summary.json` is rewritten after every run; flows write a checkpoint
    (`out/checkpoints/`) after each chunk of save points. Running again skips the
    runs already saved with the same settings and resumes an interrupted flow from
    its checkpoint (an interrupted descent starts over); `force=True` recomputes
    everything. Ctrl-C inside a run keeps its trajectory so far, and stops.
    """
    from ._results import RESULTS
    from ._trajectory import Trajectory

    exp = built.experiment
    out = Path(out)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / _CHECKPOINTS
    trajs: dict[str, Any] = {}
    files: dict[str, Path] = {}
    records = [_run_record(br.spec, None, None, "pending", None) for br in built.runs]
    _write_summary(out, built, records, [], started, complete=False)
    interrupted = None
    n = len(built.runs)
    for i, br in enumerate(built.runs):
        spec = br.spec
        head = f"[{i + 1}/{n}] {spec.label}"
        path = out / f"{spec.slug}.traj"
        ckpt = ckpt_dir / f"{spec.slug}-{br.hash}.ckpt"
        # This run's older checkpoints: its slug, a dash and exactly the hash's
        # width of hex digits (`GF-*.ckpt` also matched run `GF-2`'s checkpoint, which
        # was deleted and that run then started over instead of resuming).
        own = re.compile(re.escape(spec.slug) + f"-[0-9a-f]{{{len(br.hash)}}}\\.ckpt")
        stale = [
            p for p in ckpt_dir.glob(f"{glob.escape(spec.slug)}-*.ckpt")
            if p != ckpt and own.fullmatch(p.name)
        ]
        if force:
            stale.append(ckpt)
        for p in stale:
            p.unlink(missing_ok=True)
        if path.exists() and not force:
            try:
                old = Trajectory.load(path)
            except Exception:  # unreadable or from another version: recompute
                old = None
            same = (
                old is not None
                and old.info.get("experiment", {}).get("hash") == br.hash
            )
            if same and old.result is not RESULTS.interrupted:
                echo(
                    f"{head}: already done ({path.name}: {_result_line(old)}); --force recomputes it"
                )
                trajs[spec.label], files[spec.label] = old, path
                records[i] = _run_record(
                    spec, old, path.name, "reused", _compare_row(built, spec.label, old)
                )
                continue
            if not same:
                echo(f"{head}: {path.name} was made with other settings; recomputing")
        resuming = ckpt.exists()
        how = (
            " (resuming from its checkpoint)"
            if resuming
            else (
                " (starting over: descents cannot resume)"
                if spec.kind == "descent" and path.exists() and not force
                else ""
            )
        )
        echo(f"{head}: {spec.describe()}{how}")
        ckpt_dir.mkdir(exist_ok=True)
        traj = _execute(built, br, ckpt, progress)
        traj.info["experiment"] = {
            "name": exp.name,
            "label": spec.label,
            "hash": br.hash,
        }
        traj.save(path)
        if traj.result is not RESULTS.interrupted:
            ckpt.unlink(missing_ok=True)
        trajs[spec.label], files[spec.label] = traj, path
        status = "interrupted" if traj.result is RESULTS.interrupted else "done"
        records[i] = _run_record(
            spec, traj, path.name, status, _compare_row(built, spec.label, traj)
        )
        _write_summary(out, built, records, [], started, complete=False)
        echo(f"{head}: {_result_line(traj)} → {path}")
        if status == "interrupted":
            interrupted = spec.label
            break
    if ckpt_dir.exists() and not any(ckpt_dir.iterdir()):
        ckpt_dir.rmdir()
    plots: list[Path] = []
    if interrupted is None:
        ref = _reference_info(exp.reference, built.reference)
        plots = write_plots(out, exp, trajs, ref)
    failed = [
        label
        for label, t in trajs.items()
        if not t.success and t.result is not RESULTS.interrupted
    ]
    summary = _write_summary(
        out, built, records, plots, started, complete=interrupted is None
    )
    return Outcome(
        out=out,
        summary=summary,
        trajectories=files,
        plots=plots,
        failed=failed,
        interrupted=interrupted,
    )


# -------------------------------------------------------------------------- plots


def _panel_reference(metric: str, ref: dict | None):
    """`(reference, label)` for one panel, or `(None, None)`."""
    if ref is None:
        return None, None
    if "margin" in ref:
        norm = ref["norm"]
        label = f"max-margin (ℓ{norm}) γ* = {ref['margin']:.4g}"
        if (norm == 2 and metric in ("margin", "margin_gap")) or (
            norm == 1 and metric in ("margin_l1", "margin_l1_gap")
        ):
            return ref["margin"], label
        return None, None
    if metric == "singular_values" and ref.get("singular_values"):
        s = np.asarray(ref["singular_values"])
        # Only the singular values that are really there (an SDP leaves ~1e-8).
        s = s[s > 1e-6 * s[0]] if s[0] > 0 else s[:1]
        what = {"nuclear": "min nuclear norm", "truth": "truth"}.get(
            ref["kind"], ref["kind"]
        )
        return s.tolist(), f"σ({what})"
    return None, None


def _log10_t_scale(spec: PlotSpec, trajs: dict) -> str:
    """`"auto"`: a log-scaled log₁₀ t axis when the runs' horizons differ by more
    than ten times in log t (say GD to t = 1e4 and a flow to t = e^1000), where a
    linear one would squeeze the shorter runs against its left edge."""
    if spec.log10_t_scale != "auto":
        return spec.log10_t_scale
    ends = [
        float(np.max(t.log_ts[np.isfinite(t.log_ts)]))
        for t in trajs.values()
        if np.any(np.isfinite(t.log_ts))
    ]
    ends = [e for e in ends if e > 0]
    return "log" if ends and max(ends) > 10 * min(ends) else "linear"


def _draw(ax, metric: str, trajs: dict, ref: dict | None, spec: PlotSpec) -> None:
    from ._plot import DERIVED, convergence

    need = DERIVED.get(metric, metric)
    chosen = {label: t for label, t in trajs.items() if need in t.metrics}
    labels = [
        label if t.success else f"{label} ({t.result.name})"
        for label, t in chosen.items()
    ]
    reference, ref_label = _panel_reference(metric, ref)
    convergence(
        list(chosen.values()),
        metric,
        reference=reference,
        reference_label=ref_label,
        labels=labels,
        ax=ax,
        log_time=spec.log_time,
        log10_t_scale=_log10_t_scale(spec, chosen),
    )
    if metric in ("margin", "margin_l1") and reference is not None and reference > 0:
        # Zoom in on the approach to γ*: the early, strongly negative margins of a
        # random initialisation would flatten it.
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, -reference), hi)


def write_plots(
    out: Path,
    exp: Experiment,
    trajs: dict,
    ref: dict | None,
    *,
    metrics: Sequence[str] | None = None,
    formats: Sequence[str] | None = None,
) -> list[Path]:
    """Write `overview.<format>` (all metrics, one panel each) and `<metric>.<format>`
    (one figure per metric) into `out`; each panel overlays every run that recorded
    what it needs."""
    from matplotlib.figure import Figure

    if not trajs:
        return []
    spec = exp.plot
    metrics = tuple(spec.metrics if metrics is None else metrics)
    formats = tuple(spec.formats if formats is None else formats)
    title = spec.title or exp.name
    cols = 2 if len(metrics) == 4 else min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    written = []
    overview = Figure(figsize=(5.2 * cols, 4.2 * rows), dpi=100, layout="constrained")
    axes = overview.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(metrics) :]:
        ax.remove()
    for ax, metric in zip(axes, metrics):
        _draw(ax, metric, trajs, ref, spec)
    overview.suptitle(title, fontsize=13)
    figures = [("overview", overview)]
    for metric in metrics:
        fig = Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        _draw(ax, metric, trajs, ref, spec)
        ax.set_title(title, fontsize=12)
        figures.append((metric, fig))
    for name, fig in figures:
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            fig.savefig(path, dpi=spec.dpi)
            written.append(path)
    return written


def replot(
    out: str | Path,
    *,
    metrics: Sequence[str] | None = None,
    formats: Sequence[str] | None = None,
) -> list[Path]:
    """Regenerate the plots of a results folder written by `run`, from its
    `summary.json` and saved trajectories (nothing is solved)."""
    from ._plot import DERIVED
    from ._trajectory import Trajectory

    out = Path(out)
    path = out / SUMMARY
    if not path.exists():
        raise ExperimentError(
            None,
            f"no {SUMMARY} in {out}: run `flowsolve run EXPERIMENT.toml --out {out}` first",
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        exp = parse_dict(summary["experiment"], source=str(path))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ExperimentError(
            None, f"not a flowsolve results summary ({e})", str(path)
        ) from None
    trajs = {}
    for rec in summary.get("runs", []):
        file = rec.get("file")
        if file and (out / file).exists():
            trajs[rec["label"]] = Trajectory.load(out / file)
    if not trajs:
        raise ExperimentError(None, f"no saved trajectories in {out}: nothing to plot")
    recorded = {m for t in trajs.values() for m in t.metrics}
    if metrics is not None:
        known = _plot_metric_names()
        for m in metrics:
            if m not in known:
                raise _unknown_option("--metrics", m, known)
            need = DERIVED.get(m, m)
            if need not in recorded:
                raise ExperimentError(
                    "--metrics",
                    f"{_show(m)} needs the metric {_show(need)}, which no saved run recorded (recorded: {', '.join(sorted(recorded))})",
                )
        ref = summary.get("reference") or {}
        for m, norm in (("margin_gap", 2), ("margin_l1_gap", 1)):
            if (
                m in metrics
                and ref.get("norm") != norm
                or (m in metrics and "margin" not in ref)
            ):
                raise ExperimentError(
                    "--metrics",
                    f'{_show(m)} needs the ℓ{norm} max-margin reference (`reference = "l{norm}"` in the experiment)',
                )
    return write_plots(
        out, exp, trajs, summary.get("reference"), metrics=metrics, formats=formats
    )


def _unknown_option(option: str, value: str, valid: Sequence[str]) -> ExperimentError:
    return ExperimentError(option, str(_unknown("metric", value, valid)))
