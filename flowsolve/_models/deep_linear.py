import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray

from .base import AbstractModel, _check_positive_int, _check_scale


def _chain(layers) -> Array:
    out = layers[0]
    for w in layers[1:]:
        out = w @ out
    return out


def _balancedness(layers) -> tuple[Array, ...]:
    return tuple(
        layers[j + 1].T @ layers[j + 1] - layers[j] @ layers[j].T
        for j in range(len(layers) - 1)
    )


def _balancedness_scale(layers) -> Array:
    terms = [jnp.linalg.norm(w.T @ w) for w in layers[1:]] + [
        jnp.linalg.norm(w @ w.T) for w in layers[:-1]
    ]
    return jnp.max(jnp.stack(terms))


class DeepLinear(AbstractModel):
    r"""Deep linear network $f(x) = W_D \cdots W_2 W_1 x$ (D-homogeneous).

    $W_1$ is `width × d`, the middle layers `width × width`, $W_D$ is `1 × width`.
    Gradient flow conserves $W_{j+1}^\top W_{j+1} - W_j W_j^\top$ for each pair of
    consecutive layers (Arora et al. 2018).

    **Arguments:**

    - `d`: input dimension.
    - `depth`: number of layers $D \ge 1$.
    - `width`: hidden width.
    - `key`: PRNG key.
    - `init_scale`: standard deviation of each weight entry at initialisation.
    """

    layers: tuple[Array, ...]
    homogeneity: int = eqx.field(static=True)

    def __init__(
        self,
        d: int,
        depth: int = 2,
        width: int | None = None,
        *,
        key: PRNGKeyArray,
        init_scale: float = 1e-2,
    ):
        d = _check_positive_int("d", d)
        depth = _check_positive_int("depth", depth)
        width = d if width is None else _check_positive_int("width", width)
        init_scale = _check_scale("init_scale", init_scale, positive=depth > 1)
        dims = [d] + [width] * (depth - 1) + [1]
        keys = jr.split(key, depth)
        self.layers = tuple(
            init_scale * jr.normal(k, (dims[j + 1], dims[j]))
            for j, k in enumerate(keys)
        )
        self.homogeneity = depth

    def __call__(self, x: Array) -> Array:
        h = x
        for w in self.layers:
            h = w @ h
        return h[0]

    def predict_batch(self, X: Array) -> Array:
        # The end-to-end vector once, then one matrix–vector product with the data:
        # O(D·width² + n·d) instead of n passes through every layer.
        return X @ self.end_to_end()

    def end_to_end(self) -> Array:
        r"""The end-to-end weight vector $w = (W_D\cdots W_1)^\top \in \mathbb R^d$."""
        # From the output row down (vector × matrix products), not the
        # matrix × matrix chain from the input side.
        w = self.layers[-1][0]
        for layer in reversed(self.layers[:-1]):
            w = w @ layer
        return w

    def gram(self, X: Array) -> Array:
        r"""$JJ^\top$ in closed form: the gradient of $f(x)$ in $W_j$ is
        $r_j^\top (P_j x)^\top$ with $P_j = W_{j-1}\cdots W_1$ and the row
        $r_j = W_D \cdots W_{j+1}$, so $JJ^\top = \sum_j \|r_j\|^2\,(XP_j^\top)(XP_j^\top)^\top$:
        $O(D(n\,d\,w + n^2 w + w^2))$ for width $w$, without the $n \times p$ Jacobian."""
        depth = len(self.layers)
        rows = [None] * depth
        r = jnp.ones((1,), dtype=self.layers[-1].dtype)
        for j in reversed(range(depth)):
            rows[j] = r
            r = r @ self.layers[j]
        G = jnp.zeros((X.shape[0], X.shape[0]), dtype=jnp.result_type(X, r))
        A = X
        for row, w in zip(rows, self.layers):
            G = G + jnp.sum(row**2) * (A @ A.T)
            A = A @ w.T
        return G

    def balancedness(self) -> tuple[Array, ...]:
        r"""$W_{j+1}^\top W_{j+1} - W_j W_j^\top$ for $j = 1, \dots, D-1$."""
        return _balancedness(self.layers)

    def conserved_quantities(self) -> Array:
        mats = self.balancedness()
        if not mats:
            return jnp.zeros((0,))
        return jnp.concatenate([m.ravel() for m in mats])

    def conserved_scale(self) -> Array:
        return _balancedness_scale(self.layers)
