"""The confusion-matrix figure: written beside history.json when matplotlib is installed (it is, in the dev
extra), and its absence neither fails an export nor leaves a file."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from training import export as E
from training.data import load_digits
from training.plots import confusion_figure, confusion_png
from training.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained():
    return train(load_digits(), hidden=(16,), config=TrainConfig(epochs=2, seed=3), progress=False)


def test_export_draws_the_test_confusion_matrix(trained, tmp_path):
    report = E.export(trained, tmp_path, "digits")
    png = report.path.parent / E.CONFUSION_PNG
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(png)  # (H, W, 4) RGBA
    assert image.ndim == 3 and min(image.shape[:2]) > 300
    history = json.loads((report.path.parent / "history.json").read_text())
    assert history["evaluation"]["test"]["confusion_matrix"]["labels"] == [str(d) for d in range(10)]


def test_export_without_matplotlib_writes_no_figure(trained, tmp_path, monkeypatch):
    # None in sys.modules makes "import matplotlib..." raise ImportError, as on an install without the extra.
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    assert confusion_png(trained.evaluation["test"], "t") is None
    report = E.export(trained, tmp_path, "digits")
    assert sorted(p.name for p in report.path.parent.iterdir()) == ["history.json", "model.onnx"]


def test_the_figure_colours_rows_by_the_true_class_share():
    # Class "rare" has 2 rows, both right; "common" 98 rows, half wrong: its diagonal is the paler one.
    report = {
        "accuracy": 0.51,
        "balanced_accuracy": 0.75,
        "confusion_matrix": {"labels": ["common", "rare"], "rows_true_columns_predicted": [[49, 49], [0, 2]]},
    }
    fig = confusion_figure(report, "shares")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), [[0.5, 0.5], [0.0, 1.0]])
    assert [t.get_text() for t in ax.texts] == ["49", "49", "0", "2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["common", "rare"]
    assert "balanced accuracy 0.750" in ax.get_title()
