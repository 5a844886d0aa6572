"""Datasets: the bundled digits, the user's CSV, stratified splits, input standardization and the description
of the data a model was trained on.

Bad data raises :class:`DataError` with one line that names the file, row and column; the command line
prints it and exits with status 2. Rows are counted from 0 over the data rows (the first row after the header
is row 0), as the service counts the rows of a request; the file line follows: ``row 5 (line 7)``.
"""

from __future__ import annotations

import csv
import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import TASK_CLASSIFICATION, TASK_REGRESSION, InputStats
from featurestats import input_statistics

DIGITS_PATH = Path(__file__).parent / "data" / "digits.csv.gz"
MIN_ROWS = 10
# A target with at most this many distinct integer values is taken for class labels when --task is omitted.
MAX_INFERRED_CLASSES = 20
# A feature whose training standard deviation is below this is constant: it is centred but not scaled.
STD_FLOOR = 1e-8


class DataError(ValueError):
    """Bad input data; the message is one line naming the file, row and column."""


@dataclass
class Dataset:
    """Features ``X`` (float64, ``(N, F)``) and targets ``y``.

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

    @property
    def n_outputs(self) -> int:
        return len(self.class_labels) if self.task == TASK_CLASSIFICATION else len(self.target_names)


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


def _number(text: str) -> float | None:
    """``float(text)`` for a finite number, else None."""
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def row_label(index: int, line: int) -> str:
    """``row 5 (line 7)``: rows count from 0 over the data rows, as the service counts a batch's rows; the
    file line (1-based, the header is line 1) is for the editor."""
    return f"row {index} (line {line})"


def load_csv(path: str | Path, target: str, task: str | None = None) -> Dataset:
    """Load a CSV with a header row; every column but ``target`` is a numeric feature."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            rows: list[tuple[int, list[str]]] = []  # (the file line the row starts on, its cells)
            end = 0
            for r in reader:
                rows.append((end + 1, r))
                end = reader.line_num  # counts the line breaks inside quoted cells too
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from None
    if not rows or not any(cell.strip() for cell in rows[0][1]):
        raise DataError(f"{path}: the file is empty (a header row is required)")
    header = [h.strip() for h in rows[0][1]]
    if target not in header:
        raise DataError(f"{path}: no column named {target!r} (columns: {', '.join(header)})")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{path}: duplicate column names {dup}")
    t = header.index(target)
    feature_idx = [j for j in range(len(header)) if j != t]
    if not feature_idx:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    body = [(line, r) for line, r in rows[1:] if any(cell.strip() for cell in r)]
    X = np.empty((len(body), len(feature_idx)))
    targets: list[str] = []
    for i, (line, r) in enumerate(body):
        if len(r) != len(header):
            raise DataError(f"{path}: {row_label(i, line)} has {len(r)} cells, the header has {len(header)}")
        for k, j in enumerate(feature_idx):
            cell = r[j].strip()
            if cell == "" or cell.lower() in {"nan", "na", "null"}:
                raise DataError(f"{path}: {row_label(i, line)}, column {header[j]!r} is empty or NaN")
            v = _number(cell)
            if v is None:
                raise DataError(
                    f"{path}: {row_label(i, line)}, column {header[j]!r} is not a finite number: {cell[:40]!r}"
                )
            X[i, k] = v
        cell = r[t].strip()
        if cell == "" or cell.lower() in {"nan", "na", "null"}:
            raise DataError(f"{path}: {row_label(i, line)}, target column {target!r} is empty or NaN")
        targets.append(cell)
    if len(body) < MIN_ROWS:
        raise DataError(f"{path}: {len(body)} data rows, at least {MIN_ROWS} are needed")

    numeric = [_number(v) for v in targets]
    all_numeric = all(v is not None for v in numeric)
    inferred = task is None
    if task is None:
        n_distinct = len(set(targets))
        if not all_numeric:
            task = TASK_CLASSIFICATION
        elif (
            all(float(v).is_integer() for v in numeric if v is not None)
            and n_distinct <= MAX_INFERRED_CLASSES
        ):
            task = TASK_CLASSIFICATION
        else:
            task = TASK_REGRESSION
    feature_names = [header[j] for j in feature_idx]
    if task == TASK_REGRESSION:
        if not all_numeric:
            bad = next(i for i, v in enumerate(numeric) if v is None)
            raise DataError(
                f"{path}: {row_label(bad, body[bad][0])}, target column {target!r} is not a number "
                f"({targets[bad][:40]!r}) "
                "but the task is regression"
            )
        y = np.array(numeric, dtype=np.float64).reshape(-1, 1)
        return Dataset(path.stem, X, y, feature_names, task, [], [target], str(path), inferred)
    if task != TASK_CLASSIFICATION:
        raise DataError(f"task must be 'classification' or 'regression', got {task!r}")
    labels: list[str | int | float]
    if all_numeric:
        values = [float(v) for v in numeric if v is not None]
        as_int = all(v.is_integer() for v in values)
        keyed: list[str | int | float] = [int(v) if as_int else v for v in values]
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
    return Dataset(path.stem, X, y, feature_names, task, labels, [], str(path), inferred)


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


@dataclass(frozen=True)
class Standardizer:
    """``(x - mean) / std`` per feature, fitted on the training split; constant features keep ``std = 1``."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        std = X.std(axis=0)
        return cls(mean=X.mean(axis=0), std=np.where(std < STD_FLOOR, 1.0, std))

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.std


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
    input_stats: InputStats
    rows: dict[str, int]  # per split: train, val, test

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
            input_stats=input_statistics(ds.X[sp.train]),
            rows={"train": len(sp.train), "val": len(sp.val), "test": len(sp.test)},
        )
