"""A uniform sample of the rows a model version served, to feed back to ``python -m training adapt``.

Opt-in (``BNSERVE_DRIFT_SAMPLE_ROWS``): these are raw client inputs, kept in memory and downloadable as CSV.
The sample is Vitter's Algorithm R (1985): the first ``capacity`` rows fill the reservoir; afterwards row ``t``
(0-based) replaces a uniformly chosen slot with probability ``capacity / (t + 1)``, so at any time every row
seen so far is in the sample with the same probability. A batch is processed at once: one uniform draw per
row, and where two rows of a batch pick the same slot the later one wins, as it would row by row.
"""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Sequence

import numpy as np


class Reservoir:
    """At most ``capacity`` rows, a uniform sample of every finite row seen since the last reset."""

    def __init__(self, capacity: int, n_features: int, seed: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.n_features = n_features
        self._rng = np.random.default_rng(seed)
        self._rows = np.empty((capacity, n_features), dtype=np.float32)  # (K, F)
        self._seen = 0
        self._lock = threading.Lock()

    @property
    def seen(self) -> int:
        """Rows offered since the last reset (finite ones)."""
        return self._seen

    def update(self, x: np.ndarray) -> None:
        """Offer a batch of rows ``(n, F)``, oldest first; rows holding NaN or infinity are not kept."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected a batch of shape (n, {self.n_features}), got {tuple(x.shape)}")
        x = x[np.isfinite(x).all(axis=1)]
        with self._lock:
            t = self._seen + np.arange(len(x))  # (n,) each row's index in the stream
            fill = t < self.capacity
            self._rows[t[fill]] = x[fill]
            rest = np.flatnonzero(~fill)
            if len(rest):
                slot = np.floor(self._rng.random(len(rest)) * (t[rest] + 1)).astype(np.int64)
                keep = slot < self.capacity
                slot, rows = slot[keep], rest[keep]
                # the last row choosing a slot wins: unique over the reversed order keeps each slot's last chooser
                last_slot, idx = np.unique(slot[::-1], return_index=True)
                self._rows[last_slot] = x[rows[::-1][idx]]
            self._seen += len(x)

    def rows(self) -> np.ndarray:
        """A copy of the sample, ``(min(seen, capacity), F)`` float32."""
        with self._lock:
            return self._rows[: min(self._seen, self.capacity)].copy()

    def reset(self) -> None:
        """Forget the sample (after it was used, or when a new version takes over)."""
        with self._lock:
            self._seen = 0

    def to_csv(self, feature_names: Sequence[str]) -> str:
        """The sample as CSV: a header of the feature names, then one row per sampled input (each float32 value
        in its shortest exact form), the format ``python -m training adapt --rows`` reads."""
        rows = self.rows()
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(feature_names)
        writer.writerows([[str(v) for v in row] for row in rows])  # str(np.float32): shortest round-trip
        return out.getvalue()
