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
    freqs = np.empty((x.shape[1], N_BINS))  # (F, 10)
    for j in range(x.shape[1]):
        bins = np.searchsorted(edges[j], x[:, j], side="right")  # (n,)
        freqs[j] = np.bincount(bins, minlength=N_BINS) / len(x)
    return InputStats(
        mean=x.mean(axis=0).tolist(),
        std=x.std(axis=0).tolist(),
        decile_edges=edges.tolist(),
        decile_freqs=freqs.tolist(),
        rows=len(x),
    )
