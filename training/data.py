"""Datasets: the bundled digits, the user's CSV, stratified splits, input standardization and the description
of the data a model was trained on.

Bad data raises :class:`DataError` with one line that names the file, row and column (or one short block:
the first few bad cells and their count); the command line prints it and exits with status 2. Rows are counted from 0 over the data rows (the first row after the header
is row 0), as the service counts the rows of a request; the file line follows: ``row 5 (line 7)``.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from contract import TASK_CLASSIFICATION, TASK_REGRESSION, InputSpec, InputStats
from featurestats import input_statistics
from training.tables import Column, DataError, FeatureEncoder, read_table, row_label

__all__ = ["DataError", "Dataset", "Split", "Standardizer", "load_csv", "load_digits", "row_label", "split"]

DIGITS_PATH = Path(__file__).parent / "data" / "digits.csv.gz"
MIN_ROWS = 10
# A target with at most this many distinct integer values is taken for class labels when --task is omitted.
MAX_INFERRED_CLASSES = 20
# A feature whose training standard deviation is below this is constant: it is centred but not scaled.
STD_FLOOR = 1e-8


@dataclass
class Dataset:
    """Features ``X`` (``(N, F)``: float32 from a CSV, as a client sends them; float64 for digits) and
    targets ``y``.

    Classification: ``y`` holds int64 indices into ``class_labels`` (original values, sorted).
    Regression: ``y`` is float64 ``(N, T)``.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    task: str
    class_labels: list[str | int | float]
    target_names: list[str]
    source: str
    task_inferred: bool = False
    #: A CSV's feature columns as read (numbers with NaN, categories as text); ``X`` is their design matrix,
    #: re-encoded by :meth:`fitted` on the training rows. None for a dataset that is numbers only (digits).
    columns: list[Column] | None = None
    encoder: FeatureEncoder | None = None
    missing_indicator: bool = False
    notices: list[str] = field(default_factory=list)

    @property
    def n_outputs(self) -> int:
        return len(self.class_labels) if self.task == TASK_CLASSIFICATION else len(self.target_names)

    def fitted(self, train_rows: np.ndarray) -> Dataset:
        """This dataset with its encoding (medians, categories, their frequencies) fitted on ``train_rows``
        only, and ``X`` re-encoded with it; a numbers-only dataset is returned as it is."""
        if self.columns is None:
            return self
        encoder = FeatureEncoder.fit(self.columns, train_rows, self.missing_indicator)
        return replace(self, X=encoder.transform(self.columns), encoder=encoder)

    @property
    def n_numeric(self) -> int:
        """The numeric features, which lead the design matrix (then indicators, then one-hot blocks)."""
        if self.encoder is None:
            return self.X.shape[1]
        return sum(spec.is_numeric for spec in self.encoder.inputs)


def load_digits() -> Dataset:
    """The UCI optical handwritten digits bundled in the repo: 1,797 rows, 64 pixels (0..16), 10 classes."""
    raw = np.loadtxt(gzip.open(DIGITS_PATH, "rt"), delimiter=",")  # (1797, 65)
    names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    return Dataset(
        name="digits",
        X=raw[:, :-1],
        y=raw[:, -1].astype(np.int64),
        feature_names=names,
        task=TASK_CLASSIFICATION,
        class_labels=list(range(10)),
        target_names=[],
        source="UCI optical handwritten digits (Alpaydin & Kaynak 1998), bundled",
    )


