"""Optimizers (SGD with momentum, Adam) and learning-rate schedules.

Weight decay applies to weight matrices only, never to BN's gamma/beta nor to biases (a decayed gamma or
bias changes the function, not its complexity). Parameters are updated in place.
"""

from __future__ import annotations

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

    Moments below the smallest normal number of their type are set to zero after each step. A parameter
    whose gradient stays zero (the weights of a dead ReLU unit) has moments that decay geometrically into the
    subnormal range, where every arithmetic operation on them is many times slower on x86: a long run then
    slowed down epoch after epoch (issue 14: 10 % of the moments subnormal by epoch 20, 9.9 s -> 28 s per
    epoch). Zero instead of a number below 1.2e-38 changes no step: ``m / (sqrt(v) + eps)`` with ``eps`` =
    1e-8 is then below 1e-30.
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
        flush_subnormal(m, tmp)
        flush_subnormal(v, tmp)
        np.sqrt(v, out=tmp)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= step
        p -= tmp


def flush_subnormal(a: np.ndarray, scratch: np.ndarray) -> None:
    """Set the entries of ``a`` smaller in magnitude than its type's smallest normal number to zero, in place
    (``scratch``: a work array of ``a``'s shape and type)."""
    np.abs(a, out=scratch)
    np.copyto(a, 0, where=scratch < np.finfo(a.dtype).smallest_normal)


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
