"""Covariate-shift monitor: compare the rows a model serves with the training distribution it carries.

Pure numpy (its Prometheus gauges are :func:`service.metrics.register_drift_gauges`); no FastAPI here. One
:class:`DriftMonitor` per loaded model; the service calls :meth:`DriftMonitor.update` with every request's
input batch and :meth:`DriftMonitor.report` for ``GET /v2/models/{name}/drift``.

The scores
----------
For every feature ``j``, against the training statistics in :class:`contract.InputStats`:

* **mean shift** ``|mean_live_j - mean_train_j| / max(std_train_j, std_floor)``: how far the live mean has
  moved, in training standard deviations. ``std_floor`` keeps features that were constant in training (the
  border pixels of the digits) finite: such a feature that starts to vary reports a large but finite shift.
* **PSI** (population stability index) of the live decile histogram ``p`` against the training one ``q``,
  both over the 10 bins the training deciles make (``bin = searchsorted(edges, x, side="right")``):
  ``PSI_j = sum_b (p_b - q_b) * ln(p_b / q_b)``, the symmetrised Kullback-Leibler divergence. Both
  histograms are smoothed first, ``p <- (p + eps) / (1 + 10 eps)``, so that a bin that was empty in training
  (ties among the deciles of discrete features make several) adds a bounded ``~ p_b ln(p_b / eps)``
  instead of infinity. Common reading: < 0.1 stable, 0.1-0.25 moderate, > 0.25 significant.

The model's **score** is ``max_j PSI_j``, the PSI of the most shifted feature. PSI rather than the mean
shift because it is scale-free (no floor to choose), has a conventional reading, and sees changes of
shape that leave the mean in place (an inverted or rescaled feature); the maximum rather than the mean
over features because a shift in a handful of features is a real shift, and averaging over 64 pixels would
dilute it 64 times. The **threshold** (default 0.25, "significant") is therefore "some feature's
distribution has moved significantly". Per-feature mean shifts are reported alongside to say *how* it moved.
For a Gaussian feature, PSI 0.25 on deciles is about a 0.5 standard deviation shift of the mean.

Estimating live statistics
--------------------------
The live mean and variance are exponentially weighted moving averages, as Batch Norm's running
statistics, with a horizon of ``horizon_rows``: the per-row decay is ``lam = 1 - 1/horizon_rows`` (BN's
momentum is ``1/horizon_rows``). A request of ``n`` rows applies the per-row recurrence
``m <- lam m + (1 - lam) x_i`` in closed form: ``S <- lam**n S + sum_i lam**(n-1-i) x_i``, one matrix-vector
product, no Python loop over rows. The accumulators are unnormalised weighted sums of ``x - mean_train`` and
of its square; estimates divide them by the sum of the weights (a geometric series in the rows seen), which
is the recurrence started at zero and bias-corrected as Adam does, so the first rows are not pulled to zero. Shifting by the training mean
before squaring keeps ``E[d^2] - E[d]^2`` free of cancellation.

The decile histogram uses the same machinery with its own horizon ``window_rows``: exponentially decayed
bin counts, rather than a ring of per-request count arrays. The state stays ``(F, 9)`` decayed counts of
``x >= edge`` (the 10 bin counts are their differences) whatever the traffic; a window is measured in rows
rather than in requests (one request of 1000 rows and 1000 requests of one row weigh the same); the
histogram forgets smoothly instead of jumping when a large request leaves the ring; and its effective size
is computed exactly as for the moments.

How many rows an estimate rests on is Kish's effective sample size ``(sum w)^2 / sum w^2``: the number of rows
seen while it is small, tending to ``2 * horizon - 1`` in steady state. PSI has a small-sample bias of
about ``(bins - 1) / rows`` (it is a chi-square over ``rows``), so ``drifting`` stays false until the
histogram rests on ``min_rows`` effective rows.
"""

from __future__ import annotations

