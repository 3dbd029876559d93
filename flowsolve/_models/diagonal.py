import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from .base import AbstractModel, _check_positive_int


class DiagonalLinear(AbstractModel):
    r"""Depth-$D$ diagonal linear network with untied layers,

    $$f(x) = \langle w, x\rangle,\qquad w = \prod_{j=1}^D u_j - \prod_{j=1}^D v_j$$

    (products elementwise; $u_j, v_j \in \mathbb R^d$). With equal layer scales this
    is the "$u^D - v^D$" model of Woodworth et al. (2020) (up to a factor $D$ in
    the time scale, since the $D$ layers move separately); unequal layer scales
    give the *initialisation shape* of Azulay et al. (2021). $D$-homogeneous.

    Initialisation: $u_j(0) = v_j(0) = \alpha \cdot \lambda_j$, so $w(0) = 0$.

    Gradient flow conserves $u_{j+1}^2 - u_j^2$ and $v_{j+1}^2 - v_j^2$
    (elementwise) for each pair of consecutive layers.

    **Arguments:**

    - `d`: input dimension.
    - `depth`: $D \ge 2$.
    - `init_scale`: $\alpha$, a scalar or a per-coordinate array of shape `(d,)`.
    - `layer_scales`: $\lambda_j$, shape `(depth,)` or `(depth, d)`; default all ones
        (balanced). E.g. `(1 + s, 1 - s)` (times a normalisation) for shape `s` at
        depth 2.
    """

    u: Array
    v: Array
    homogeneity: int = eqx.field(static=True)

    def __init__(
        self,
        d: int,
        depth: int = 2,
        *,
        init_scale: ArrayLike = 1e-2,
        layer_scales: ArrayLike | None = None,
        key=None,
    ):
        del key  # deterministic initialisation; accepted for a uniform signature
        d = _check_positive_int("d", d)
        depth = _check_positive_int("depth", depth, minimum=2)
        alpha = np.asarray(init_scale, dtype=float)
        if alpha.ndim == 0:
            alpha = np.full((d,), float(alpha))
        if alpha.shape != (d,):
            raise ValueError(
                f"`init_scale` must be a scalar or have shape ({d},), got {alpha.shape}."
            )
        if not np.all(np.isfinite(alpha)) or np.any(alpha < 0):
            raise ValueError(f"`init_scale` must be finite and non-negative, got {init_scale!r}.")
        if layer_scales is None:
            lam = np.ones((depth, d))
        else:
            lam = np.asarray(layer_scales, dtype=float)
            if lam.shape == (depth,):
                lam = np.broadcast_to(lam[:, None], (depth, d))
            if lam.shape != (depth, d):
                raise ValueError(
                    f"`layer_scales` must have shape ({depth},) or ({depth}, {d}), "
                    f"got {np.shape(layer_scales)}."
                )
        init = jnp.asarray(alpha[None, :] * lam)
        self.u = init
        self.v = init
        self.homogeneity = depth

    def __call__(self, x: Array) -> Array:
        return jnp.dot(self.end_to_end(), x)

    def predict_batch(self, X: Array) -> Array:
        return X @ self.end_to_end()

    def end_to_end(self) -> Array:
        return jnp.prod(self.u, axis=0) - jnp.prod(self.v, axis=0)

    def gram(self, X: Array) -> Array:
        r"""$JJ^\top = X\,\mathrm{diag}(c)\,X^\top$ in closed form, with
        $c_k = \sum_j \big(\prod_{i \ne j} u_{ik}\big)^2 + \sum_j \big(\prod_{i \ne j}
        v_{ik}\big)^2$ (since $\partial f/\partial u_{jk} = x_k \prod_{i\ne j} u_{ik}$):
        $O(n^2 d + D d)$. The products leaving one layer out are prefix × suffix
        products, so zero entries need no division."""
        c = jnp.sum(_leave_one_out_products(self.u) ** 2 + _leave_one_out_products(self.v) ** 2, axis=0)
        return (X * c) @ X.T

    def conserved_quantities(self) -> Array:
        du = self.u[1:] ** 2 - self.u[:-1] ** 2
        dv = self.v[1:] ** 2 - self.v[:-1] ** 2
        return jnp.concatenate([du.ravel(), dv.ravel()])

    def conserved_scale(self) -> Array:
        return jnp.maximum(jnp.max(self.u**2), jnp.max(self.v**2))


def _leave_one_out_products(P: Array) -> Array:
    """Row j: the elementwise product of all rows of `P` but row j."""
    ones = jnp.ones_like(P[:1])
    before = jnp.cumprod(jnp.concatenate([ones, P[:-1]]), axis=0)
    after = jnp.cumprod(jnp.concatenate([ones, P[:0:-1]]), axis=0)[::-1]
    return before * after
