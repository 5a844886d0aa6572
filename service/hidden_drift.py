"""Drift of the hidden layers: every hidden layer of a model is watched like its inputs.

Batch Norm exists because a layer's input distribution shifts; a model exported by bnserve records, per hidden
unit, the training distribution of what the served graph computes there (the folded Gemm output, i.e. Batch
Norm's output; ``bnserve.hidden_stats``) and can return those tensors as extra graph outputs. A
:class:`ModelDriftMonitor` is the input :class:`~service.drift.DriftMonitor` plus one ``DriftMonitor`` per
hidden layer, over its units: per-unit PSI and mean shift, and a score per layer (the largest PSI over its
units), with the same estimators, horizons and threshold as the inputs.

The service feeds the monitor the hidden outputs of the very run that served the rows (the graph computes
them anyway; asking onnxruntime for them costs a copy, where a second run on the feeder thread cost as much
as the first); the statistics are updated by the observer feeder, batched, after the responses
(``service/observers.py``; ``benchmarks/drift.py`` measures the cost).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract import HiddenLayerStats, ModelContract
from service.cells import CellMonitor
from service.drift import DriftConfig, DriftMonitor
from service.tabular import Tabular

#: Computes the hidden layers' outputs of float32 rows ``(n, F)`` (and the string rows of a ``categorical``
#: input, or None), one ``(n, units)`` array per layer.
HiddenOutputs = Callable[[np.ndarray, np.ndarray | None], Sequence[np.ndarray]]


@dataclass(frozen=True)
class LayerMonitor:
    """One hidden layer's statistics and the monitor of its units."""

    stats: HiddenLayerStats
    monitor: DriftMonitor


