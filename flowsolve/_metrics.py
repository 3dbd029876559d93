r"""Metrics: functions of `(problem, model)` computed on the save points of a solve
or descent, inside the compiled loop.

Names usable in `metrics=(...)`: see `NAMES`. Every metric is finite at every
horizon: losses are also available in the log domain, margins are ratios of
quantities that grow together, and norms at zero give 0 instead of `0/0`.
"""

import collections
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array

from ._compile import abstract_key
from ._losses import Exponential, Logistic
from ._misc import safe_divide, safe_norm
from ._models import AbstractModel
from ._problem import Problem


def loss(problem: Problem, model: eqx.Module) -> Array:
    """The mean training loss `L` (underflows to 0 below ~1e-308: use `log_loss`)."""
    return problem.mean_loss(model)


def log_loss(problem: Problem, model: eqx.Module) -> Array:
    """`log L`, natural log, computed in the log domain: finite at any horizon."""
    return problem.log_loss(model)


def param_norm(problem: Problem, model: eqx.Module) -> Array:
    """Euclidean norm of the trainable parameters (`model.trainable()` for models
    from `fs.models`: a frozen hidden layer is left out; every inexact array of
    other modules)."""
    params = model.trainable() if isinstance(model, AbstractModel) else eqx.filter(model, eqx.is_inexact_array)
    leaves = jtu.tree_leaves(params)
    return safe_norm(jnp.concatenate([jnp.ravel(x) for x in leaves]))


def _linear_predictor(problem: Problem, model: eqx.Module) -> Array | None:
    """The end-to-end weight vector when the model is a linear predictor of the rows."""
    if not isinstance(model, AbstractModel) or problem.X.ndim != 2:
        return None
    try:
        shape = jax.eval_shape(model.end_to_end).shape
    except NotImplementedError:
        return None
    if shape != (problem.X.shape[1],):
        return None
    return model.end_to_end()


def homogeneous_margin(problem: Problem, model: eqx.Module) -> Array:
    r"""$\min_i y_i f(x_i) / \|\theta\|_2^L$ for an $L$-homogeneous model (Lyu & Li 2019)."""
    problem.require_classification("A margin")
    degree = problem.require_homogeneity("The normalised margin")
    u = problem.margins(model)
    return safe_divide(jnp.min(u), param_norm(problem, model) ** degree)


def margin(problem: Problem, model: eqx.Module, norm: int = 2) -> Array:
    r"""Normalised margin.

    For a linear predictor end to end (`Linear`, `DeepLinear`, `DiagonalLinear`)
    this is the geometric margin of its weight vector $w$ in the dual of the chosen
    norm's geometry, $\min_i y_i\, w^\top x_i / \|w\|_{\text{norm}}$ (`norm` 2 or
    1), the quantity a hard-margin SVM (ℓ2) or LP (ℓ1) maximises. For other
    homogeneous models and `norm=2` it is `homogeneous_margin`.
    """
    problem.require_classification("A margin")
    if norm not in (1, 2):
        raise ValueError(f"`norm` must be 1 or 2, got {norm!r}.")
    w = _linear_predictor(problem, model)
    if w is None:
        if norm == 1:
            raise ValueError(
                "The ℓ1 margin needs a model that is a linear predictor end to end "
                f"(Linear, DeepLinear, DiagonalLinear); got {type(model).__name__}."
            )
        return homogeneous_margin(problem, model)
    u = problem.y * (problem.X @ w)
    return safe_divide(jnp.min(u), safe_norm(w, ord=norm))


def margin_l1(problem: Problem, model: eqx.Module) -> Array:
    """`margin(problem, model, norm=1)`."""
    return margin(problem, model, norm=1)


