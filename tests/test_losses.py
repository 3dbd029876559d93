"""Losses against 60-digit references from mpmath (independent arbitrary precision)."""

import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

import flowsolve as fs


mpmath.mp.dps = 60

# Margins from deep in the misclassified region to far past float64's exp range
# (e^-745 underflows): the log-domain quantities must stay finite and accurate.
MARGINS = np.array([-800.0, -30.0, -1.0, 0.0, 1e-3, 1.0, 20.0, 36.0, 40.0, 700.0, 746.0, 1e4, 1e5])


def _mp_logistic_log(u):
    return float(mpmath.log(mpmath.log1p(mpmath.exp(-mpmath.mpf(u)))))


def _mp_logistic_scaled_derivative(u, y, log_scale):
    # e^{log_scale} · dℓ/df = -y e^{log_scale} σ(-u)
    u = mpmath.mpf(u)
    return float(-y * mpmath.exp(log_scale) / (1 + mpmath.exp(u)))


def test_logistic_log_loss_matches_mpmath():
    loss = fs.losses.Logistic()
    y = np.ones_like(MARGINS)
    got = np.asarray(loss.log_per_sample(jnp.asarray(MARGINS), jnp.asarray(y)))
    want = np.array([_mp_logistic_log(u) for u in MARGINS])
    assert np.all(np.isfinite(got))
    # 1e-14 relative: a few ulps, the accuracy of log/log1p in float64.
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-300)


def test_logistic_negative_labels_flip_the_margin():
    loss = fs.losses.Logistic()
    f = jnp.asarray(MARGINS)
    np.testing.assert_allclose(
        loss.log_per_sample(-f, -jnp.ones_like(f)), loss.log_per_sample(f, jnp.ones_like(f)), rtol=0, atol=0
    )


def test_mean_log_loss_far_below_float64():
    """log L for margins 1e4 and 1e4 + 1: L ≈ e^-1e4 underflows; log L must not."""
    loss = fs.losses.Logistic()
    f = jnp.array([1e4, 1e4 + 1.0])
    y = jnp.ones(2)
    got = float(loss.log_loss(f, y))
    terms = [mpmath.log1p(mpmath.exp(-mpmath.mpf(u))) for u in (1e4, 1e4 + 1.0)]
    want = float(mpmath.log(sum(terms) / 2))
    assert got == pytest.approx(want, rel=1e-15)
    assert float(loss.mean(f, y)) == 0.0  # the plain loss does underflow: use log_loss


@pytest.mark.parametrize("log_scale", [0.0, 50.0, 800.0, 1e4])
def test_logistic_scaled_derivative_matches_mpmath(log_scale):
    """e^s ℓ'(u) at the log clock: neither e^s nor e^-u is representable past 709."""
    loss = fs.losses.Logistic()
    u = log_scale + np.array([-5.0, 0.0, 3.0, 30.0])  # margins ≈ log t, as in the flow
    y = np.array([1.0, -1.0, 1.0, -1.0])
    got = np.asarray(loss.scaled_derivative(jnp.asarray(y * u), jnp.asarray(y), log_scale))
    want = np.array([_mp_logistic_scaled_derivative(ui, yi, log_scale) for ui, yi in zip(u, y)])
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-13)


def test_exponential_loss_exact():
    loss = fs.losses.Exponential()
    f = jnp.array([1e4, -2.0, 0.5])
    y = jnp.array([1.0, 1.0, -1.0])
    np.testing.assert_array_equal(loss.log_per_sample(f, y), -(y * f))
    got = float(loss.log_loss(f, y))
    want = float(mpmath.log(sum(mpmath.exp(-mpmath.mpf(v)) for v in (1e4, -2.0, -0.5)) / 3))
    assert got == pytest.approx(want, rel=1e-15)
    got_d = np.asarray(loss.scaled_derivative(jnp.array([1e4]), jnp.array([1.0]), 1e4 - 3.0))
    np.testing.assert_allclose(got_d, [-np.exp(-3.0)], rtol=1e-14)


def test_squared_loss():
    loss = fs.losses.Squared()
    f = jnp.array([1.0, 2.0, -3.0])
    y = jnp.array([0.5, 2.0, 1.0])
    np.testing.assert_allclose(loss.per_sample(f, y), [0.125, 0.0, 8.0], rtol=1e-15)
    assert float(loss.mean(f, y)) == pytest.approx((0.125 + 8.0) / 3, rel=1e-15)
    assert float(loss.log_loss(f, y)) == pytest.approx(np.log((0.125 + 8.0) / 3), rel=1e-14)
    np.testing.assert_allclose(loss.derivative(f, y), [0.5, 0.0, -4.0], rtol=1e-15)
    # Huge scale with a tiny residual: e^800 · 1e-340 = e^800 · ... finite, no overflow.
    r = 1e-300
    got = float(loss.scaled_derivative(jnp.array([r]), jnp.array([0.0]), 800.0)[0])
    assert got == pytest.approx(float(mpmath.mpf(r) * mpmath.exp(800)), rel=1e-12)


@pytest.mark.parametrize("loss", [fs.losses.Logistic(), fs.losses.Exponential()])
def test_classification_labels_must_be_pm1(loss):
    X = np.ones((3, 2))
    with pytest.raises(ValueError, match=r"\{-1, \+1\}"):
        fs.Problem(fs.models.Linear(2), loss, X, np.array([0.0, 1.0, 1.0]))


def test_loss_class_instead_of_instance():
    with pytest.raises(ValueError, match="Logistic\\(\\)"):
        fs.Problem(fs.models.Linear(2), fs.losses.Logistic, np.ones((3, 2)), np.ones(3))