def load_csv(
    path: str | Path,
    target: str,
    task: str | None = None,
    *,
    encoding: str | None = None,
    delimiter: str | None = None,
    features: Sequence[str] | None = None,
    drop: Sequence[str] = (),
    categorical: Sequence[str] = (),
    missing_indicator: bool = False,
) -> Dataset:
    """Load a CSV with a header row (dialect sniffed, see :mod:`training.tables`); ``target`` is predicted
    from the other useful columns, numeric, categorical or boolean."""
    table = read_table(
        path,
        target,
        encoding=encoding,
        delimiter=delimiter,
        features=features,
        drop=drop,
        categorical=categorical,
    )
    path = table.path
    n = table.n_rows
    if n < MIN_ROWS:
        raise DataError(f"{path}: {n} data rows, at least {MIN_ROWS} are needed")
    numeric_column = table.target.dtype.kind == "f"
    if numeric_column:  # read as numbers: decided in numpy, no Python object per row (big files)
        values = table.target
        targets: list[str] = []
        numeric: list[float | None] = []
        all_numeric = True
        integral = bool(np.all(values == np.round(values)))
        n_distinct = len(np.unique(values))
    else:
        targets = [str(v) for v in table.target]
        numeric = [_number(v) for v in targets]
        all_numeric = all(v is not None for v in numeric)
        integral = all_numeric and all(float(v).is_integer() for v in numeric if v is not None)
        n_distinct = len(set(targets))
    inferred = task is None
    if task is None:
        if all_numeric and (not integral or n_distinct > MAX_INFERRED_CLASSES):
            task = TASK_REGRESSION
        else:
            task = TASK_CLASSIFICATION
    encoder = FeatureEncoder.fit(table.columns, slice(None), missing_indicator)
    common = dict(
        source=str(path),
        task_inferred=inferred,
        columns=table.columns,
        encoder=encoder,
        missing_indicator=missing_indicator,
        notices=table.notices,
    )
    X = encoder.transform(table.columns)
    if task == TASK_REGRESSION:
        if not all_numeric:
            bad = next(i for i, v in enumerate(numeric) if v is None)
            raise DataError(
                f"{path}: {table.row_label(bad)}, target column {target!r} is not a number "
                f"({targets[bad][:40]!r}) but the task is regression"
            )
        y = (table.target if numeric_column else np.array(numeric, dtype=np.float64)).reshape(-1, 1)
        return Dataset(path.stem, X, y, table.names, task, [], [target], **common)  # type: ignore[arg-type]
    if task != TASK_CLASSIFICATION:
        raise DataError(f"task must be 'classification' or 'regression', got {task!r}")
    labels: list[str | int | float]
    if numeric_column:
        distinct, codes = np.unique(table.target, return_inverse=True)
        labels = [int(v) for v in distinct] if integral else [float(v) for v in distinct]
        if len(labels) < 2:
            raise DataError(
                f"{path}: target column {target!r} has a single class ({labels[0]!r}); at least 2 are needed"
            )
        y = codes.astype(np.int64).reshape(-1)
        return Dataset(path.stem, X, y, table.names, task, labels, [], **common)  # type: ignore[arg-type]
    if all_numeric:
        values_ = [float(v) for v in numeric if v is not None]
        keyed: list[str | int | float] = [int(v) if integral else v for v in values_]
        labels = sorted(set(keyed), key=float)
    else:
        keyed = list(targets)
        labels = sorted(set(targets))
    if len(labels) < 2:
        raise DataError(
            f"{path}: target column {target!r} has a single class ({labels[0]!r}); at least 2 are needed"
        )
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index[v] for v in keyed], dtype=np.int64)
    return Dataset(path.stem, X, y, table.names, task, labels, [], **common)  # type: ignore[arg-type]


def _number(text: str) -> float | None:
    """``float(text)`` for a finite number, else None."""
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


