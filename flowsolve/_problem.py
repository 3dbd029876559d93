import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from ._losses import AbstractLoss
from ._models.base import AbstractModel, predict_batch


def _warn_if_float32(dtype) -> None:
    if jnp.dtype(dtype) == jnp.float32:
        warnings.warn(
            "flowsolve is running in float32. Long horizons, small losses and tight "
            "tolerances need float64: call `jax.config.update('jax_enable_x64', True)` "
            "at the start of your program, before creating models and data.",
            UserWarning,
            stacklevel=3,
        )


def _numeric(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.bool_)


def check_data(X, y, loss, names: tuple[str, str] = ("X", "y")) -> tuple[np.ndarray, np.ndarray]:
    """`(X, y)` as NumPy arrays, checked for what every problem needs (numeric, n
    matching rows, finite, labels the loss accepts), with messages that name them
    as `names`; shared by `fs.Problem` and the test data of `fs.compare`."""
    xn, yn = names
    X_np = np.asarray(X)
    y_np = np.asarray(y)
    if not (_numeric(X_np) and _numeric(y_np)):
        raise ValueError(
            f"`{xn}` and `{yn}` must be numeric arrays (got dtypes {X_np.dtype} and "
            f"{y_np.dtype}); encode string labels as ±1 (classification) or numbers."
        )
    if X_np.ndim < 1 or X_np.shape[0] == 0:
        raise ValueError(f"`{xn}` must have shape (n, ...) with n ≥ 1, got {X_np.shape}.")
    if y_np.ndim != 1:
        raise ValueError(
            f"`{yn}` must be one-dimensional with shape (n,), got {y_np.shape}. "
            f"Flatten it with `{yn}.ravel()` if it is a column."
        )
    if X_np.shape[0] != y_np.shape[0]:
        raise ValueError(
            f"`{xn}` has {X_np.shape[0]} rows but `{yn}` has {y_np.shape[0]} entries; "
            "they must match: one target per row."
        )
    if np.issubdtype(X_np.dtype, np.inexact) and not np.all(np.isfinite(X_np)):
        bad = np.argwhere(~np.isfinite(X_np.reshape(X_np.shape[0], -1)).all(axis=1))
        raise ValueError(
            f"`{xn}` contains NaN or inf (rows {bad.ravel()[:5].tolist()}...). Remove "
            "or impute those rows."
        )
    if not np.all(np.isfinite(y_np.astype(float))):
        bad = np.argwhere(~np.isfinite(y_np.astype(float))).ravel()
        raise ValueError(
            f"`{yn}` contains NaN or inf (entries {bad[:5].tolist()}). Remove those "
            "samples."
        )
    loss.check_labels(y_np.astype(float))
    return X_np, y_np


