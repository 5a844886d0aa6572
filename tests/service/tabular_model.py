"""A model trained on a real-looking table (text, boolean, date and missing cells), and its float64 truth.

Shared by the service's tests of categorical features (``test_tabular.py``) and the live ones
(``tests/e2e/test_tabular_live.py``): the table is written, trained on and exported with the training package's
API (``load_csv``, ``train``, ``export``), as ``python -m training --csv`` does, and the truth is the trained
network evaluated in float64 on the design matrix the training side computes from raw values
(``FeatureEncoder.design``): independent of onnxruntime and of the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import contract as C
from training import export as E
from training import precision as P
from training.data import load_csv
from training.tables import FeatureEncoder
from training.train import TrainConfig, TrainResult, train

NAME = "gems"


def write_table(path: Path, n: int = 240) -> Path:
    """Numbers with and without missing cells, text with and without NA, a yes/no column, an ISO date."""
    rng = np.random.default_rng(5)
    cut = rng.choice(["Fair", "Good", "Ideal", "Premium"], n)
    colour = rng.choice(["D", "E", "F"], n)
    carat = rng.gamma(2.0, 0.4, n)
    depth = rng.normal(61.8, 1.4, n)
    table = rng.normal(57.0, 2.0, n)
    boxed = rng.choice(["yes", "no"], n)
    price = 3000 * carat + 400 * (cut == "Ideal") + 300 * (boxed == "yes") + rng.normal(0, 300, n)
    label = np.where(price > np.median(price), "high", "low")
    lines = ["carat,depth,table,cut,colour,boxed,sold,band"]
    for i in range(n):
        c = "" if i % 17 == 5 else f"{carat[i]:.2f}"
        d = "NA" if i % 23 == 7 else f"{depth[i]:.1f}"
        k = "NA" if i % 31 == 4 else cut[i]
        sold = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}"
        lines.append(f"{c},{d},{table[i]:.1f},{k},{colour[i]},{boxed[i]},{sold},{label[i]}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class TabularModel:
    """The exported model (in ``root/gems/1``), its contract and the trained network."""

    root: Path
    result: TrainResult
    contract: C.ModelContract

    def expected(self, x: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)`` of raw rows (``x`` numbers with NaN, ``s`` strings with "") in float64."""
        design = FeatureEncoder(self.contract.inputs).design(np.asarray(x, np.float64), s)
        return P.softmax64(E.network64(self.result.model, design))


def train_tabular_model(root: Path) -> TabularModel:
    """Train a small network on :func:`write_table`'s table and export it into the repository ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    ds = load_csv(write_table(root.parent / f"{NAME}.csv"), "band")
    result = train(ds, hidden=(16,), config=TrainConfig(epochs=40, seed=0), progress=False)
    report = E.export(result, root, NAME)
    from onnx import load  # the test side may use onnx; the service never does

    model = load(str(report.path))
    mc = C.ModelContract.from_metadata({p.key: p.value for p in model.metadata_props})
    return TabularModel(root, result, mc)
