"""Missing cells and unknown categories: counted per feature, for the metrics and the drift report.

A model with categorical or imputed features (:class:`service.tabular.Tabular`) gets one observer, run by the
observer feeder (batched, after the responses: never on a request's path), that counts, per batch of served
rows, the missing cells of each feature (NaN in ``input``, ``""`` in ``categorical``: cells the graph imputed)
and the categories its graph does not know (sent to the unknown bucket). The counts go to the Prometheus counters
(``bnserve_missing_cells_total``, ``bnserve_unknown_category_total``) and to the model's :class:`CellMonitor`,
which the drift report reads: per feature, the live missing rate against the training ``missing_rate``, and the
unknown-category rate. Live rates are exponentially weighted over the drift monitor's ``window_rows``, as its
histograms are (:mod:`service.drift`), so they describe recent traffic; the cell totals count since the last
reset. With several workers the state lives in a file they all map, as the drift monitor's does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.drift import _clean, _Decay, _FileLock
from service.tabular import Tabular


@dataclass
class CellCounts:
    """Missing cells per feature (contract order) and unknown categories per categorical feature, of a batch."""

    rows: int
    missing: np.ndarray  # (F,) int64
    unknown: np.ndarray  # (K,) int64, K categorical features


def count_cells(tab: Tabular, x: np.ndarray, s: np.ndarray | None) -> CellCounts:
    """How many cells of the rows ``x`` (N, n_numeric) and ``s`` (N, K) are missing (NaN, ``""``), per feature,
    and how many categories the graph does not know (its unknown bucket), per categorical feature."""
    numeric_missing = np.isnan(x).sum(axis=0)  # (n_numeric,)
    k = len(tab.categorical)
    cat_missing = np.zeros(k, dtype=np.int64)
    unknown = np.zeros(k, dtype=np.int64)
    if s is not None:
        for j, known in enumerate(tab.known):
            column = s[:, j].tolist()
            cat_missing[j] = column.count("")
            unknown[j] = sum(1 for v in column if v and v not in known)
    missing = np.zeros(len(tab.specs), dtype=np.int64)
    missing[tab.numeric_index] = numeric_missing
    missing[tab.categorical_index] = cat_missing
    return CellCounts(len(x), missing, unknown)


class CellMonitor:
    """Live missing and unknown rates per feature of one model version, against the training missing rates.

    ``shared``: a state file for every worker (as :class:`service.drift.DriftMonitor`'s), or None.
    """

    def __init__(self, tab: Tabular, window_rows: float, shared: Path | None = None) -> None:
        self.tab = tab
        self._decay = _Decay(window_rows)
        self.window_rows = window_rows
        f, k = len(tab.specs), len(tab.categorical)
        self._f, self._k = f, k
        # [rows, missing totals (F), unknown totals (K), decayed missing (F), decayed unknown (K)]
        size = 1 + 2 * (f + k)
        if shared is None:
            self._state = np.zeros(size)
            self._lock: Any = threading.Lock()
        else:
            self._lock = _FileLock(shared, size * 8)
            self._state = np.frombuffer(self._lock.map, dtype=np.float64, count=size)

    def add(self, counts: CellCounts) -> None:
        """Fold a batch's counts in. The batch's rows share one weight (its newest row's): the rates are over a
        window of thousands of rows, and a batch is one request or one burst of them."""
        f, k = self._f, self._k
        cells = np.concatenate([counts.missing, counts.unknown]).astype(np.float64)  # (F + K,)
        # Each row of the batch weighs as the per-row recurrence would give it: sum of lam**(n-1-i).
        weight = self._decay.sums(counts.rows)[0] / max(counts.rows, 1)
        decay = self._decay.lam**counts.rows
        with self._lock:
            state = self._state
            state[0] += counts.rows
            state[1 : 1 + f + k] += cells
            state[1 + f + k :] *= decay
            state[1 + f + k :] += weight * cells

    def reset(self) -> None:
        """Forget every row (with the drift monitor's reset)."""
        with self._lock:
            self._state[:] = 0.0

    def report(self) -> dict[str, Any]:
        """Per categorical or imputed feature: the training and live missing rates, the unknown rate."""
        with self._lock:
            state = self._state.copy()
        f, k = self._f, self._k
        rows = int(state[0])
        totals, decayed = state[1 : 1 + f + k], state[1 + f + k :]
        w = self._decay.sums(rows)[0] if rows else 0.0
        rates = decayed / w if w else np.zeros(f + k)
        features = []
        cat_index = {j: c for c, j in enumerate(self.tab.categorical_index)}
        for j, spec in enumerate(self.tab.specs):
            if spec.is_numeric and spec.impute is None:
                continue  # missing is refused for it: nothing to count
            entry: dict[str, Any] = {
                "name": spec.name,
                "kind": spec.kind,
                "imputed": spec.impute is not None,
                "missing_rate_train": _clean(spec.missing_rate),
                "missing_rate_live": _clean(rates[j]) if rows else None,
                "missing_cells": int(totals[j]),
            }
            if j in cat_index:
                c = f + cat_index[j]
                entry["unknown_rate_live"] = _clean(rates[c]) if rows else None
                entry["unknown_cells"] = int(totals[c])
            features.append(entry)
        return {
            "rows_seen": rows,
            "window_rows": self.window_rows,
            "rates": "exponentially weighted over window_rows rows; cells: totals since the last reset",
            "features": features,
        }