class Problem(eqx.Module):
    r"""A training problem: a model, a loss and a training set.

    The mean training loss is $L(\theta) = \frac1n \sum_i \ell(f_\theta(x_i), y_i)$,
    predictions are `model.predict_batch(X)` for the models of `fs.models` (the
    values of `jax.vmap(model)(X)`, formed batch-wise) and `jax.vmap(model)(X)` for
    any other module, and for classification losses the margins are
    $u_i = y_i f_\theta(x_i)$.

    **Arguments:**

    - `model`: an `equinox.Module` mapping one row of `X` to a scalar: a model from
        `fs.models` or your own. It is also the default initial point θ0.
    - `loss`: a loss from `fs.losses`.
    - `X`: inputs, shape `(n, ...)`; for matrix completion, integer index pairs.
    - `y`: targets, shape `(n,)`; ±1 for classification losses.
    - `homogeneity`: the model's homogeneity degree, for normalised margins of a
        user module that does not declare one.
    """

    model: eqx.Module
    loss: AbstractLoss
    X: Array
    y: Array
    homogeneity: int | None = eqx.field(static=True)

    def __init__(
        self,
        model: eqx.Module,
        loss: AbstractLoss,
        X: ArrayLike,
        y: ArrayLike,
        *,
        homogeneity: int | None = None,
    ):
        if isinstance(loss, type) and issubclass(loss, AbstractLoss):
            raise ValueError(
                f"`loss` must be a loss instance: write `{loss.__name__}()`, not "
                f"`{loss.__name__}`."
            )
        if not isinstance(loss, AbstractLoss):
            raise ValueError(
                f"`loss` must be one of fs.losses (Logistic(), Exponential(), "
                f"Squared()), got {type(loss).__name__}."
            )
        if not isinstance(model, eqx.Module):
            raise ValueError(
                "`model` must be an equinox.Module mapping one input row to a scalar "
                f"(e.g. fs.models.Linear(d)), got {type(model).__name__}."
            )
        X_np, y_np = check_data(X, y, loss)
        if isinstance(model, AbstractModel):
            model.check_data(X_np)
        if np.issubdtype(X_np.dtype, np.integer):
            X_j = jnp.asarray(X_np)
        else:
            X_j = jnp.asarray(X_np, dtype=float)
        y_j = jnp.asarray(y_np, dtype=float)
        _warn_if_float32(y_j.dtype)
        try:
            out = jax.eval_shape(model, X_j[0])
        except Exception as e:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"The model cannot be applied to one row of `X` (shape "
                f"{X_j.shape[1:]}, dtype {X_j.dtype}): {e}"
            ) from e
        if getattr(out, "shape", None) != ():
            hint = (
                f" `X` has shape {X_j.shape}: one number per row. If each row is a "
                "vector, pass X with shape (n, d) (`X.reshape(-1, 1)` for one feature)."
                if X_j.ndim == 1 else " For an equinox MLP use `out_size='scalar'`."
            )
            raise ValueError(
                "The model must map one input row to a scalar; on a row of shape "
                f"{X_j.shape[1:]} it returned shape {getattr(out, 'shape', out)}.{hint}"
            )
        if isinstance(model, AbstractModel):
            batch = eqx.filter_eval_shape(predict_batch, model, X_j)
            if batch.shape != (X_j.shape[0],):
                raise ValueError(
                    f"{type(model).__name__}.predict_batch must return one prediction "
                    f"per row, shape ({X_j.shape[0]},); it returned shape {batch.shape}."
                )
        if homogeneity is None:
            homogeneity = getattr(model, "homogeneity", None)
        if homogeneity is not None and (
            isinstance(homogeneity, bool) or not isinstance(homogeneity, int) or homogeneity < 1
        ):
            raise ValueError(f"`homogeneity` must be a positive integer, got {homogeneity!r}.")
        self.model = model
        self.loss = loss
        self.X = X_j
        self.y = y_j
        self.homogeneity = homogeneity

    @property
    def n(self) -> int:
        return self.y.shape[0]

    def predict(self, model: eqx.Module) -> Array:
        """Predictions `f(x_i)` on the training set, shape `(n,)`."""
        return predict_batch(model, self.X)

    def margins(self, model: eqx.Module) -> Array:
        """Training margins `u_i = y_i f(x_i)` (classification losses only)."""
        self.require_classification("margins")
        return self.y * self.predict(model)

    def mean_loss(self, model: eqx.Module) -> Array:
        """The mean training loss `L`."""
        return self.loss.mean(self.predict(model), self.y)

    def log_loss(self, model: eqx.Module) -> Array:
        """`log L` computed in the log domain: finite where `L` underflows."""
        return self.loss.log_loss(self.predict(model), self.y)

    def gradient(self, model: eqx.Module, log_scale: ArrayLike = 0.0):
        r"""$e^{\text{log\_scale}}\,\nabla_\theta L$, as a pytree like the model's
        inexact arrays (other leaves `None`), formed as one VJP of the predictions
        with the log-domain cotangent $e^{\text{log\_scale}}\,\ell'(f_i)/n$."""
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def predict(p):
            return self.predict(eqx.combine(p, static))

        f, vjp = jax.vjp(predict, params)
        cot = self.loss.scaled_derivative(f, self.y, log_scale - jnp.log(self.n))
        (g,) = vjp(cot.astype(f.dtype))
        return g

    def require_classification(self, what: str) -> None:
        if not self.loss.classification:
            raise ValueError(
                f"{what} needs a classification loss (Logistic or Exponential) with "
                f"±1 labels; this problem uses {type(self.loss).__name__} (regression)."
            )

    def require_homogeneity(self, what: str) -> int:
        if self.homogeneity is None:
            raise ValueError(
                f"{what} needs the model's homogeneity degree, and "
                f"{type(self.model).__name__} declares none. Pass "
                "`fs.Problem(..., homogeneity=L)` if your model is L-homogeneous."
            )
        return self.homogeneity
