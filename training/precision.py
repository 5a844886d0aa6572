"""How far a float32 graph may honestly be from the float64 network it was folded from.

The served graph computes ``[centre] -> [Gemm -> activation] * k -> Gemm -> softmax`` in float32. Its float64
twin (:func:`forward64`, same folded weights, every operation in float64) is the truth it is compared with;
the tolerance is derived, row by row and output by output, from float32 rounding of the actual magnitudes
(:func:`error_bound`), not fixed.

The model of rounding is the statistical one (Higham & Mary 2019; Wilkinson's rule of thumb): each float32
operation, and each constant stored in float32, adds an independent error of standard deviation
``u |result| / sqrt(3)`` (``u = 2**-24``, uniform rounding). Variances then propagate in closed form:

- ``z = h @ W + b`` with ``h`` off by ``e`` (variance ``v``): ``v @ W**2`` carried, plus
  ``u**2 / 3 * (h**2 @ W**2 + b**2)`` for the stored weights and the products, plus
  ``u**2 / 3 * K * (h**2 @ W**2 + z**2)`` for the ``K`` additions, whose partial sums are no larger than
  those two terms (a random walk of the products plus its drift towards ``z``);
- ReLU and tanh pass errors through unchanged (1-Lipschitz), the logistic sigmoid divides them by 4; tanh
  and sigmoid add their own rounding;
- softmax: ``|dp_i| <= p_i (|dz_i| + sum_j p_j |dz_j|)`` plus the rounding of ``exp``, the sum and the division.

The tolerance is ``LAMBDA`` standard deviations. Worst-case bounds (``K u`` per inner product, errors
aligned with the weights' signs) grow so fast with width and depth that a wrong fold would hide under them;
this one leaves a correct fold far inside (typically 1 % of the tolerance) and a 1 % error in one unit far
outside. Folding loses precision in one place, the centring: a folded bias ``b - (mean / std) @ W`` cancels
against ``x @ (W / std)`` when ``|mean| >> std`` (a year column, mean 2023.5 and std 0.5, leaves about 12 of
float32's 24 bits). :func:`needs_centring` decides when the graph keeps the centring as its own ``Sub`` node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

U = 2.0**-24  # float32 unit roundoff
#: Standard deviations of the modelled rounding error allowed (a Gaussian exceeds 8 sigma with p ~ 1e-15;
#: the model itself is approximate, hence the margin).
LAMBDA = 8.0
#: Keep an explicit centring step when folding it would cost more than this many of float32's 24 bits:
#: the folded first layer's cancellation amplifies rounding by ``1 + |mean| / std``.
MAX_FOLD_BITS_LOST = 6.0
LIPSCHITZ = {"Relu": 1.0, "Tanh": 1.0, "Sigmoid": 0.25, None: 1.0}


@dataclass(frozen=True)
class Affine:
    """One folded layer ``act(x @ W + b)``; ``activation`` is an ONNX op type, or None for the head."""

    W: np.ndarray  # (in, out) float64
    b: np.ndarray  # (out,) float64
    activation: str | None


def fold_bits_lost(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per feature, how many bits folding ``(x - mean) / std`` into the next layer loses to cancellation."""
    return np.log2(1.0 + np.abs(np.asarray(mean, np.float64)) / np.asarray(std, np.float64))


def needs_centring(mean: np.ndarray, std: np.ndarray) -> bool:
    """Whether the graph should subtract the mean itself instead of folding it into the first layer."""
    return bool(len(mean)) and float(fold_bits_lost(mean, std).max()) > MAX_FOLD_BITS_LOST


def activate(z: np.ndarray, op: str | None) -> np.ndarray:
    """The activation named by its ONNX op type (None: identity), in the dtype of ``z``."""
    if op is None:
        return z
    if op == "Relu":
        return np.maximum(z, 0.0)
    if op == "Tanh":
        return np.tanh(z)
    if op == "Sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|
    raise ValueError(f"unknown activation {op!r}")


def softmax64(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def forward64(layers: Sequence[Affine], x: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """The folded network in float64: the pre-softmax output ``(N, out)``; ``centre`` is subtracted first."""
    h = np.asarray(x, np.float64)
    if centre is not None:
        h = h - centre
    for layer in layers:
        h = activate(h @ layer.W + layer.b, layer.activation)
    return h


def error_bound(
    layers: Sequence[Affine],
    x: np.ndarray,
    centre: np.ndarray | None = None,
    input_error: np.ndarray | None = None,
    softmax: bool = False,
) -> np.ndarray:
    """Per row and output, how far the float32 graph may be from :func:`forward64` (same shape as its result,
    or as its softmax when ``softmax``); ``input_error`` is the standard deviation of an error already in
    ``x`` (rounding in the preprocessing steps)."""
    r2 = U * U / 3.0  # variance of one relative rounding
    h = np.asarray(x, np.float64)  # (N, F)
    v = np.zeros_like(h) if input_error is None else np.asarray(input_error, np.float64) ** 2
    if centre is not None:
        c = np.asarray(centre, np.float64)
        stored = c.astype(np.float32).astype(np.float64) - c  # the mean's float32 rounding, known exactly
        h = h - c
        v = v + stored * stored + r2 * h * h  # then the subtraction's rounding
    for layer in layers:
        k = layer.W.shape[0]
        W2 = layer.W * layer.W
        z = h @ layer.W + layer.b  # (N, out)
        products = (h * h) @ W2  # (N, out)
        v = v @ W2 + r2 * (products + layer.b**2) + r2 * k * (products + z * z)
        h = activate(z, layer.activation)
        slope = LIPSCHITZ[layer.activation]
        v = slope * slope * v + (r2 * h * h if layer.activation in ("Tanh", "Sigmoid") else 0.0)
    dz = LAMBDA * np.sqrt(v + r2 * h * h)
    if not softmax:
        return dz
    p = softmax64(h)
    n_out = h.shape[1]
    first_order = p * (dz + (p * dz).sum(axis=1, keepdims=True))
    rounding = LAMBDA * (n_out + 4) * U * p + U  # exp, the sum of n_out terms, the division; U for p ~ 0
    return first_order + rounding


@dataclass(frozen=True)
class Comparison:
    """One check of a graph's output against the float64 truth."""

    name: str
    worst_ratio: float  # max |got - want| / bound: <= 1 passes
    max_abs: float  # max |got - want|
    where: tuple[int, int]  # (row, column) of the worst ratio

    @property
    def ok(self) -> bool:
        return self.worst_ratio <= 1.0

    def describe(self) -> str:
        r, c = self.where
        return (
            f"{self.name}: max |difference| {self.max_abs:.3g}, {self.worst_ratio:.3g}x the float32 bound "
            f"(worst at row {r}, output {c})"
        )


def compare(name: str, got: np.ndarray, want: np.ndarray, bound: np.ndarray) -> Comparison:
    """``got`` (a float32 graph's output) against ``want`` (float64) within ``bound``, element by element."""
    got = np.asarray(got, np.float64)
    diff = np.abs(got - want)
    ratio = np.where(np.isfinite(diff), diff / np.maximum(bound, np.finfo(np.float64).tiny), np.inf)
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape) if ratio.size else (0, 0)
    return Comparison(
        name,
        float(ratio[worst]) if ratio.size else 0.0,
        float(diff.max(initial=0.0)),
        (int(worst[0]), int(worst[1]) if len(worst) > 1 else 0),
    )
