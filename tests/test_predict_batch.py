"""Batched predictions: `model.predict_batch(X)` equals the per-row `model(x)` under
`vmap`, in value and in gradient, for every model; user modules fall back to `vmap`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import flowsolve as fs


def _row_centred(z):
    # Not elementwise: the TwoLayer activation must still act on one row at a time.
    return jnp.tanh(z - jnp.mean(z))


def _case(name, key):
    k1, k2, k3 = jr.split(key, 3)
    X = jr.normal(k1, (9, 4))
    if name == "linear":
        return fs.models.Linear(4, key=k2, init_scale=1.0), X
    if name == "deep1":
        return fs.models.DeepLinear(4, depth=1, key=k2, init_scale=0.7), X
    if name == "deep3":
        return fs.models.DeepLinear(4, depth=3, width=5, key=k2, init_scale=0.7), X
    if name == "diag":
        model = fs.models.DiagonalLinear(4, depth=3, init_scale=0.8, layer_scales=(1.0, 2.0, 0.5))
        u = model.u * (1.0 + jr.uniform(k2, model.u.shape))  # u ≠ v: w ≠ 0
        return eqx.tree_at(lambda m: m.u, model, u), X
    if name == "relu_both":
        return fs.models.TwoLayer(4, 7, key=k2), X
    if name == "relu_out":
        return fs.models.TwoLayer(4, 7, key=k2, train="output"), X
    if name == "leaky_ntk":
        return fs.models.TwoLayer(4, 7, key=k2, activation="leaky_relu", scaling="ntk"), X
    if name == "tanh_scaled":
        return fs.models.TwoLayer(4, 7, key=k2, activation="tanh", scaling=0.3), X
    if name == "row_activation":
        return fs.models.TwoLayer(4, 7, key=k2, activation=_row_centred), X
    if name.startswith("mf_completion"):
        # depth 1, 2, 3; "_few": 3 entries of a 30 × 40 matrix, where carrying the
        # observed columns through the layers is cheaper than forming W.
        depth = int(name[-1]) if name[-1].isdigit() else 3
        shape, n = ((30, 40), 3) if name.endswith("few") else ((3, 4), 9)
        model = fs.models.MatrixFactorization(shape, depth=depth, key=k2, init_scale=0.9)
        rows = jr.randint(k1, (n,), 0, shape[0])
        cols = jr.randint(k3, (n,), 0, shape[1])
        return model, jnp.stack([rows, cols], axis=1)
    if name == "mf_sensing":
        model = fs.models.MatrixFactorization((3, 4), depth=2, key=k2, init_scale=0.9)
        return model, jr.normal(k1, (9, 12))
    raise AssertionError(name)


CASES = [
    "linear", "deep1", "deep3", "diag", "relu_both", "relu_out", "leaky_ntk",
    "tanh_scaled", "row_activation", "mf_completion1", "mf_completion2",
    "mf_completion3", "mf_completion_few", "mf_sensing",
]


@pytest.mark.parametrize("name", CASES)
def test_batched_predictions_and_gradients_match_rows(name, getkey):
    model, X = _case(name, getkey())
    per_row = jax.vmap(model)(X)
    batched = model.predict_batch(X)
    assert batched.shape == (X.shape[0],)
    np.testing.assert_allclose(batched, per_row, rtol=1e-13, atol=1e-13 * float(jnp.max(jnp.abs(per_row))))

    c = jr.normal(getkey(), (X.shape[0],))
    g_row = eqx.filter_grad(lambda m: jnp.dot(c, jax.vmap(m)(X)))(model)
    g_batch = eqx.filter_grad(lambda m: jnp.dot(c, m.predict_batch(X)))(model)
    for a, b in zip(jax.tree_util.tree_leaves(g_batch), jax.tree_util.tree_leaves(g_row), strict=True):
        scale = float(jnp.max(jnp.abs(b)))
        assert scale > 0 or name == "relu_out"  # frozen hidden layer: zero gradient
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13 * max(scale, 1.0))


def test_frozen_hidden_layer_stays_frozen_batched(getkey):
    model, X = _case("relu_out", getkey())
    g = eqx.filter_grad(lambda m: jnp.sum(m.predict_batch(X)))(model)
    assert float(jnp.max(jnp.abs(g.hidden))) == 0.0
    assert float(jnp.max(jnp.abs(g.output))) > 0.0


def test_problem_predicts_and_differentiates_through_the_batch(getkey):
    model, X = _case("mf_completion3", getkey())
    y = jr.normal(getkey(), (X.shape[0],))
    problem = fs.Problem(model, fs.losses.Squared(), X, y)
    np.testing.assert_allclose(problem.predict(model), jax.vmap(model)(X), rtol=1e-13)
    # The gradient of the mean loss is (1/n) Jᵀ(f − y), with J from per-row grads.
    g = problem.gradient(model)
    resid = (jax.vmap(model)(X) - y) / X.shape[0]
    expect = eqx.filter_grad(lambda m: jnp.dot(resid, jax.vmap(m)(X)))(model)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(expect), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


class _UserModel(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return jnp.sin(jnp.dot(self.w, x))


def test_user_module_falls_back_to_vmap(getkey):
    X = jr.normal(getkey(), (6, 3))
    model = _UserModel(jr.normal(getkey(), (3,)))
    problem = fs.Problem(model, fs.losses.Squared(), X, jnp.zeros(6))
    np.testing.assert_array_equal(problem.predict(model), jax.vmap(model)(X))
    flow = fs.GradientFlow(problem)
    v = flow.vf(0.0, eqx.filter(model, eqx.is_inexact_array), None)
    expect = -jax.grad(lambda w: jnp.mean(0.5 * jax.vmap(_UserModel(w))(X) ** 2))(model.w)
    np.testing.assert_allclose(v.w, expect, rtol=1e-13)


class _WrongBatch(fs.models.AbstractModel):
    w: jax.Array
    homogeneity: int = eqx.field(static=True, default=1)

    def __call__(self, x):
        return jnp.dot(self.w, x)

    def predict_batch(self, X):
        return X @ jnp.stack([self.w, self.w], axis=1)  # (n, 2): one column too many


def test_a_wrong_predict_batch_is_refused_at_setup(getkey):
    X = jr.normal(getkey(), (5, 3))
    with pytest.raises(ValueError, match="predict_batch must return one prediction per row"):
        fs.Problem(_WrongBatch(jnp.ones(3)), fs.losses.Squared(), X, jnp.zeros(5))