def smoothed_margin(problem: Problem, model: eqx.Module) -> Array:
    r"""Lyu & Li's smoothed normalised margin, a lower bound on the margin that is
    non-decreasing along gradient flow once the loss is below $\log 2 / n$ (logistic)
    or $1/n$ (exponential), for homogeneous models.

    With the *sum* loss $\mathcal L = nL$: $\log(1/\mathcal L) / \|\theta\|^L$ for the
    exponential loss and $\log(1/(e^{\mathcal L} - 1)) / \|\theta\|^L$ for the logistic
    loss, computed from `log_loss`.
    """
    problem.require_classification("The smoothed margin")
    degree = problem.require_homogeneity("The smoothed margin")
    log_sum = problem.log_loss(model) + jnp.log(problem.n)
    if isinstance(problem.loss, Exponential):
        num = -log_sum
    elif isinstance(problem.loss, Logistic):
        # log(e^𝓛 − 1) = 𝓛 + log(1 − e^{−𝓛}): no overflow of e^𝓛 (log(expm1(𝓛))
        # was −inf past 𝓛 ≈ 709, e.g. at initialisation with n = 2000), accurate
        # as 𝓛 → 0; below 𝓛 = e^−30, where e^𝓛 − 1 would underflow, the series
        # log 𝓛 + 𝓛/2.
        big = log_sum > -30.0
        total = jnp.exp(jnp.where(big, log_sum, -30.0))
        num = -jnp.where(big, total + jnp.log(-jnp.expm1(-total)), log_sum + 0.5 * jnp.exp(log_sum))
    else:  # pragma: no cover - guarded by require_classification
        raise ValueError("The smoothed margin is defined for Logistic and Exponential.")
    return safe_divide(num, param_norm(problem, model) ** degree)


def train_error(problem: Problem, model: eqx.Module) -> Array:
    """Fraction of training points with margin ≤ 0 (classification)."""
    problem.require_classification("The training error")
    return jnp.mean(problem.margins(model) <= 0)


def _end_to_end_matrix(model: eqx.Module) -> Array:
    if not isinstance(model, AbstractModel):
        raise ValueError("Singular values need a model from fs.models with end_to_end().")
    W = model.end_to_end()
    if W.ndim == 1:
        W = W[None, :]
    return W


def singular_values(problem: Problem, model: eqx.Module) -> Array:
    """Singular values of the end-to-end matrix, in decreasing order."""
    return jnp.linalg.svd(_end_to_end_matrix(model), compute_uv=False)


def effective_rank(problem: Problem, model: eqx.Module) -> Array:
    r"""Effective rank of the end-to-end matrix (Roy & Vetterli 2007):
    $\exp(-\sum_k p_k \log p_k)$ with $p_k = \sigma_k / \sum_j \sigma_j$."""
    s = singular_values(problem, model)
    total = jnp.sum(s)
    p = safe_divide(s, total)
    plogp = jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    return jnp.where(total > 0, jnp.exp(-jnp.sum(plogp)), 0.0)


def conserved(problem: Problem, model: eqx.Module) -> Array:
    """The model's conserved quantities of gradient flow, flattened (e.g. the
    balancedness of a deep linear network; `‖a_j‖² − b_j²` of a ReLU network)."""
    if not isinstance(model, AbstractModel):
        raise ValueError("Conserved quantities are declared by the models in fs.models.")
    return model.conserved_quantities()


def conserved_scale(problem: Problem, model: eqx.Module) -> Array:
    """Size of the terms the conserved quantities are differences of (for relative drift)."""
    if not isinstance(model, AbstractModel):
        raise ValueError("Conserved quantities are declared by the models in fs.models.")
    return model.conserved_scale()


NAMES: dict[str, Callable[[Problem, eqx.Module], Array]] = {
    "loss": loss,
    "log_loss": log_loss,
    "margin": margin,
    "margin_l1": margin_l1,
    "homogeneous_margin": homogeneous_margin,
    "smoothed_margin": smoothed_margin,
    "param_norm": param_norm,
    "train_error": train_error,
    "singular_values": singular_values,
    "effective_rank": effective_rank,
    "conserved": conserved,
    "conserved_scale": conserved_scale,
}

_LINEAR_MARGINS = ("margin", "margin_l1")


_SEPARABLE: dict[tuple[int, int], tuple] = {}