@dataclass
class Split:
    """Row indices of the three splits."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split(ds: Dataset, rng: np.random.Generator, val: float = 0.15, test: float = 0.15) -> Split:
    """Train/validation/test indices; stratified by class for classification (each class split alike)."""
    if ds.task == TASK_CLASSIFICATION:
        groups = [np.flatnonzero(ds.y == c) for c in range(len(ds.class_labels))]
    else:
        groups = [np.arange(len(ds.X))]
    parts: list[list[np.ndarray]] = [[], [], []]
    for g in groups:
        g = rng.permutation(g)
        n_test = round(len(g) * test)
        n_val = round(len(g) * val)
        parts[2].append(g[:n_test])
        parts[1].append(g[n_test : n_test + n_val])
        parts[0].append(g[n_test + n_val :])
    tr, va, te = (rng.permutation(np.concatenate(p)) for p in parts)
    if len(tr) < 2 or len(va) < 1 or len(te) < 1:
        raise DataError(
            f"{ds.source}: {len(ds.X)} rows are too few for a train/validation/test split "
            f"({len(tr)}/{len(va)}/{len(te)})"
        )
    return Split(tr, va, te)


#: Rows per chunk when a big matrix is reduced or standardized: float64 work arrays of a chunk only.
CHUNK_ROWS = 1 << 16


@dataclass(frozen=True)
class Standardizer:
    """``(x - mean) / std`` per feature, fitted on the training split; constant features keep ``std = 1``.

    ``mean`` and ``std`` are float64 whatever the features' type; :meth:`fit` and :meth:`apply` work through
    a big matrix in chunks of rows, so they never hold a float64 copy of it.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray, rows: np.ndarray | None = None) -> Standardizer:
        """Mean and (population) standard deviation of ``X[rows]`` (all rows by default), in float64."""
        idx = np.arange(len(X)) if rows is None else rows
        n = len(idx)
        if n <= CHUNK_ROWS:  # one chunk: numpy's own pairwise sums
            part = X[idx]
            std = part.std(axis=0, dtype=np.float64)
            return cls(mean=part.mean(axis=0, dtype=np.float64), std=np.where(std < STD_FLOOR, 1.0, std))
        chunks = [idx[i : i + CHUNK_ROWS] for i in range(0, n, CHUNK_ROWS)]
        total = np.zeros(X.shape[1])
        for c in chunks:
            total += X[c].sum(axis=0, dtype=np.float64)
        mean = total / max(n, 1)
        squares = np.zeros(X.shape[1])
        for c in chunks:  # two passes: the sum of squared deviations, not the cancelling E[x²] - E[x]²
            squares += ((X[c] - mean) ** 2).sum(axis=0)
        std = np.sqrt(squares / max(n, 1))
        return cls(mean=mean, std=np.where(std < STD_FLOOR, 1.0, std))

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.std

    def apply(self, X: np.ndarray, rows: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """``self(X[rows])`` in ``dtype`` ``(len(rows), F)``, computed in float64 chunk by chunk."""
        out = np.empty((len(rows), X.shape[1]), dtype)
        for i in range(0, len(rows), CHUNK_ROWS):
            out[i : i + CHUNK_ROWS] = self(X[rows[i : i + CHUNK_ROWS]])
        return out


@dataclass(frozen=True)
class DataDescription:
    """What a model was trained on, as its exported contract describes it: the features, the task and its
    classes or targets, and the training split's input statistics (the reference for drift monitoring)."""

    name: str
    source: str
    task: str
    feature_names: list[str]
    class_labels: list[str | int | float]
    target_names: list[str]
    input_stats: InputStats  # of the numeric features (after imputation)
    rows: dict[str, int]  # per split: train, val, test
    inputs: list[InputSpec] = field(default_factory=list)  # per feature: kind, categories, imputation
    design_names: list[str] = field(default_factory=list)  # per column of the network's input

    @classmethod
    def of(cls, ds: Dataset, sp: Split) -> DataDescription:
        """The description of ``ds`` trained on ``sp``; input statistics from the training rows only."""
        return cls(
            name=ds.name,
            source=ds.source,
            task=ds.task,
            feature_names=list(ds.feature_names),
            class_labels=list(ds.class_labels),
            target_names=list(ds.target_names),
            input_stats=input_statistics(ds.X[sp.train][:, : ds.n_numeric]),
            rows={"train": len(sp.train), "val": len(sp.val), "test": len(sp.test)},
            inputs=list(ds.encoder.inputs) if ds.encoder else [],
            design_names=ds.encoder.design_names if ds.encoder else [],
        )
