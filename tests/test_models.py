"""Models: declared homogeneity checked numerically, end-to-end maps against
independent numpy products, initialisation conventions, clear errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import pytest

import flowsolve as fs


def _models(key):
    k = jr.split(key, 6)
    return {
        "linear": (fs.models.Linear(4, key=k[0], init_scale=1.0), np.ones(4)),
        "deep": (fs.models.DeepLinear(4, depth=3, width=5, key=k[1], init_scale=0.7), np.ones(4)),
        "diag": (fs.models.DiagonalLinear(4, depth=3, init_scale=0.8, layer_scales=(1.0, 2.0, 0.5)), np.ones(4)),
        "relu_both": (fs.models.TwoLayer(4, 7, key=k[2]), np.ones(4)),
        "relu_out": (fs.models.TwoLayer(4, 7, key=k[3], train="output"), np.ones(4)),
        "leaky": (fs.models.TwoLayer(4, 7, key=k[4], activation="leaky_relu", scaling="ntk"), np.ones(4)),
        "mf": (fs.models.MatrixFactorization((3, 4), depth=3, key=k[5], init_scale=0.9), np.array([2, 1])),
    }


@pytest.mark.parametrize("name", ["linear", "deep", "diag", "relu_both", "leaky", "mf"])
def test_declared_homogeneity_holds(name, getkey):
    """f(cθ; x) = c^L f(θ; x) for c > 0, with L the declared degree."""
    model, x = _models(getkey())[name]
    x = jnp.asarray(x)
    L = model.homogeneity
    for c in (0.3, 2.5):
        scaled = jtu.tree_map(lambda p, c=c: c * p, model)
        np.testing.assert_allclose(scaled(x), c**L * model(x), rtol=1e-12)


def test_output_only_network_is_1_homogeneous_in_its_trained_layer(getkey):
    model, x = _models(getkey())["relu_out"]
    assert model.homogeneity == 1
    scaled = eqx.tree_at(lambda m: m.output, model, 3.0 * model.output)
    np.testing.assert_allclose(scaled(jnp.asarray(x)), 3.0 * model(jnp.asarray(x)), rtol=1e-12)
    # The hidden layer is frozen: its gradient is exactly zero.
    g = eqx.filter_grad(lambda m: m(jnp.asarray(x)))(model)
    assert float(jnp.max(jnp.abs(g.hidden))) == 0.0
    assert float(jnp.max(jnp.abs(g.output))) > 0.0


def test_non_homogeneous_activation_declares_none(getkey):
    model = fs.models.TwoLayer(3, 5, key=getkey(), activation="tanh")
    assert model.homogeneity is None
    with pytest.raises(NotImplementedError):
        model.conserved_quantities()


def test_deep_linear_end_to_end_is_the_layer_product(getkey):
    model = fs.models.DeepLinear(4, depth=3, width=5, key=getkey(), init_scale=0.7)
    W1, W2, W3 = (np.asarray(w) for w in model.layers)
    assert W1.shape == (5, 4) and W2.shape == (5, 5) and W3.shape == (1, 5)
    np.testing.assert_allclose(model.end_to_end(), (W3 @ W2 @ W1)[0], rtol=1e-13)
    x = np.arange(4.0)
    np.testing.assert_allclose(model(jnp.asarray(x)), (W3 @ W2 @ W1 @ x)[0], rtol=1e-13)


def test_diagonal_initialisation_and_predictor():
    alpha = np.array([0.1, 0.2, 0.3])
    model = fs.models.DiagonalLinear(3, depth=2, init_scale=alpha, layer_scales=(2.0, 0.5))
    np.testing.assert_allclose(model.u, [2 * alpha, 0.5 * alpha])
    np.testing.assert_allclose(model.v, [2 * alpha, 0.5 * alpha])
    np.testing.assert_allclose(model.end_to_end(), 0.0)  # u = v at initialisation
    u = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    v = np.array([[0.5, 1.0, 1.0], [1.0, 1.0, -1.0]])
    model = eqx.tree_at(lambda m: (m.u, m.v), model, (jnp.asarray(u), jnp.asarray(v)))
    np.testing.assert_allclose(model.end_to_end(), u[0] * u[1] - v[0] * v[1])
    np.testing.assert_allclose(model.conserved_quantities(), np.concatenate([u[1] ** 2 - u[0] ** 2, v[1] ** 2 - v[0] ** 2]))


def test_matrix_factorization_completion_and_sensing(getkey):
    model = fs.models.MatrixFactorization((3, 4), depth=3, widths=(6, 2), key=getkey(), init_scale=0.9)
    W1, W2, W3 = (np.asarray(w) for w in model.layers)
    assert (W1.shape, W2.shape, W3.shape) == ((6, 4), (2, 6), (3, 2))
    W = W3 @ W2 @ W1
    np.testing.assert_allclose(model.end_to_end(), W, rtol=1e-13)
    for i, j in [(0, 0), (2, 3), (1, 2)]:
        np.testing.assert_allclose(model(jnp.array([i, j])), W[i, j], rtol=1e-13)
    A = np.random.default_rng(0).normal(size=(3, 4))
    np.testing.assert_allclose(model(jnp.asarray(A.ravel())), np.sum(A * W), rtol=1e-13)


def test_balanced_two_layer_init(getkey):
    model = fs.models.TwoLayer(3, 10, key=getkey(), balanced=True, init_scale=0.5)
    np.testing.assert_allclose(np.linalg.norm(model.hidden, axis=1), 0.5, rtol=1e-14)
    np.testing.assert_allclose(np.abs(model.output), 0.5, rtol=1e-14)
    np.testing.assert_allclose(model.conserved_quantities(), 0.0, atol=1e-15)


def test_models_are_pytrees_of_arrays(getkey):
    """The model is its parameters: every leaf is an array, so it can be a diffrax state."""
    for name, (model, _) in _models(getkey()).items():
        assert all(eqx.is_array(x) for x in jtu.tree_leaves(model)), name


def test_user_module_works_with_problem(getkey):
    mlp = eqx.nn.MLP(3, "scalar", width_size=8, depth=2, key=getkey())
    X = np.random.default_rng(0).normal(size=(10, 3))
    problem = fs.Problem(mlp, fs.losses.Squared(), X, X[:, 0])
    assert problem.predict(mlp).shape == (10,)
    assert problem.homogeneity is None


def test_user_mlp_with_a_jitted_activation_solves_past_convergence():
    # An equinox MLP whose activation is a jitted function (`jnp.tanh`): a
    # non-array leaf that the metric checks once choked on. Squared loss with
    # n = 20 < p = 353, so `auto` ends on the Gauss–Newton W-method, with the Gram
    # matrix from per-sample gradients (no closed form). Reference: Rodas5P (the
    # exact Jacobian, order 5; checked against closed forms in test_rosenbrock.py)
    # at tolerances 100× tighter.
    from jax.flatten_util import ravel_pytree

    X = np.asarray(jr.normal(jr.key(0), (20, 3)))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1]
    mlp = eqx.nn.MLP(3, "scalar", 16, 2, activation=jnp.tanh, key=jr.key(1))
    flow = fs.GradientFlow(fs.Problem(mlp, fs.losses.Squared(), X, y))
    sol = fs.solve(flow, mlp, t1=1e6, metrics=("loss",))
    assert sol.success and sol.info["solver"] == "tsit5→ros34pw2-gn"
    ref = fs.solve(flow, mlp, t1=1e6, metrics=("loss",), solver="rodas5p", rtol=1e-10, atol=1e-12)
    a, b = (ravel_pytree(eqx.filter(s.final, eqx.is_inexact_array))[0] for s in (sol, ref))
    # Measured 6.8e-8: rtol 1e-8 accumulated over ~1 300 steps of a flow that fits
    # the data (loss ~1e-32) and whose limit depends on the path (p > n).
    err = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    assert err <= 1e-6, err
    assert float(sol.metrics["loss"][-1]) < 1e-20


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda k: fs.models.DeepLinear(3, depth=0, key=k), "depth"),
        (lambda k: fs.models.DiagonalLinear(3, depth=1), "depth"),
        (lambda k: fs.models.DiagonalLinear(3, init_scale=np.ones(4)), "init_scale"),
        (lambda k: fs.models.DiagonalLinear(3, layer_scales=(1.0, 2.0, 3.0)), "layer_scales"),
        (lambda k: fs.models.TwoLayer(3, 4, key=k, activation="swishy"), "Unknown activation"),
        (lambda k: fs.models.TwoLayer(3, 4, key=k, train="hidden"), "train"),
        (lambda k: fs.models.TwoLayer(3, 4, key=k, scaling="huge"), "scaling"),
        (lambda k: fs.models.Linear(3, init_scale=1.0), "key"),
        (lambda k: fs.models.Linear(3, weight=np.ones(2)), "shape"),
        (lambda k: fs.models.MatrixFactorization((3, 3), depth=3, widths=(2,), key=k), "widths"),
        (lambda k: fs.models.DiagonalLinear(3, init_scale=float("nan")), "finite"),
        (lambda k: fs.models.TwoLayer(3, 4, key=k, scaling=True), "scaling"),
        (lambda k: fs.models.Linear(3, key=k, init_scale=-1.0), "init_scale"),
        (lambda k: fs.models.DeepLinear(3, depth=2, key=k, init_scale=0.0), "saddle"),
        (lambda k: fs.models.MatrixFactorization((3, 3), key=k, init_scale=0.0), "saddle"),
        (lambda k: fs.models.TwoLayer(3, 4, key=k, init_scale=float("inf")), "finite"),
    ],
)
def test_bad_model_arguments(make, match, getkey):
    with pytest.raises(ValueError, match=match):
        make(getkey())


def test_model_output_must_be_scalar(getkey):
    mlp = eqx.nn.MLP(3, 2, width_size=4, depth=1, key=getkey())
    with pytest.raises(ValueError, match="scalar"):
        fs.Problem(mlp, fs.losses.Squared(), np.ones((5, 3)), np.ones(5))


@pytest.mark.parametrize(
    "X, match",
    [
        # ±1 sensing matrices are often int64: read as index pairs, they predicted
        # −0.48 where ⟨A, W⟩ = −7.53.
        (np.ones((4, 9), dtype=np.int64), "astype\\(float\\)"),
        # Out of range: JAX's gather clamped or wrapped them, and the solve "fitted"
        # other entries.
        (np.array([[0, 0], [5, 1]]), r"\(5, 1\).*outside the 3×3"),
        (np.array([[0, 0], [-1, 1]]), "outside"),
        (np.array([[0.0, 0.0], [1.0, 1.0]]), "must be integers"),
    ],
)
def test_matrix_factorization_checks_its_rows(X, match, getkey):
    model = fs.models.MatrixFactorization((3, 3), key=getkey())
    with pytest.raises(ValueError, match=match):
        fs.Problem(model, fs.losses.Squared(), X, np.ones(len(X)))


def test_problem_messages_for_one_dimensional_x_and_string_labels():
    with pytest.raises(ValueError, match=r"reshape\(-1, 1\)"):
        fs.Problem(fs.models.Linear(3), fs.losses.Squared(), np.ones(6), np.ones(6))
    with pytest.raises(ValueError, match="numeric"):
        fs.Problem(fs.models.Linear(3), fs.losses.Logistic(), np.ones((2, 3)), np.array(["a", "b"]))


def test_model_input_shape_mismatch():
    with pytest.raises(ValueError, match="cannot be applied"):
        fs.Problem(fs.models.Linear(3), fs.losses.Squared(), np.ones((5, 4)), np.ones(5))


def test_grad_of_all_models_is_finite_at_zero_weights():
    """Safe norms and products: a zero start gives a zero, finite gradient."""
    model = fs.models.DiagonalLinear(3, depth=3, init_scale=0.0)
    g = jax.grad(lambda u: jnp.sum(eqx.tree_at(lambda m: m.u, model, u).end_to_end()))(model.u)
    assert np.all(np.isfinite(g))


def _jacobian_gram(model, X):
    """J Jᵀ from reverse-mode autodiff: the reference for the closed forms."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    J = jax.jacrev(lambda p: eqx.combine(p, static).predict_batch(X))(params)
    J = jnp.concatenate([j.reshape(X.shape[0], -1) for j in jax.tree_util.tree_leaves(J)], axis=1)
    return J @ J.T


