"""Layers against their own equations: finite differences, closed forms, the BN properties from the paper."""

from __future__ import annotations

import numpy as np
import pytest

from tests.training.conftest import numerical_gradient, rel_error
from training.layers import (
    BatchNorm,
    Linear,
    ReLU,
    Sigmoid,
    Tanh,
    batchnorm_backward,
    batchnorm_forward,
    mean_squared_error,
    softmax,
    softmax_cross_entropy,
)

TOL = 1e-6


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def check_layer(layer, x: np.ndarray, params: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Loss = sum(y * w) for a fixed random w: analytic dx and parameter grads vs central differences."""
    y = layer.forward(x, training=True)
    w = rng.standard_normal(y.shape)

    def loss() -> float:
        return float((layer.forward(x, training=True) * w).sum())

    layer.forward(x, training=True)
    dx = layer.backward(w)
    grads = {k: v.copy() for k, v in layer.grads().items()}
    assert rel_error(dx, numerical_gradient(loss, x)) < TOL
    for name, p in params.items():
        assert rel_error(grads[name], numerical_gradient(loss, p)) < TOL, name


def test_linear_gradients(rng):
    lin = Linear(5, 4, bias=True, rng=rng, dtype=np.float64)
    lin.b[:] = rng.standard_normal(4)
    check_layer(lin, rng.standard_normal((6, 5)), {"W": lin.W, "b": lin.b}, rng)


def test_batchnorm_gradients(rng):
    bn = BatchNorm(4, dtype=np.float64)
    bn.gamma[:] = rng.standard_normal(4)
    bn.beta[:] = rng.standard_normal(4)
    x = rng.standard_normal((7, 4)) * 3 + 1
    check_layer(bn, x, {"gamma": bn.gamma, "beta": bn.beta}, rng)
    # the attributes named by the interface hold the same gradients
    y = bn.forward(x, training=True)
    bn.backward(np.ones_like(y))
    assert bn.dgamma.shape == (4,) and np.allclose(bn.dbeta, 7.0)


def test_batchnorm_function_gradients_and_purity(rng):
    """The pure pair on its own, float64: analytic (dx, dgamma, dbeta) vs central differences; no input changes."""
    x = rng.standard_normal((6, 3)) * 2 - 1
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    w = rng.standard_normal((6, 3))
    before = [a.copy() for a in (x, gamma, beta)]

    def loss() -> float:
        return float((batchnorm_forward(x, gamma, beta, 1e-5, training=True)[0] * w).sum())

    y, cache = batchnorm_forward(x, gamma, beta, 1e-5, training=True)
    assert cache is not None
    assert all(np.array_equal(a, b) for a, b in zip(before, (x, gamma, beta)))
    np.testing.assert_allclose(cache.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cache.var, x.var(0), rtol=1e-12)  # biased
    np.testing.assert_allclose(y, gamma * (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) + beta, rtol=1e-12)
    dx, dgamma, dbeta = batchnorm_backward(w, gamma, cache)
    assert rel_error(dx, numerical_gradient(loss, x)) < TOL
    assert rel_error(dgamma, numerical_gradient(loss, gamma)) < TOL
    assert rel_error(dbeta, numerical_gradient(loss, beta)) < TOL
    # test mode: the closed form with the given statistics, no cache; one row in training mode gives beta
    mean, var = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    y_test, none = batchnorm_forward(x, gamma, beta, 1e-5, training=False, running_mean=mean, running_var=var)
    assert none is None
    np.testing.assert_allclose(y_test, gamma * (x - mean) / np.sqrt(var + 1e-5) + beta, rtol=1e-12)
    np.testing.assert_allclose(batchnorm_forward(x[:1], gamma, beta, 1e-5, training=True)[0], beta[None])
    with pytest.raises(ValueError, match="running mean and variance"):
        batchnorm_forward(x, gamma, beta, 1e-5, training=False)


@pytest.mark.parametrize("act", [ReLU, Sigmoid, Tanh])
def test_activation_gradients(act, rng):
    x = rng.standard_normal((5, 3)) * 2
    x[np.abs(x) < 1e-3] = 0.5  # keep away from ReLU's kink, where the derivative is undefined
    check_layer(act(), x, {}, rng)


def test_sigmoid_is_stable_for_large_inputs():
    y = Sigmoid().forward(np.array([[-1000.0, 0.0, 1000.0]]), training=False)
    assert np.allclose(y, [[0.0, 0.5, 1.0]])


def test_softmax_cross_entropy_gradient_and_value(rng):
    logits = rng.standard_normal((6, 4))
    y = rng.integers(0, 4, 6)
    loss, d = softmax_cross_entropy(logits, y)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.log(p[np.arange(6), y]).mean(), rel=1e-12)
    num = numerical_gradient(lambda: softmax_cross_entropy(logits, y)[0], logits)
    assert rel_error(d, num) < TOL
    assert np.allclose(softmax(logits), p)


def test_mse_gradient(rng):
    pred, target = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    loss, d = mean_squared_error(pred, target)
    assert loss == pytest.approx(((pred - target) ** 2).mean())
    assert rel_error(d, numerical_gradient(lambda: mean_squared_error(pred, target)[0], pred)) < TOL


def test_batchnorm_training_normalizes_with_batch_statistics(rng):
    bn = BatchNorm(3, dtype=np.float64)
    x = rng.standard_normal((50, 3)) * [1, 5, 0.1] + [3, -2, 7]
    y = bn.forward(x, training=True)
    assert np.allclose(y.mean(0), 0, atol=1e-12)
    assert np.allclose(y.var(0), x.var(0) / (x.var(0) + bn.eps))  # biased variance, eps inside the root


def test_identity_property(rng):
    """gamma = sqrt(var + eps), beta = mu recovers the input (Ioffe & Szegedy 2015, section 3)."""
    bn = BatchNorm(4, dtype=np.float64)
    x = rng.standard_normal((16, 4)) * 2 + 5
    bn.gamma[:] = np.sqrt(x.var(0) + bn.eps)
    bn.beta[:] = x.mean(0)
    assert np.allclose(bn.forward(x, training=True), x, atol=1e-12)


def test_ewma_closed_form_and_unbiased_variance(rng):
    """After k steps: running = m^k * init + sum_i (1-m) m^(k-1-i) stat_i, stat = unbiased batch variance."""
    m, k, n = 0.8, 5, 6
    bn = BatchNorm(3, momentum=m, dtype=np.float64)
    batches = [rng.standard_normal((n, 3)) * (i + 1) + i for i in range(k)]
    for b in batches:
        bn.forward(b, training=True)
    weights = [(1 - m) * m ** (k - 1 - i) for i in range(k)]
    mean = m**k * 0.0 + sum(w * b.mean(0) for w, b in zip(weights, batches))
    var = m**k * 1.0 + sum(w * b.var(0, ddof=1) for w, b in zip(weights, batches))
    assert np.allclose(bn.running_mean, mean, rtol=1e-12)
    assert np.allclose(bn.running_var, var, rtol=1e-12)


def test_running_variance_is_unbiased(rng):
    bn = BatchNorm(2, momentum=0.0, dtype=np.float64)  # momentum 0: running = the last batch's statistic
    x = rng.standard_normal((4, 2))
    bn.forward(x, training=True)
    assert np.allclose(bn.running_var, x.var(0, ddof=1))
    assert not np.allclose(bn.running_var, x.var(0))


def test_batch_of_one_row_is_refused():
    with pytest.raises(ValueError, match="at least 2 rows"):
        BatchNorm(3).forward(np.ones((1, 3), dtype=np.float32), training=True)


def test_test_mode_is_row_independent_and_leaves_statistics_alone(rng):
    bn = BatchNorm(3, dtype=np.float64)
    for _ in range(3):
        bn.forward(rng.standard_normal((8, 3)), training=True)
    before = (bn.running_mean.copy(), bn.running_var.copy())
    x = rng.standard_normal((10, 3))
    batch = bn.forward(x, training=False)
    alone = np.vstack([bn.forward(x[i : i + 1], training=False) for i in range(10)])
    assert np.array_equal(batch, alone)
    assert np.array_equal(before[0], bn.running_mean) and np.array_equal(before[1], bn.running_var)
    # and test mode is the closed form with the running statistics
    expect = bn.gamma * (x - bn.running_mean) / np.sqrt(bn.running_var + bn.eps) + bn.beta
    assert np.allclose(batch, expect)


def test_bad_momentum_is_refused():
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(3, momentum=1.0)
