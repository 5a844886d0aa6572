"""A model trained on a real-looking table (text, boolean, date and missing cells), and its float64 truth.

Shared by the service's tests of categorical features (``test_tabular.py``) and the live ones
(``tests/e2e/test_tabular_live.py``): the table is written, trained on and exported with the training package's
API (``load_csv``, ``train``, ``export``), as ``python -m training --csv`` does, and the truth is the trained
network evaluated in float64 on the design matrix the training side computes from raw values
(``FeatureEncoder.design``): independent of onnxruntime and of the service.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

import contract as C
from training import export as E
from training import precision as P
from training.data import load_csv
from training.tables import FeatureEncoder
from training.train import TrainConfig, TrainResult, train

NAME = "gems"


def _load_example() -> ModuleType:
    """``docs/examples/make_gems_csv.py``, the README's table: one generator for the docs and the tests."""
    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "make_gems_csv.py"
    spec = importlib.util.spec_from_file_location("make_gems_csv", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Numbers with and without missing cells, text with and without NA, a yes/no column, an ISO date.
write_table = _load_example().write_table


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
    ds = load_csv(write_table(root.parent / f"{NAME}.csv", 240), "band")
    result = train(ds, hidden=(16,), config=TrainConfig(epochs=40, seed=0), progress=False)
    report = E.export(result, root, NAME)
    from onnx import load  # the test side may use onnx; the service never does

    model = load(str(report.path))
    mc = C.ModelContract.from_metadata({p.key: p.value for p in model.metadata_props})
    return TabularModel(root, result, mc)