import fcntl
import logging
import math
import mmap
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract import N_BINS, InputStats, ModelContract
from featurestats import input_statistics as stats_from_sample  # noqa: F401 (re-exported for tests, tools)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftConfig:
    """How a :class:`DriftMonitor` estimates and judges drift; validated on construction."""

    horizon_rows: float = 1000.0
    """EWMA horizon of the live mean and variance, in rows: per-row decay ``1 - 1/horizon_rows``."""
    window_rows: float = 1000.0
    """Horizon of the exponentially decayed decile histogram behind PSI, in rows."""
    threshold: float = 0.25
    """Score (max PSI over features) above which the model is drifting; 0.25 is 'significant'."""
    top_k: int = 5
    """How many of the most shifted features the report names."""
    min_rows: float = 200.0
    """Effective rows the histogram must rest on before ``drifting`` can be true (PSI bias ~ 9 / rows)."""
    std_floor: float = 1e-3
    """Floor of the training std in the mean shift, in feature units (constant features have std 0)."""
    psi_epsilon: float = 1e-4
    """Additive smoothing of both histograms before PSI, so empty bins give finite terms."""
    rearm_ratio: float = 0.8
    """After a warning, the next one needs the score to fall below ``rearm_ratio * threshold`` first."""
    check_every_rows: int = 256
    """``update`` evaluates the score (for the warning) once per this many rows; ``report`` always does."""

    def __post_init__(self) -> None:
        if not self.horizon_rows >= 1:
            raise ValueError(f"horizon_rows must be >= 1, got {self.horizon_rows}")
        if not self.window_rows >= 1:
            raise ValueError(f"window_rows must be >= 1, got {self.window_rows}")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be a positive number, got {self.threshold}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not self.min_rows >= 0:
            raise ValueError(f"min_rows must be >= 0, got {self.min_rows}")
        if not self.std_floor > 0:
            raise ValueError(f"std_floor must be > 0, got {self.std_floor}")
        if not 0 < self.psi_epsilon < 0.1:
            raise ValueError(f"psi_epsilon must be in (0, 0.1), got {self.psi_epsilon}")
        if not 0 < self.rearm_ratio <= 1:
            raise ValueError(f"rearm_ratio must be in (0, 1], got {self.rearm_ratio}")
        if self.check_every_rows < 1:
            raise ValueError(f"check_every_rows must be >= 1, got {self.check_every_rows}")


def psi(live: np.ndarray, train: np.ndarray, epsilon: float = 1e-4) -> np.ndarray:
    """Population stability index per row of two ``(F, B)`` tables of bin frequencies (rows sum to 1)."""
    b = live.shape[-1]
    p = (live + epsilon) / (1.0 + b * epsilon)
    q = (train + epsilon) / (1.0 + b * epsilon)
    return np.sum((p - q) * np.log(p / q), axis=-1)  # (F,)