class ModelDriftMonitor(DriftMonitor):
    """Input drift plus one monitor per hidden layer; its report adds a ``layers`` list.

    Without ``hidden_outputs`` or hidden statistics in the contract (models exported before them), it is
    exactly the input monitor and ``layers`` is empty. A model with categorical or imputed features
    (``tabular``) is watched on its numeric features, after imputation (as the training ``input_stats``
    were computed), and its report adds ``cells``, the missing and unknown rates of :attr:`cells`.
    """

    def __init__(
        self,
        contract: ModelContract,
        config: DriftConfig | None = None,
        *,
        name: str = "model",
        hidden_outputs: HiddenOutputs | None = None,
        shared: Path | None = None,
        layers: bool | None = None,
        tabular: Tabular | None = None,
        layer_rows_per_second: float = 0.0,
    ) -> None:
        """``shared``: the inputs' state file shared by the workers (see :class:`DriftMonitor`); each layer
        keeps its own beside it, ``<shared>.<layer>``. ``layers``: watch the hidden layers (by default when
        ``hidden_outputs`` is given); they are then fed by :meth:`update_layers`, or by :meth:`update`
        through ``hidden_outputs``. ``layer_rows_per_second``: the hidden layers see at most this many rows a
        second (:class:`RowBudget`; the inputs see every row); 0 for every row."""
        super().__init__(contract.input_stats, contract.numeric_names, config, name=name, shared=shared)
        self.layer_budget = RowBudget(layer_rows_per_second)
        self._hidden_outputs = hidden_outputs
        self._tabular = tabular
        #: Missing and unknown rates per feature, fed by the service's cell counter (:mod:`service.cells`).
        self.cells = (
            None
            if tabular is None
            else CellMonitor(
                tabular,
                self.config.window_rows,
                shared=None if shared is None else shared.with_name(f"{shared.name}.cells"),
            )
        )
        self.layers = (
            [
                LayerMonitor(
                    h,
                    DriftMonitor(
                        h.stats,
                        h.unit_names,
                        self.config,
                        name=name,
                        watches=f"hidden layer {h.name}",
                        shared=None if shared is None else shared.with_name(f"{shared.name}.{h.name}"),
                    ),
                )
                for h in contract.hidden_stats
            ]
            if (hidden_outputs is not None if layers is None else layers)
            else []
        )

    def update(self, x: np.ndarray, categorical: np.ndarray | None = None) -> None:
        """Fold a batch of served rows (and its ``categorical`` rows, if any) into the input statistics and each
        hidden layer's."""
        if not self.layers or not len(x):
            super().update(self._numbers(x))
            return
        if self._hidden_outputs is None:
            raise ValueError("this monitor is fed its hidden layers' outputs: call update_layers")
        self.update_layers(x, self._hidden_outputs(np.asarray(x, dtype=np.float32), categorical))

    def update_layers(self, x: np.ndarray, outputs: Sequence[np.ndarray]) -> None:
        """Fold a batch of served rows and each hidden layer's outputs on them (``(n, units)`` per layer, the
        graph's own) into the statistics, the layers within the row budget."""
        rows = self.layer_budget.take(len(x)) if self.layers else None  # None: all of them
        self.update_sampled(x, outputs if rows is None else [z[rows] for z in outputs])

    def update_sampled(self, x: np.ndarray, outputs: Sequence[np.ndarray] | None = None) -> None:
        """Fold served rows ``x`` into the input statistics, and each hidden layer's outputs on the rows the
        budget took of them (``(k, units)`` per layer, :meth:`RowBudget.take` already applied where the model
        ran; None when no row was taken) into the layers'. The service's layer observer."""
        super().update(self._numbers(x))
        if not self.layers or outputs is None:
            return
        for layer, z in zip(self.layers, outputs, strict=True):
            layer.monitor.update(z)

    def _numbers(self, x: np.ndarray) -> np.ndarray:
        """The served numbers as the training statistics saw them: a missing cell at its imputed value."""
        return x if self._tabular is None else self._tabular.imputed_numbers(x)

    def reset(self) -> None:
        """Forget every live row, inputs and hidden layers alike."""
        super().reset()
        for layer in self.layers:
            layer.monitor.reset()
        if self.cells is not None:
            self.cells.reset()

    def report(self) -> dict[str, Any]:
        """The input report plus ``layers``: per hidden layer its score, whether it drifts, its top units."""
        rep = super().report()
        rep["layers"] = [self._layer_report(layer) for layer in self.layers]
        if self.cells is not None:
            rep["cells"] = self.cells.report()
        return rep

    @staticmethod
    def _layer_report(layer: LayerMonitor) -> dict[str, Any]:
        rep = layer.monitor.report()
        return {
            "name": layer.stats.name,
            "output": layer.stats.output,
            "units": layer.stats.stats.n_columns,
            "score": rep["score"],
            "drifting": rep["drifting"],
            "rows_effective": rep["rows_effective"],
            "rows_seen": rep["rows_seen"],  # fewer than the inputs' above the layers' row budget
            "top_units": rep["top_features"],
        }


class RowBudget:
    """At most ``rate`` rows a second, chosen uniformly within each batch: a token bucket of one second's rows.

    The hidden layers cost ten times the inputs per row (512 units against 64 for the digits model), and their
    histograms need a thousand rows, not every row: above the budget (heavy traffic) a uniform sample of each
    burst is folded in, below it (most of the time) every row. ``rate`` 0: no budget.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic, seed: int = 0) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = rate
        self._last = clock()
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def wants(self) -> bool:
        """Whether a row could be taken now (a run need not compute the hidden layers otherwise)."""
        if self.rate <= 0:
            return True
        with self._lock:
            return self._tokens + (self._clock() - self._last) * self.rate >= 1

    def take(self, n: int) -> np.ndarray | None:
        """Which of a batch's ``n`` rows to use: sorted indices, or None for all of them."""
        if self.rate <= 0:
            return None
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            k = min(n, int(self._tokens))
            self._tokens -= k
            if k == n:
                return None
            if k == 0:
                return np.empty(0, np.intp)
            # The first k of a random permutation: uniform, and three times cheaper than choice(replace=False)
            # for the batches served here (tens to hundreds of rows).
            return np.sort(self._rng.permutation(n)[:k])
