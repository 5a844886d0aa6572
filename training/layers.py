"""Layers of the MLP, each with its forward and backward side by side, in numpy from the equations.

Batch Norm's maths is one pure pair, :func:`batchnorm_forward` / :func:`batchnorm_backward`, that the
:class:`BatchNorm` layer, PreciseBN (``MLP.precise_statistics``) and the experiments all call.

Every layer has ``forward(x, training)`` and ``backward(dy) -> dx``. Learned parameters live in
``params()`` and their gradients in ``grads()`` (same keys); running statistics are *buffers*
(``buffers()``), never parameters. ``training`` is always an explicit argument: no hidden mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Array = np.ndarray


class Layer:
    """Base class: a layer without parameters or buffers."""

    def forward(self, x: Array, training: bool) -> Array:
        raise NotImplementedError

    def backward(self, dy: Array) -> Array:
        raise NotImplementedError

    def params(self) -> dict[str, Array]:
        return {}

    def grads(self) -> dict[str, Array]:
        return {}

    def buffers(self) -> dict[str, Array]:
        return {}


class Linear(Layer):
    """``y = x @ W (+ b)`` with ``W`` of shape ``(in, out)``.

    ``init="he"`` (ReLU) draws ``W ~ N(0, 2 / in)``; ``init="xavier"`` (sigmoid, tanh, output layer) draws
    ``W ~ N(0, 2 / (in + out))`` (He et al. 2015; Glorot & Bengio 2010). The bias starts at zero.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        bias: bool,
        rng: np.random.Generator,
        init: str = "he",
        dtype: np.dtype | type = np.float32,
    ) -> None:
        if init == "he":
            scale = np.sqrt(2.0 / n_in)
        elif init == "xavier":
            scale = np.sqrt(2.0 / (n_in + n_out))
        else:
            raise ValueError(f"init must be 'he' or 'xavier', got {init!r}")
        self.W = (rng.standard_normal((n_in, n_out)) * scale).astype(dtype)  # (in, out)
        self.b = np.zeros(n_out, dtype=dtype) if bias else None  # (out,)
        self.dW = np.zeros_like(self.W)
        self.db = np.zeros_like(self.b) if self.b is not None else None
        self._x: Array | None = None

    def forward(self, x: Array, training: bool) -> Array:
        self._x = x if training else None
        y = x @ self.W  # (N, out)
        if self.b is not None:
            y += self.b
        return y

    def backward(self, dy: Array, input_grad: bool = True) -> Array | None:
        """Leaves ``dW`` (and ``db``); returns ``dx``, or None when ``input_grad`` is False (first layer)."""
        if self._x is None:
            raise RuntimeError("Linear.backward needs a forward pass in training mode first")
        self.dW = self._x.T @ dy  # (in, out)
        if self.b is not None:
            self.db = dy.sum(axis=0)  # (out,)
        return dy @ self.W.T if input_grad else None  # (N, in)

    def params(self) -> dict[str, Array]:
        return {"W": self.W} if self.b is None else {"W": self.W, "b": self.b}

    def grads(self) -> dict[str, Array]:
        return {"W": self.dW} if self.db is None else {"W": self.dW, "b": self.db}


@dataclass(frozen=True)
class BNCache:
    """What :func:`batchnorm_backward` needs from a training-mode :func:`batchnorm_forward`."""

    xhat: Array  # (N, D) the normalized input
    inv_std: Array  # (D,) 1 / sqrt(var + eps)
    mean: Array  # (D,) the batch mean
    var: Array  # (D,) the biased batch variance (divided by N)


def batchnorm_forward(
    x: Array,
    gamma: Array,
    beta: Array,
    eps: float,
    training: bool,
    running_mean: Array | None = None,
    running_var: Array | None = None,
) -> tuple[Array, BNCache | None]:
    """Batch Normalization of a ``(N, D)`` batch, ``y = gamma * (x - mean) / sqrt(var + eps) + beta``: the one
    place bnserve writes it (Ioffe & Szegedy 2015, Algorithm 1). Pure: nothing is updated.

    ``training=True``: ``mean`` and the biased ``var`` are the batch's own; returns ``y`` and the cache of
    :func:`batchnorm_backward` (which also holds the batch statistics). One row is allowed here: its variance
    is 0, so ``y = beta`` whatever the row. ``training=False``: the given running statistics, i.e. the fixed
    affine map per feature ``x * s + (beta - mean * s)`` that export folds into the weights; no cache.
    """
    if training:
        mu = x.mean(axis=0)  # (D,)
        var = x.var(axis=0)  # (D,) biased: divided by N
        inv_std = 1.0 / np.sqrt(var + eps)  # (D,)
        xhat = (x - mu) * inv_std  # (N, D)
        return gamma * xhat + beta, BNCache(xhat, inv_std, mu, var)
    if running_mean is None or running_var is None:
        raise ValueError("batchnorm_forward at test time needs the running mean and variance")
    scale = gamma / np.sqrt(running_var + eps)  # (D,)
    return (x - running_mean) * scale + beta, None


def batchnorm_backward(dy: Array, gamma: Array, cache: BNCache) -> tuple[Array, Array, Array]:
    """``(dx, dgamma, dbeta)`` of :func:`batchnorm_forward` in training mode, through the batch statistics.

    ``dbeta = sum(dy)``, ``dgamma = sum(dy * xhat)`` and, reusing both,
    ``dx = gamma * inv_std / N * (N dy - dbeta - xhat * dgamma)`` (cs231n's compact form).
    """
    xhat = cache.xhat
    n = dy.shape[0]
    dbeta = dy.sum(axis=0)  # (D,)
    dgamma = (dy * xhat).sum(axis=0)  # (D,)
    dx = dy * n  # (N, D)
    dx -= dbeta
    dx -= xhat * dgamma
    dx *= gamma * cache.inv_std / n
    return dx, dgamma, dbeta


