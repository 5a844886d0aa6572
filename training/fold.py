"""Folding test-time Batch Norm and input standardization into the linear layers around them.

At test time BN is a fixed affine map per feature, ``y = s * (z - mean) + beta`` with
``s = gamma / sqrt(var + eps)``; after ``z = x @ W + b`` it is the same as ``x @ W' + b'`` with
``W' = W * s`` (each output column scaled) and ``b' = beta + (b - mean) * s``. Standardization
``x_std = (x - m) / sd`` in front of a linear layer folds into it likewise. Everything here is float64.
"""

from __future__ import annotations

import numpy as np


def fold_batchnorm(
    W: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
    b: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` followed by test-time BN -> one affine ``(W', b')``; ``W`` is ``(in, out)``, the rest ``(out,)``."""
    W = np.asarray(W, dtype=np.float64)
    out = W.shape[1]
    for name, v in {"gamma": gamma, "beta": beta, "mean": mean, "var": var}.items():
        if np.shape(v) != (out,):
            raise ValueError(f"{name} must have shape ({out},) to match W {W.shape}, got {np.shape(v)}")
    s = np.asarray(gamma, dtype=np.float64) / np.sqrt(np.asarray(var, dtype=np.float64) + eps)  # (out,)
    bias = np.zeros(out) if b is None else np.asarray(b, dtype=np.float64)
    return W * s, np.asarray(beta, dtype=np.float64) + (bias - np.asarray(mean, dtype=np.float64)) * s


def fold_standardization(
    W: np.ndarray, b: np.ndarray | None, mean: np.ndarray, std: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``((x - mean) / std) @ W + b`` -> ``x @ W' + b'``: ``W' = W / std[:, None]``, ``b' = b - (mean / std) @ W``."""
    W = np.asarray(W, dtype=np.float64)
    if np.shape(mean) != (W.shape[0],) or np.shape(std) != (W.shape[0],):
        raise ValueError(f"mean and std must have shape ({W.shape[0]},) to match W {W.shape}")
    bias = np.zeros(W.shape[1]) if b is None else np.asarray(b, dtype=np.float64)
    m = np.asarray(mean, dtype=np.float64)
    sd = np.asarray(std, dtype=np.float64)
    return W / sd[:, None], bias - (m / sd) @ W


def fold_output_scale(
    W: np.ndarray, b: np.ndarray, scale: np.ndarray, shift: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(x @ W + b) * scale + shift`` -> ``x @ W' + b'`` (de-standardizing regression targets)."""
    scale = np.asarray(scale, dtype=np.float64)
    return np.asarray(W, dtype=np.float64) * scale, np.asarray(b, dtype=np.float64) * scale + shift
