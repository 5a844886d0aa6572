"""Per-feature input statistics of a sample: the one definition training writes and the service compares with.

Numpy and :mod:`contract` only, so that both sides can import it: ``training`` stores the statistics of its
training split in the model's metadata, ``service.drift`` builds the same statistics for its tests and tools.
"""

from __future__ import annotations

import numpy as np

from contract import N_BINS, InputStats


def input_statistics(x: np.ndarray) -> InputStats:
    """Mean, std, decile edges and the sample's mass in each decile bin, per feature of ``x`` ``(n, F)``.

    A row falls in bin ``searchsorted(edges, value, side="right")`` (the contract's rule), so ties at an edge
    go to the bin above it; a constant feature puts all its mass in the last bin.
    """
    x = np.asarray(x, dtype=np.float64)
    qs = np.linspace(0.0, 1.0, N_BINS + 1)[1:-1]  # the 9 inner quantiles
    edges = np.quantile(x, qs, axis=0).T  # (F, 9)
    freqs = bin_frequencies(x, edges)  # (F, 10)
    return InputStats(
        mean=x.mean(axis=0).tolist(),
        std=x.std(axis=0).tolist(),
        decile_edges=edges.tolist(),
        decile_freqs=freqs.tolist(),
        rows=len(x),
    )


def bin_frequencies(x: np.ndarray, edges: np.ndarray | list[list[float]]) -> np.ndarray:
    """The share of the rows of ``x`` ``(n, F)`` in each of the 10 bins the 9 ``edges`` per feature make."""
    edges = np.asarray(edges, dtype=np.float64)  # (F, 9)
    x = np.asarray(x, dtype=np.float64)
    return np.stack(
        [np.bincount(np.searchsorted(e, col, side="right"), minlength=N_BINS) for e, col in zip(edges, x.T)]
    ) / len(x)  # (F, 10)


def psi(live: np.ndarray, train: np.ndarray, epsilon: float = 1e-4) -> np.ndarray:
    """Population stability index per row of two ``(F, B)`` tables of bin frequencies (rows sum to 1),
    both smoothed by ``epsilon`` so that an empty bin adds a bounded term."""
    b = live.shape[-1]
    p = (live + epsilon) / (1.0 + b * epsilon)
    q = (np.asarray(train) + epsilon) / (1.0 + b * epsilon)
    return np.sum((p - q) * np.log(p / q), axis=-1)  # (F,)


def sample_psi(x: np.ndarray, stats: InputStats, epsilon: float = 1e-4) -> np.ndarray:
    """PSI per feature of a whole sample ``x`` ``(n, F)`` against reference statistics; its max is the
    service's drift score for those rows (without the service's exponential forgetting)."""
    return psi(bin_frequencies(x, stats.decile_edges), np.asarray(stats.decile_freqs), epsilon)
