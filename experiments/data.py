"""The experiments' two data sets, cut into a training and a test set: the bundled digits and MNIST-1D."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import TASK_CLASSIFICATION
from training.data import Dataset, Split, Standardizer, load_digits, split
from training.layers import Array

MNIST1D_PATH = Path(__file__).parent / "data" / "mnist1d.csv.gz"
MNIST1D_TRAIN_ROWS = 4000  # the package's default split: the first 80% of its 5,000 shuffled rows


@dataclass
class Prepared:
    """A dataset cut into a training and a test set, standardized on the training set, in float32.

    ``dataset`` and ``split`` are what :func:`training.train.train` is given, with no validation rows: the runs
    never stop early, and they record the test accuracy themselves.
    """

    name: str
    description: str
    Xtr: Array  # (N, F)
    ytr: Array  # (N,)
    Xte: Array  # (M, F)
    yte: Array  # (M,)
    n_classes: int
    dataset: Dataset
    split: Split

    @property
    def chance(self) -> float:
        """Test accuracy of always answering the most common test class."""
        return float(np.bincount(self.yte, minlength=self.n_classes).max() / len(self.yte))


def load_mnist1d() -> tuple[Array, Array]:
    """The bundled MNIST-1D: ``X`` (5000, 40) float64 and ``y`` (5000,) int64; rows 0..3999 are training."""
    raw = np.loadtxt(gzip.open(MNIST1D_PATH, "rt"), delimiter=",")  # (5000, 41)
    return raw[:, :-1], raw[:, -1].astype(np.int64)


def mnist1d_dataset() -> Dataset:
    """The bundled MNIST-1D as a classification :class:`training.data.Dataset` (features ``x0`` .. ``x39``)."""
    X, y = load_mnist1d()
    return Dataset(
        name="mnist1d",
        X=X,
        y=y,
        feature_names=[f"x{j}" for j in range(X.shape[1])],
        task=TASK_CLASSIFICATION,
        class_labels=list(range(10)),
        target_names=[],
        source="MNIST-1D (Greydanus 2020), bundled",
    )


def prepare(name: str) -> Prepared:
    """``digits`` (stratified 75/25 split, seed 0) or ``mnist1d`` (its published 4000/1000 split)."""
    if name == "digits":
        ds = load_digits()
        sp = split(ds, np.random.default_rng(0), val=0.05, test=0.25)  # no validation here: val joins train
        tr, te = np.concatenate([sp.train, sp.val]), sp.test
        desc = "UCI optical digits, 8x8 pixels (64 features), 10 classes; stratified 75/25 split (seed 0)"
    elif name == "mnist1d":
        ds = mnist1d_dataset()
        tr, te = np.arange(MNIST1D_TRAIN_ROWS), np.arange(MNIST1D_TRAIN_ROWS, len(ds.X))
        desc = "MNIST-1D (Greydanus 2020), 40 features, 10 classes; its default 4000/1000 split"
    else:
        raise ValueError(f"dataset must be 'digits' or 'mnist1d', got {name!r}")
    X, y = ds.X, ds.y
    std = Standardizer.fit(X[tr])
    return Prepared(
        name=name,
        description=f"{desc}: {len(tr)} training rows, {len(te)} test rows",
        Xtr=std(X[tr]).astype(np.float32),
        ytr=y[tr],
        Xte=std(X[te]).astype(np.float32),
        yte=y[te],
        n_classes=int(y.max()) + 1,
        dataset=ds,
        split=Split(train=tr, val=np.array([], dtype=np.int64), test=te),
    )