class DriftMonitor:
    """Running live-input statistics of one model, scored against its training statistics.

    ``update`` is safe to call from many threads at once: the work that depends only on the batch runs
    outside the lock; the lock guards a handful of in-place array updates.
    """

    def __init__(
        self,
        stats: InputStats,
        feature_names: Sequence[str],
        config: DriftConfig | None = None,
        *,
        name: str = "model",
        shared: Path | None = None,
        watches: str = "input",
    ) -> None:
        """``shared``: a file holding the live statistics, for every process that names it (one model, many
        workers: one estimate); created on first use. ``None`` keeps them in this process."""
        self.config = config or DriftConfig()
        self.name = name
        self.watches = watches  # what the columns are, for the warning: "input", "hidden layer layer0", ...
        self.feature_names = list(feature_names)
        f = len(self.feature_names)
        self.n_features = f
        self._mean_train = np.asarray(stats.mean, dtype=np.float64)  # (F,)
        self._std_train = np.asarray(stats.std, dtype=np.float64)  # (F,)
        self._edges = np.asarray(stats.decile_edges, dtype=np.float64)  # (F, 9)
        self._freqs_train = np.asarray(stats.decile_freqs, dtype=np.float64)  # (F, 10)
        for what, arr, shape in (
            ("mean", self._mean_train, (f,)),
            ("std", self._std_train, (f,)),
            ("decile_edges", self._edges, (f, N_BINS - 1)),
            ("decile_freqs", self._freqs_train, (f, N_BINS)),
        ):
            if arr.shape != shape:
                raise ValueError(
                    f"input_stats.{what}: expected shape {shape} for {f} features, got {arr.shape}"
                )
        self._std_eff = np.maximum(self._std_train, self.config.std_floor)  # (F,)
        # Bins are counted as exceedances: x >= edge_k for the 9 edges, so that searchsorted(side="right")
        # is their sum and a batch's weighted histogram is one matrix-vector product. Edges are laid out
        # (9, F) so the comparison runs along contiguous memory; float32 batches compare against the edges
        # rounded *up* to float32, which gives exactly the float64 answer for every float32 x.
        self._edges_t = np.ascontiguousarray(self._edges.T)  # (9, F)
        e32 = self._edges_t.astype(np.float32)
        self._edges_t32 = np.where(e32 < self._edges_t, np.nextafter(e32, np.float32(np.inf)), e32)
        self._moments = _Decay(self.config.horizon_rows)
        self._window = _Decay(self.config.window_rows)
        # The whole mutable state is one float64 vector, so that several processes can share it (a file they
        # all map, ``shared``): [rows, rows_nonfinite, since, last_check, armed, moment sums (2F), exceedances
        # (9F)]. Row counts as float64 stay exact up to 2**53 rows.
        size = _HEAD + 2 * f + (N_BINS - 1) * f
        if shared is None:
            self._state = np.zeros(size)
            self._lock: Any = threading.Lock()
            self._reset_state()
        else:
            self._lock = _FileLock(shared, size * 8)
            self._state = np.frombuffer(self._lock.map, dtype=np.float64, count=size)
            with self._lock:
                if self._state[_SINCE] == 0:  # the first process to map the file starts the clock
                    self._reset_state()
        self._moments_sums = self._state[_HEAD : _HEAD + 2 * f]  # (2F,) views into the state
        self._exceed = self._state[_HEAD + 2 * f :]  # (9F,)

    @classmethod
    def from_contract(
        cls,
        contract: ModelContract,
        config: DriftConfig | None = None,
        *,
        name: str = "model",
        shared: Path | None = None,
    ) -> DriftMonitor:
        """A monitor for the model a :class:`contract.ModelContract` describes."""
        return cls(contract.input_stats, contract.numeric_names, config, name=name, shared=shared)

    def _reset_state(self) -> None:
        """Zero rows; called with the lock held (or before anyone else can see the state)."""
        # rows seen since the last reset, rows dropped for NaN or infinity, then sum_i w_i d_i and
        # sum_i w_i d_i^2 (d = x - mean_train; the sums of the weights depend only on the row count, in closed
        # form: _Decay.sums), then sum_i w_i [x_ij >= edge_kj] flat (9 * F,)
        self._state[:] = 0.0
        self._state[_ARMED] = 1.0  # whether crossing the threshold will log a warning
        self._state[_SINCE] = time.time()

    def reset(self) -> None:
        """Forget every live row (for operators, once they have acted on a drift); re-arms the warning."""
        with self._lock:
            self._reset_state()
        logger.info("drift statistics of model %r reset", self.name)

    def update(self, x: np.ndarray) -> None:
        """Fold a batch of served rows ``(n, F)`` into the live statistics, oldest row first.

        Rows holding NaN or infinity are dropped (and counted), as they would poison the averages.
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected a batch of shape (n, {self.n_features}), got {tuple(x.shape)}")
        dropped = 0
        if not math.isfinite(x.sum()):  # one reduction on the fast path; overflow only costs the slow one
            finite = np.isfinite(x).all(axis=1)  # (n,)
            dropped = int(len(x) - finite.sum())
            x = x[finite]
        n = len(x)
        if n:
            d = x.astype(np.float64)  # (n, F): a cast, then an in-place subtraction (faster than mixed types)
            d -= self._mean_train
            w = self._moments.weights(n)  # (n,) lam**(n-1-i): the newest row weighs 1
            moments = np.concatenate((w @ d, w @ (d * d)))  # (2F,)
            # One weighted count per edge: an (n, F) mask at a time stays in cache, where the (n, 9, F) mask
            # as float64 did not (3x the time from 256 rows on; the same sums, in the same order).
            wh = self._window.weights(n)  # (n,)
            edges = self._edges_t32 if x.dtype == np.float32 else self._edges_t  # (9, F)
            exceed = np.concatenate([wh @ (x >= edge) for edge in edges])  # (9 * F,)
            a, ah = self._moments.lam**n, self._window.lam**n
        state = self._state
        with self._lock:
            state[_NONFINITE] += dropped
            if n:
                state[_ROWS] += n
                self._moments_sums *= a
                self._moments_sums += moments
                self._exceed *= ah
                self._exceed += exceed
            check = state[_ROWS] - state[_LAST_CHECK] >= self.config.check_every_rows
            if check:
                state[_LAST_CHECK] = state[_ROWS]
        if check:
            self._alarm(self._estimate())

    def _estimate(self) -> _Estimate:
        """Scores from a consistent snapshot of the state (copied under the lock, computed outside it)."""
        with self._lock:
            snapshot = self._state.copy()
        rows, nonfinite, since = int(snapshot[_ROWS]), int(snapshot[_NONFINITE]), float(snapshot[_SINCE])
        f = self.n_features
        moments, exceed = snapshot[_HEAD : _HEAD + 2 * f], snapshot[_HEAD + 2 * f :]
        if not rows:
            zeros = np.zeros(f)
            return _Estimate(rows, nonfinite, since, 0.0, 0.0, None, None, zeros, zeros, 0.0, False)
        w, w2 = self._moments.sums(rows)
        wh, wh2 = self._window.sums(rows)
        mean_d = moments[:f] / w  # (F,) live mean - training mean
        var = np.maximum(moments[f:] / w - mean_d**2, 0.0)  # (F,)
        shift = np.abs(mean_d) / self._std_eff  # (F,)
        # P(bin > k) for k = 0..8, then the 10 bin frequencies as differences of neighbours.
        tail = (exceed / wh).reshape(N_BINS - 1, f).T  # (F, 9)
        ones, zeros = np.ones((f, 1)), np.zeros((f, 1))
        freqs = np.maximum(-np.diff(np.hstack([ones, tail, zeros]), axis=1), 0.0)  # (F, 10)
        psis = psi(freqs, self._freqs_train, self.config.psi_epsilon)  # (F,)
        score = float(psis.max())
        eff_hist = wh**2 / wh2
        drifting = eff_hist >= self.config.min_rows and score > self.config.threshold
        return _Estimate(
            rows,
            nonfinite,
            since,
            w**2 / w2,
            eff_hist,
            self._mean_train + mean_d,
            np.sqrt(var),
            shift,
            psis,
            score,
            drifting,
        )

    def _top(self, est: _Estimate) -> list[int]:
        """Indices of the most shifted features: by PSI, ties (e.g. all zero) broken by the mean shift."""
        if not est.rows:
            return []
        return [int(j) for j in np.lexsort((-est.mean_shift, -est.psi))[: self.config.top_k]]

    def report(self) -> dict[str, Any]:
        """The drift estimate, JSON-ready; also logs the warning if the threshold was just crossed.

        Before any row, every score is 0, live means and stds are null, ``top_features`` is empty and
        ``drifting`` is false.
        """
        est = self._estimate()
        self._alarm(est)
        features = [
            {
                "name": self.feature_names[j],
                "psi": _clean(est.psi[j]),
                "mean_shift": _clean(est.mean_shift[j]),
                "mean_train": _clean(self._mean_train[j]),
                "std_train": _clean(self._std_train[j]),
                "mean_live": None if est.mean_live is None else _clean(est.mean_live[j]),
                "std_live": None if est.std_live is None else _clean(est.std_live[j]),
            }
            for j in range(self.n_features)
        ]
        return {
            "model": self.name,
            "rows_seen": est.rows,
            "rows_effective": _clean(est.rows_effective),
            "rows_effective_moments": _clean(est.rows_effective_moments),
            "rows_nonfinite": est.rows_nonfinite,
            "since": est.since,
            "score": _clean(est.score),
            "score_definition": "max over features of PSI(live decile histogram, training decile histogram)",
            "threshold": self.config.threshold,
            "min_rows": self.config.min_rows,
            "drifting": est.drifting,
            "top_features": [features[j] | {"index": j} for j in self._top(est)],
            "features": features,
            "config": asdict(self.config),
        }

    def _alarm(self, est: _Estimate) -> None:
        """Log one warning per crossing of the threshold; re-arm once the score has fallen back."""
        state = self._state
        with self._lock:
            armed = bool(state[_ARMED])
            fire = est.drifting and armed and est.since == state[_SINCE]  # not across a reset
            if fire:
                state[_ARMED] = 0.0
            elif not armed and est.score < self.config.rearm_ratio * self.config.threshold:
                state[_ARMED] = 1.0
        if fire:
            logger.warning(
                "model %r: %s drift score %.3f crossed the threshold %.3f (on %.0f effective rows, "
                "%d seen); most shifted: %s",
                self.name,
                self.watches,
                est.score,
                self.config.threshold,
                est.rows_effective,
                est.rows,
                ", ".join(self.feature_names[j] for j in self._top(est)),
            )


# Layout of DriftMonitor._state: five scalars, then the sums.
_ROWS, _NONFINITE, _SINCE, _LAST_CHECK, _ARMED, _HEAD = range(6)


class _FileLock:
    """A file of ``size`` bytes mapped into memory, and a lock across threads (a mutex) and processes (flock).

    The file is created zero-filled if missing; every process that opens the same path sees the same bytes.
    """

    def __init__(self, path: Path, size: int) -> None:
        self._thread_lock = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._fd).st_size != size:  # new (or from another model layout): start from zeros
                os.ftruncate(self._fd, 0)
                os.ftruncate(self._fd, size)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self.map = mmap.mmap(self._fd, size)

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()


def _clean(value: float | np.floating) -> float:
    """``value`` to 13 significant digits, for the report: float64 carries 15-17, and sums over many rows leave
    noise in the last of them (``0.30000000000000004`` reads ``0.3``, ``14333.666889000036`` ``14333.666889``)."""
    return float(f"{float(value):.13g}")


class _Decay:
    """Per-row exponential forgetting, horizon ``h`` rows (``lam = 1 - 1/h``), in closed form per batch."""

    _CACHE = 4096  # batches up to this size reuse precomputed weights

    def __init__(self, h: float) -> None:
        self.lam = 1.0 - 1.0 / h
        self._powers = self.lam ** np.arange(self._CACHE - 1, -1, -1, dtype=np.float64)  # lam**(C-1)..lam**0

    def weights(self, n: int) -> np.ndarray:
        """``lam**(n-1-i)`` for the rows ``i = 0..n-1`` of a batch, as float64 ``(n,)``."""
        if n <= self._CACHE:
            return self._powers[self._CACHE - n :]
        return self.lam ** np.arange(n - 1, -1, -1, dtype=np.float64)

    def sums(self, rows: int) -> tuple[float, float]:
        """Sum of the weights of the last ``rows`` rows, and of their squares (geometric series)."""
        lam = self.lam
        a = lam**rows
        return (1.0 - a) / (1.0 - lam), (1.0 - a * a) / (1.0 - lam * lam)


@dataclass(frozen=True)
class _Estimate:
    rows: int
    rows_nonfinite: int
    since: float
    rows_effective_moments: float
    rows_effective: float
    mean_live: np.ndarray | None
    std_live: np.ndarray | None
    mean_shift: np.ndarray
    psi: np.ndarray
    score: float
    drifting: bool
