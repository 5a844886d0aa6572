"""Layers of the MLP, each with its forward and backward side by side, in numpy from the equations.

Every layer has ``forward(x, training)`` and ``backward(dy) -> dx``. Learned parameters live in
``params()`` and their gradients in ``grads()`` (same keys); running statistics are *buffers*
(``buffers()``), never parameters. ``training`` is always an explicit argument: no hidden mode.
"""

from __future__ import annotations

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


class BatchNorm(Layer):
    """Batch Normalization over the features of a ``(N, D)`` batch (Ioffe & Szegedy 2015, Algorithm 1).

    Training: ``y = gamma * (x - mu) / sqrt(var + eps) + beta`` with the batch mean ``mu`` and the *biased*
    batch variance ``var`` (divided by N). Test: the same with the running statistics instead, so a row's
    output never depends on the other rows of its batch.

    Running statistics are an exponentially weighted moving average updated at each training step::

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
        self._xhat: Array | None = None
        self._inv_std: Array | None = None

    def batch_statistics(self, x: Array) -> tuple[Array, Array]:
        """Mean and biased variance of a ``(N, D)`` batch, per feature; rejects a batch of one row."""
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm expects shape (N, {self.num_features}), got {x.shape}")
        if x.shape[0] < 2:
            raise ValueError(
                "BatchNorm in training mode needs at least 2 rows per batch: the variance of one row is undefined"
            )
        mu = x.mean(axis=0)  # (D,)
        var = x.var(axis=0)  # (D,) biased: divided by N
        return mu, var

    def forward(self, x: Array, training: bool) -> Array:
        if not training:
            scale = self.gamma / np.sqrt(self.running_var + self.eps)  # (D,)
            return (x - self.running_mean) * scale + self.beta
        n = x.shape[0]
        mu, var = self.batch_statistics(x)
        inv_std = 1.0 / np.sqrt(var + self.eps)  # (D,)
        xhat = (x - mu) * inv_std  # (N, D)
        self._xhat, self._inv_std = xhat, inv_std
        m = self.momentum
        self.running_mean *= m
        self.running_mean += (1.0 - m) * mu
        self.running_var *= m
        self.running_var += (1.0 - m) * var * (n / (n - 1))
        return self.gamma * xhat + self.beta

    def backward(self, dy: Array) -> Array:
        """Closed-form gradient through the batch statistics.

        ``dbeta = sum(dy)``, ``dgamma = sum(dy * xhat)`` and, reusing both,
        ``dx = gamma * inv_std / N * (N dy - dbeta - xhat * dgamma)`` (cs231n's compact form).
        """
        if self._xhat is None or self._inv_std is None:
            raise RuntimeError("BatchNorm.backward needs a forward pass in training mode first")
        xhat = self._xhat
        n = dy.shape[0]
        self.dbeta = dy.sum(axis=0)  # (D,)
        self.dgamma = (dy * xhat).sum(axis=0)  # (D,)
        dx = dy * n  # (N, D)
        dx -= self.dbeta
        dx -= xhat * self.dgamma
        dx *= self.gamma * self._inv_std / n
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


def softmax_cross_entropy(logits: Array, y: Array) -> tuple[float, Array]:
    """Mean cross-entropy of integer labels ``y`` under ``softmax(logits)``, and its gradient wrt the logits."""
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # (N, C)
    loss = -float(log_p[np.arange(n), y].mean())
    dlogits = np.exp(log_p)
    dlogits[np.arange(n), y] -= 1.0
    return loss, dlogits / n


def mean_squared_error(pred: Array, target: Array) -> tuple[float, Array]:
    """``mean((pred - target)^2)`` over all entries, and its gradient wrt ``pred``."""
    diff = pred - target.reshape(pred.shape)
    return float((diff * diff).mean()), (2.0 / diff.size) * diff
