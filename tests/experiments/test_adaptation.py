"""The adaptation experiment: a quick run end to end, its analysis helpers against closed forms."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import adaptation as X


def test_spearman_against_closed_forms():
    assert X.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert X.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their average rank: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3)
    r = np.array([0, 1.5, 1.5, 3])
    assert X.spearman([1, 2, 2, 5], [1, 2, 3, 4]) == pytest.approx(np.corrcoef(r, np.arange(4))[0, 1])
    assert np.isnan(X.spearman([1, 1, 1], [1, 2, 3]))


def test_translation_moves_pixels_and_fills_the_background():
    ctx = X.ShiftContext(lo=0.0, hi=16.0, mean=5.0, image_width=4)
    img = np.arange(8, dtype=float).reshape(1, 8)  # two rows of 4 pixels
    out = X._translate(img, 1, ctx)
    assert out.tolist() == [[0.0, 0.0, 1.0, 2.0, 0.0, 4.0, 5.0, 6.0]]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("adaptation")
    return X.run(out, X.QUICK, "test", progress=False), out


def test_quick_run_writes_the_report_and_the_plots(quick):
    data, out = quick
    for name in (
        "adaptation.md",
        "adaptation.json",
        "adaptation_methods.png",
        "adaptation_rows.png",
        "adaptation_scores.png",
    ):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "adaptation.json").read_text())["analysis"] == data["analysis"]
    report = (out / "adaptation.md").read_text()
    for v in data["analysis"]["verdicts"].values():
        assert v["claim"] in report and v["verdict"] in ("supported", "partly supported", "not supported")


def test_quick_run_measures_what_adabn_can_and_cannot_do(quick):
    """Even a small, briefly trained network shows the two robust facts: per-feature affine shifts are undone
    by re-estimating the standardization, an inversion is not."""
    data, _ = quick
    (res,) = data["results"]
    assert res["hidden_stats_check"] < 1e-9
    for p in res["points"]:
        best = max(p["adabn_all"]["100"]["mean"], p["adabn_inputs"]["100"]["mean"])
        if p["shift"] in X.AFFINE:
            assert p["served"] < res["clean"] - 0.3 and best > res["clean"] - 0.03
        if p["shift"] == "inversion":
            assert best < res["clean"] - 0.3