@pytest.mark.parametrize("case", ["linear", "diagonal2", "diagonal3-zeros", "deep1", "deep2", "deep3"])
def test_linear_family_gram_is_the_tangent_kernel(case, getkey):
    # The closed forms against J Jᵀ from autodiff, at random (not initial) weights;
    # the depth-3 diagonal network has exact zeros in u (the leave-one-out products
    # must not divide).
    X = jr.normal(getkey(), (6, 4))
    if case == "linear":
        model = fs.models.Linear(4, key=getkey(), init_scale=1.0)
    elif case.startswith("diagonal"):
        depth = int(case[8])
        model = fs.models.DiagonalLinear(4, depth=depth)
        u = jr.normal(getkey(), (depth, 4))
        if case.endswith("zeros"):
            u = u.at[1, 2].set(0.0).at[0, 0].set(0.0)
        model = eqx.tree_at(lambda m: (m.u, m.v), model, (u, jr.normal(getkey(), (depth, 4))))
    else:
        model = fs.models.DeepLinear(4, depth=int(case[4]), width=3, key=getkey(), init_scale=0.8)
    ref = _jacobian_gram(model, X)
    # Sums of a few O(1)–O(10) products: rounding is ~1e-15 relative.
    assert jnp.max(jnp.abs(model.gram(X) - ref)) <= 1e-12 * jnp.max(jnp.abs(ref))


@pytest.mark.parametrize("depth, widths", [(1, None), (2, [5]), (3, [4, 6])])
def test_matrix_factorization_gram_is_the_tangent_kernel(depth, widths, getkey):
    # The closed-form Gram matrix against J Jᵀ from reverse-mode autodiff, for
    # completion (index pairs) and sensing (measurement rows).
    model = fs.models.MatrixFactorization((7, 5), depth=depth, widths=widths, key=getkey(), init_scale=0.7)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    for X in (jnp.array([[0, 0], [3, 4], [6, 2], [1, 1], [3, 0], [3, 4]]),
              jr.normal(getkey(), (4, 35))):
        J = jax.jacrev(lambda p, X=X: eqx.combine(p, static).predict_batch(X))(params)
        J = jnp.concatenate([j.reshape(X.shape[0], -1) for j in jax.tree_util.tree_leaves(J)], axis=1)
        ref = J @ J.T
        # Sums of a few O(10) products: rounding is ~1e-15 relative.
        assert jnp.max(jnp.abs(model.gram(X) - ref)) <= 1e-12 * jnp.max(jnp.abs(ref))
