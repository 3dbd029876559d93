import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray

from .base import AbstractModel, _check_positive_int, _check_scale


# Plain module-level functions (not jax.nn's wrapped ones) so that models pickle
# (`Trajectory.save`) by reference.
def identity(x):
    return x


def relu(x):
    return jax.nn.relu(x)


def leaky_relu(x):
    return jax.nn.leaky_relu(x, negative_slope=0.1)


def tanh(x):
    return jnp.tanh(x)


def softplus(x):
    return jax.nn.softplus(x)


def gelu(x):
    return jax.nn.gelu(x)


def sigmoid(x):
    return jax.nn.sigmoid(x)


_ACTIVATIONS: dict[str, tuple[Callable, bool]] = {
    # name: (function, positively 1-homogeneous)
    "relu": (relu, True),
    "leaky_relu": (leaky_relu, True),
    "identity": (identity, True),
    "tanh": (tanh, False),
    "softplus": (softplus, False),
    "gelu": (gelu, False),
    "sigmoid": (sigmoid, False),
}

#: Activations with a kink (a jump in the derivative).
_KINKED = (relu, leaky_relu)


class TwoLayer(AbstractModel):
    r"""Two-layer network $f(x) = c_m \sum_{j=1}^m b_j\,\sigma(a_j^\top x)$.

    With a positively 1-homogeneous activation (ReLU, leaky ReLU) the model is
    2-homogeneous in $(a, b)$ when both layers train, and 1-homogeneous when only
    the output layer trains; gradient flow then conserves $\|a_j\|^2 - b_j^2$ per
    neuron. For a bias, append a constant 1 to the inputs (as Chizat & Bach 2020
    do; `fs.datasets` can do it).

    **Arguments:**

    - `d`: input dimension (including any constant coordinate).
    - `width`: number of hidden units $m$.
    - `activation`: `"relu"`, `"leaky_relu"` (slope 0.1), `"tanh"`, `"softplus"`,
        `"gelu"`, `"sigmoid"`, `"identity"`, or a callable. A callable is taken as
        non-homogeneous unless `homogeneous_activation=True`.
    - `scaling`: output scale $c_m$: `"mean-field"` ($1/m$, Chizat & Bach),
        `"ntk"` ($1/\sqrt m$), or a positive float.
    - `train`: `"both"` or `"output"` (the hidden layer is frozen: its gradient is
        stopped, so gradient flow keeps it at its initial value).
    - `key`: PRNG key.
    - `init_scale`: standard deviation of each entry of $a$ and $b$.
    - `balanced`: if true, $a_j$ is drawn uniformly on the sphere of radius
        `init_scale` and $b_j = \pm$`init_scale`, so that $\|a_j\| = |b_j|$.
    """

    hidden: Array
    output: Array
    activation: Callable = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    train_hidden: bool = eqx.field(static=True)
    homogeneity: int | None = eqx.field(static=True)

    def __init__(
        self,
        d: int,
        width: int,
        *,
        key: PRNGKeyArray,
        activation: str | Callable = "relu",
        scaling: str | float = "mean-field",
        train: str = "both",
        init_scale: float = 1.0,
        balanced: bool = False,
        homogeneous_activation: bool = False,
    ):
        d = _check_positive_int("d", d)
        width = _check_positive_int("width", width)
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(
                    f"Unknown activation {activation!r}; choose one of "
                    f"{sorted(_ACTIVATIONS)} or pass a callable."
                )
            fn, homogeneous = _ACTIVATIONS[activation]
        elif callable(activation):
            fn, homogeneous = activation, bool(homogeneous_activation)
        else:
            raise ValueError(f"`activation` must be a name or a callable, got {activation!r}.")
        if scaling == "mean-field":
            scale = 1.0 / width
        elif scaling == "ntk":
            scale = 1.0 / width**0.5
        elif (
            isinstance(scaling, int | float) and not isinstance(scaling, bool)
            and math.isfinite(scaling) and scaling > 0
        ):
            scale = float(scaling)
        else:
            raise ValueError(
                f"`scaling` must be 'mean-field', 'ntk' or a positive float, got {scaling!r}."
            )
        init_scale = _check_scale("init_scale", init_scale, positive=True)
        if train not in ("both", "output"):
            raise ValueError(f"`train` must be 'both' or 'output', got {train!r}.")
        k1, k2 = jr.split(key)
        if balanced:
            a = jr.normal(k1, (width, d))
            a = init_scale * a / jnp.linalg.norm(a, axis=1, keepdims=True)
            b = init_scale * jr.rademacher(k2, (width,), dtype=a.dtype)
        else:
            a = init_scale * jr.normal(k1, (width, d))
            b = init_scale * jr.normal(k2, (width,))
        self.hidden = a
        self.output = b
        self.activation = fn
        self.scale = scale
        self.train_hidden = train == "both"
        if homogeneous:
            self.homogeneity = 2 if self.train_hidden else 1
        else:
            self.homogeneity = None

    @property
    def smooth(self) -> bool:
        # A kinked activation makes ∂f/∂(hidden) jump where a unit's pre-activation
        # crosses 0 on a training point; with the hidden layer frozen the flow is
        # linear in fixed features, hence smooth.
        return not (self.train_hidden and self.activation in _KINKED)

    def __call__(self, x: Array) -> Array:
        a = self.hidden if self.train_hidden else jax.lax.stop_gradient(self.hidden)
        return self.scale * jnp.dot(self.output, self.activation(a @ x))

    def predict_batch(self, X: Array) -> Array:
        # One n×d by d×m matmul for the whole batch, not n matrix–vector products.
        # The activation is applied row by row, as in `__call__`.
        a = self.hidden if self.train_hidden else jax.lax.stop_gradient(self.hidden)
        return self.scale * (jax.vmap(self.activation)(X @ a.T) @ self.output)

    def trainable(self):
        # With the hidden layer frozen only the output layer moves, and the model
        # is 1-homogeneous in it: margins normalise by ‖b‖, not ‖(A, b)‖.
        return super().trainable() if self.train_hidden else self.output

    def gram(self, X: Array) -> Array:
        r"""$JJ^\top$ in closed form, without the n×p Jacobian:
        $c^2[\Phi\Phi^\top + (\Psi\,\mathrm{diag}(b^2)\Psi^\top) \circ XX^\top]$ with
        $\Phi = \sigma(XA^\top)$, $\Psi = \sigma'(XA^\top)$: $O(n^2 m + n^2 d)$ instead of
        $O(n^2 m d)$. The second term is dropped when only the output layer trains."""
        Z = X @ self.hidden.T
        Phi = self.activation(Z)
        G = Phi @ Phi.T
        if self.train_hidden:
            dsigma = jax.vmap(jax.vmap(jax.grad(self.activation)))(Z)
            G = G + ((dsigma * self.output**2) @ dsigma.T) * (X @ X.T)
        return self.scale**2 * G

    def conserved_quantities(self) -> Array:
        if self.homogeneity is None or not self.train_hidden:
            return super().conserved_quantities()
        return jnp.sum(self.hidden**2, axis=1) - self.output**2

    def conserved_scale(self) -> Array:
        if self.homogeneity is None or not self.train_hidden:
            return super().conserved_scale()
        return jnp.maximum(
            jnp.max(jnp.sum(self.hidden**2, axis=1)), jnp.max(self.output**2)
        )
