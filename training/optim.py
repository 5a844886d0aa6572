"""Optimizers (SGD with momentum, Adam) and learning-rate schedules.

Weight decay applies to weight matrices only, never to BN's gamma/beta nor to biases (a decayed gamma or
bias changes the function, not its complexity). Parameters are updated in place.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from training.network import MLP


def decays(name: str) -> bool:
    """Whether weight decay applies to the parameter called ``name`` (only Linear weights ``...W``)."""
    return name.endswith(".W")


class Optimizer:
    """Base: holds the learning rate, updated by a schedule between epochs."""

    def __init__(self, lr: float, weight_decay: float = 0.0) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        self.lr = lr
        self.weight_decay = weight_decay
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def step(self, net: MLP) -> None:
        for name, p, g in net.parameters():
            self.update(name, p, g)

    def update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """SGD with (heavy-ball) momentum: ``v = momentum * v + g + wd * p``; ``p -= lr * v`` (L2 in the gradient)."""

    def __init__(self, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        self.momentum = momentum

    def update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        if self.weight_decay and decays(name):
            g = g + self.weight_decay * p
        if self.momentum == 0.0:
            p -= self.lr * g
            return
        st = self.state.setdefault(name, {})
        v = st.get("v")
        if v is None:
            v = st["v"] = np.array(g, copy=True)
        else:
            v *= self.momentum
            v += g
        p -= self.lr * v


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with the bias correction folded into the step size (their section 2, last
    paragraph), so ``eps`` acts as ``eps / sqrt(1 - beta2^t)``; weight decay is decoupled as in AdamW
    (Loshchilov & Hutter 2019).

    Moments below the smallest normal number of their type are flushed to zero after each step
    (:func:`flush_subnormal`). A parameter
    whose gradient stays zero (the weights of a dead ReLU unit) has moments that decay geometrically into the
    subnormal range, where every arithmetic operation on them is many times slower on x86: a long run then
    slowed down epoch after epoch (issue 14: 10 % of the moments subnormal by epoch 20, 9.9 s -> 28 s per
    epoch). Rounding a moment to a multiple of 1.2e-38 changes no step: ``m / (sqrt(v) + eps)`` with ``eps``
    = 1e-8 then moves by less than 1e-30.
    """

    def __init__(
        self,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr, weight_decay)
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0

    def step(self, net: MLP) -> None:
        self.t += 1
        super().step(net)

    def update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        st = self.state.get(name)
        if st is None:
            st = self.state[name] = {"m": np.zeros_like(p), "v": np.zeros_like(p), "tmp": np.empty_like(p)}
        m, v, tmp = st["m"], st["v"], st["tmp"]
        # In place with one scratch array: no allocation per step (this loop is memory-bound).
        np.multiply(g, 1.0 - self.b1, out=tmp)
        m *= self.b1
        m += tmp
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.b2
        v *= self.b2
        v += tmp
        step = self.lr * math.sqrt(1.0 - self.b2**self.t) / (1.0 - self.b1**self.t)
        if self.weight_decay and decays(name):
            p *= 1.0 - self.lr * self.weight_decay
        flush_subnormal(m)
        flush_subnormal(v)
        np.sqrt(v, out=tmp)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= step
        p -= tmp


def flush_subnormal(a: np.ndarray) -> None:
    """Flush the subnormal entries of ``a`` (float, in place): each becomes 0 or ``±tiny``, the type's
    smallest normal number.

    Two scalar additions, a fraction of the cost of a mask and a select (Adam's update of a 256 x 256 float32
    weight: 118 -> 148 us, against 600 us with ``np.copyto(a, 0, where=abs(a) < tiny)``). Adding
    ``c = 1.5 * tiny / eps`` rounds each sum to the spacing of floats near ``c``, which is ``tiny``, and
    subtracting ``c`` again leaves a multiple of ``tiny``: no subnormal survives. ``c`` is not a power of two,
    so that the spacing is the same just below it (below a power of two it halves, to a subnormal). An entry
    moves by at most ``tiny`` or one spacing of its own (a relative 1.2e-7 in float32), and one of at least
    ``4 c / eps`` (4.9e-24 in float32) does not move at all.
    """
    c = _flush_constant(a.dtype)
    a += c
    a -= c


@functools.cache
def _flush_constant(dtype: np.dtype) -> np.floating:
    info = np.finfo(dtype)
    return dtype.type(1.5 * float(info.smallest_normal) / float(info.eps))


def make_optimizer(name: str, lr: float, weight_decay: float, momentum: float = 0.9) -> Optimizer:
    """``sgd`` (with ``momentum``, 0 for plain SGD) or ``adam``."""
    if name == "sgd":
        return SGD(lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return Adam(lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def scheduled_lr(base_lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """Learning rate for ``epoch`` (0-based) of ``epochs``: ``none``, ``cosine`` (to 0) or ``step`` (x0.1 at 50%, 75%)."""
    if schedule == "none":
        return base_lr
    if schedule == "cosine":
        return 0.5 * base_lr * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    if schedule == "step":
        return base_lr * (0.1 ** ((epoch >= epochs // 2) + (epoch >= (3 * epochs) // 4)))
    raise ValueError(f"schedule must be 'none', 'cosine' or 'step', got {schedule!r}")