class BatchNorm(Layer):
    """The Batch Normalization layer: :func:`batchnorm_forward` with learned ``gamma``/``beta`` and running
    statistics.

    Training normalizes with the batch's statistics; test time with the running statistics, so a row's output
    never depends on the other rows of its batch. Running statistics are an exponentially weighted moving
    average updated at each training step::

        running_mean = momentum * running_mean + (1 - momentum) * mu
        running_var  = momentum * running_var  + (1 - momentum) * var * N / (N - 1)

    i.e. the convention of Keras and of ONNX's ``BatchNormalization`` (``momentum`` is the weight kept by the
    old value), with the *unbiased* variance fed to the estimate as in Algorithm 2 of the paper and in
    PyTorch. PyTorch's ``momentum`` is the weight of the *new* value: PyTorch ``momentum=0.1`` is ours
    ``0.9``; in general ``ours = 1 - pytorch``.

    ``gamma``/``beta`` are learned parameters; ``running_mean``/``running_var`` are buffers.
    """

    def __init__(
        self, num_features: int, momentum: float = 0.9, eps: float = 1e-5, dtype: np.dtype | type = np.float32
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.num_features = num_features
        self.momentum = momentum
        self.eps = eps
        self.gamma = np.ones(num_features, dtype=dtype)
        self.beta = np.zeros(num_features, dtype=dtype)
        self.running_mean = np.zeros(num_features, dtype=dtype)
        self.running_var = np.ones(num_features, dtype=dtype)
        self.dgamma = np.zeros_like(self.gamma)
        self.dbeta = np.zeros_like(self.beta)
        self.cache: BNCache | None = None  # left by the last training-mode forward, for backward

    def forward(self, x: Array, training: bool) -> Array:
        if not training:
            y, _ = batchnorm_forward(
                x, self.gamma, self.beta, self.eps, False, self.running_mean, self.running_var
            )
            return y
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm expects shape (N, {self.num_features}), got {x.shape}")
        n = x.shape[0]
        if n < 2:
            raise ValueError(
                "BatchNorm in training mode needs at least 2 rows per batch: the variance of one row is undefined"
            )
        y, cache = batchnorm_forward(x, self.gamma, self.beta, self.eps, True)
        assert cache is not None
        self.cache = cache
        m = self.momentum
        self.running_mean *= m
        self.running_mean += (1.0 - m) * cache.mean
        self.running_var *= m
        self.running_var += (1.0 - m) * cache.var * (n / (n - 1))
        return y

    def backward(self, dy: Array) -> Array:
        if self.cache is None:
            raise RuntimeError("BatchNorm.backward needs a forward pass in training mode first")
        dx, self.dgamma, self.dbeta = batchnorm_backward(dy, self.gamma, self.cache)
        return dx

    def params(self) -> dict[str, Array]:
        return {"gamma": self.gamma, "beta": self.beta}

    def grads(self) -> dict[str, Array]:
        return {"gamma": self.dgamma, "beta": self.dbeta}

    def buffers(self) -> dict[str, Array]:
        return {"running_mean": self.running_mean, "running_var": self.running_var}


class ReLU(Layer):
    """``max(0, x)``."""

    def __init__(self) -> None:
        self._mask: Array | None = None

    def forward(self, x: Array, training: bool) -> Array:
        if training:
            self._mask = x > 0
        return np.maximum(x, 0)

    def backward(self, dy: Array) -> Array:
        assert self._mask is not None, "ReLU.backward needs a forward pass in training mode first"
        return dy * self._mask


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))``, computed without overflow."""

    def __init__(self) -> None:
        self._y: Array | None = None

    def forward(self, x: Array, training: bool) -> Array:
        # exp of a non-positive number only: no overflow warning for large |x|.
        e = np.exp(-np.abs(x))
        y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
        self._y = y if training else None
        return y

    def backward(self, dy: Array) -> Array:
        assert self._y is not None, "Sigmoid.backward needs a forward pass in training mode first"
        return dy * self._y * (1.0 - self._y)


class Tanh(Layer):
    """``tanh(x)``."""

    def __init__(self) -> None:
        self._y: Array | None = None

    def forward(self, x: Array, training: bool) -> Array:
        y = np.tanh(x)
        self._y = y if training else None
        return y

    def backward(self, dy: Array) -> Array:
        assert self._y is not None, "Tanh.backward needs a forward pass in training mode first"
        return dy * (1.0 - self._y * self._y)


ACTIVATIONS: dict[str, type[Layer]] = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}


def softmax(logits: Array) -> Array:
    """Row-wise softmax, shifted by the row maximum for stability."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits: Array, y: Array, weights: Array | None = None) -> tuple[float, Array]:
    """Mean cross-entropy of integer labels ``y`` under ``softmax(logits)``, and its gradient wrt the logits.

    With per-row ``weights`` (``(N,)``, e.g. balanced class weights) the loss is ``mean(weights * ce)``.
    """
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # (N, C)
    ce = -log_p[np.arange(n), y]  # (N,)
    dlogits = np.exp(log_p)
    dlogits[np.arange(n), y] -= 1.0
    if weights is None:
        return float(ce.mean()), dlogits / n
    w = np.asarray(weights, dtype=logits.dtype)
    return float((w * ce).mean()), dlogits * (w[:, None] / n)


def mean_squared_error(pred: Array, target: Array) -> tuple[float, Array]:
    """``mean((pred - target)^2)`` over all entries, and its gradient wrt ``pred``."""
    diff = pred - target.reshape(pred.shape)
    return float((diff * diff).mean()), (2.0 / diff.size) * diff