def linearly_separable(X, y) -> bool:
    """Whether some `w` has `y_i wᵀx_i > 0` for all i (an LP feasibility check).
    Remembered per pair of (immutable) JAX arrays, so repeated solves of one problem
    do not solve the LP again."""
    key = (id(X), id(y))
    hit = _SEPARABLE.get(key)
    if hit is not None and hit[0]() is X and hit[1]() is y:
        return hit[2]
    separable = _linearly_separable(X, y)
    if isinstance(X, jax.Array) and isinstance(y, jax.Array):
        _SEPARABLE[key] = (weakref.ref(X), weakref.ref(y), separable)
        # Drop the entry when either array goes, so a recycled id() never matches.
        weakref.finalize(X, _SEPARABLE.pop, key, None)
        weakref.finalize(y, _SEPARABLE.pop, key, None)
    return separable


def _linearly_separable(X, y) -> bool:
    from scipy.optimize import linprog

    Z = np.asarray(y, dtype=float)[:, None] * np.asarray(X, dtype=float)
    res = linprog(
        np.zeros(Z.shape[1]),
        A_ub=-Z,
        b_ub=-np.ones(Z.shape[0]),
        bounds=[(None, None)] * Z.shape[1],
        method="highs",
    )
    return res.status == 0


#: Metrics (function, problem and model structure, array shapes) already checked
#: to apply: the check traces the metric (`jax.eval_shape`), which would otherwise
#: cost a large part of a warm `fs.solve` call.
_APPLIES: "collections.OrderedDict[Any, None]" = collections.OrderedDict()
_MAX_APPLIES = 256


def _check_applies(name: str, fn, problem: Problem, model: eqx.Module, structure) -> None:
    key = None if structure is None else (fn, structure)
    if key is not None and key in _APPLIES:
        _APPLIES.move_to_end(key)
        return
    try:
        out = eqx.filter_eval_shape(fn, problem, model)
    except (ValueError, NotImplementedError) as e:
        raise ValueError(f"Metric {name!r} does not apply here: {e}") from e
    leaves = jtu.tree_leaves(out)
    if not leaves or not all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
        raise ValueError(
            f"Metric {name!r} must return a JAX array (or a pytree of them) computed "
            f"from `(problem, model)`; it returned {out!r}. Wrap a constant in "
            "jnp.asarray, or compute it from the model."
        )
    if key is not None:
        _APPLIES[key] = None
        while len(_APPLIES) > _MAX_APPLIES:
            _APPLIES.popitem(last=False)


def resolve(
    metrics: Sequence[str | Callable] | Mapping[str, Callable] | None,
    problem: Problem,
    model: eqx.Module,
) -> tuple[tuple[str, ...], tuple[Callable, ...]]:
    """Turn the user's `metrics=` into names and functions, checking that each applies."""
    if metrics is None:
        metrics = ()
    if isinstance(metrics, str):
        metrics = (metrics,)
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    else:
        items = []
        for m in metrics:
            if isinstance(m, str):
                if m not in NAMES:
                    raise ValueError(
                        f"Unknown metric {m!r}. Known metrics: {sorted(NAMES)}; or pass "
                        "a function `(problem, model) -> array`."
                    )
                items.append((m, NAMES[m]))
            elif callable(m):
                items.append((getattr(m, "__name__", f"metric{len(items)}"), m))
            else:
                raise ValueError(f"A metric must be a name or a callable, got {m!r}.")
    names = tuple(n for n, _ in items)
    if len(set(names)) != len(names):
        raise ValueError(f"Metric names must be unique, got {names}.")
    structure = abstract_key((problem, model)) if items else None
    for name, fn in items:
        _check_applies(name, fn, problem, model, structure)
        if name in _LINEAR_MARGINS and _linear_predictor(problem, model) is not None:
            if not linearly_separable(problem.X, problem.y):
                raise ValueError(
                    f"Metric {name!r}: the training data are not linearly separable "
                    "(no w has y_i wᵀx_i > 0 for all i), so a linear predictor's "
                    "normalised margin stays ≤ 0 and has no max-margin limit. Use "
                    "separable data (e.g. fs.datasets.separable_gaussian), or track "
                    "'loss' / 'train_error' instead."
                )
    return names, tuple(fn for _, fn in items)
