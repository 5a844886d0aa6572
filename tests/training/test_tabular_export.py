"""Real tables end to end: a year column exports (with the mean subtracted in the graph), a table with text,
boolean, date and missing cells trains, exports, and its graph matches the float64 network from raw values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import contract as C
from training import export as E
from training import precision as P
from training.data import load_csv
from training.tables import FeatureEncoder
from training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]


def year_table(path: Path, n: int = 400) -> Path:
    """Breast-cancer-like measurements (means far from zero, varied spreads) and a 2023/2024 year column."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    radius = rng.normal(14 + 3 * y, 3.5)
    area = rng.normal(650 + 300 * y, 300)
    smooth = rng.normal(0.096 + 0.01 * y, 0.014)
    year = rng.integers(2023, 2025, n)
    lines = ["mean radius,mean area,smoothness,year,diagnosis"]
    lines += [
        f"{r:.3f},{a:.1f},{s:.5f},{yr},{'MB'[t]}" for r, a, s, yr, t in zip(radius, area, smooth, year, y)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def mixed_table(path: Path, n: int = 300) -> Path:
    """Numbers with missing cells, a text column (with an NA), a yes/no column and an ISO date column."""
    rng = np.random.default_rng(3)
    cut = rng.choice(["Fair", "Good", "Ideal", "Premium"], n)
    carat = rng.gamma(2.0, 0.4, n)
    depth = rng.normal(61.8, 1.4, n)
    boxed = rng.choice(["yes", "no"], n)
    price = 3000 * carat + 400 * (cut == "Ideal") + 300 * (boxed == "yes") + rng.normal(0, 300, n)
    label = np.where(price > np.median(price), "high", "low")
    lines = ["carat,depth,cut,boxed,sold,band"]
    for i in range(n):
        c = "" if i % 17 == 5 else f"{carat[i]:.2f}"
        d = "NA" if i % 23 == 7 else f"{depth[i]:.1f}"
        k = "NA" if i % 31 == 4 else cut[i]
        lines.append(f"{c},{d},{k},{boxed[i]},2024-{1 + i % 12:02d}-{1 + i % 28:02d},{label[i]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_year_column_exports_with_the_mean_subtracted_in_the_graph(tmp_path):
    ds = load_csv(year_table(tmp_path / "cancer.csv"), "diagnosis")
    res = train(ds, hidden=(32, 32), config=TrainConfig(epochs=15, seed=0), progress=False)
    report = E.export(res, tmp_path / "repo", "cancer")
    assert report.verification["centred"] == 1.0
    model = onnx.load(str(report.path))
    ops = [n.op_type for n in model.graph.node]
    assert ops[:2] == ["Sub", "Gemm"] and "BatchNormalization" not in ops
    mc = C.ModelContract.from_metadata({p.key: p.value for p in model.metadata_props})
    note = mc.training["standardization"]
    assert note["mean"].startswith("subtracted") and note["worst_feature"] == "year"
    assert note["max_bits_lost_if_folded"] > 11
    # Served outputs against the trained network in float64, on held-out rows.
    x = res.held_out.astype(np.float32)
    sess = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    served = sess.run(["probabilities"], {"input": x})[0]
    truth = P.softmax64(E.network64(res.model, x.astype(np.float64)))
    centred_err = float(np.abs(served - truth).max())
    assert centred_err < 2e-6
    # Folding the year into the first layer (the old graph) is several times less precise on the same rows.
    layers = E.fold_model(res.model)
    folded = E.build_folded(layers, E.make_contract(res), 1)
    folded_err = float(np.abs(E.run_onnxruntime(folded, {"input": x})["probabilities"] - truth).max())
    assert folded_err > 3 * centred_err


def test_the_command_line_exports_the_year_table(tmp_path):
    path = year_table(tmp_path / "cancer.csv")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "--csv",
            str(path),
            "--target",
            "diagnosis",
            "--quiet",
            "--epochs",
            "5",
            "--hidden",
            "16",
            "--repository",
            str(tmp_path / "m"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "the graph subtracts the mean itself" in r.stdout
    assert (tmp_path / "m" / "cancer" / "1" / "model.onnx").is_file()


def test_a_corrupted_centred_fold_is_refused(tmp_path, monkeypatch):
    ds = load_csv(year_table(tmp_path / "cancer.csv"), "diagnosis")
    res = train(ds, hidden=(16,), config=TrainConfig(epochs=3, seed=0), progress=False)
    real = E.fold_model

    def corrupted(model, centre=None):
        layers = real(model, centre)
        b = layers[0].b.copy()
        b += 1e-3 * (1 + np.abs(b))  # a small slip in the folded biases, as a wrong centre would make
        return [P.Affine(layers[0].W, b, layers[0].activation), *layers[1:]]

    monkeypatch.setattr(E, "fold_model", corrupted)
    with pytest.raises(E.ExportError, match=r"the folded graph in onnxruntime: .*x the float32 bound"):
        E.export(res, tmp_path / "repo", "cancer")
    assert not (tmp_path / "repo" / "cancer").exists()


def test_text_boolean_date_and_missing_cells_train_export_and_match_the_network(tmp_path):
    ds = load_csv(mixed_table(tmp_path / "gems.csv"), "band", missing_indicator=True)
    assert any("'sold': dates" in n for n in ds.notices)
    res = train(ds, hidden=(32, 16), config=TrainConfig(epochs=10, seed=0), progress=False)
    assert res.metrics["test"]["accuracy"] > 0.75
    report = E.export(res, tmp_path / "repo", "gems")
    model = onnx.load(str(report.path))
    mc = C.ModelContract.from_metadata({p.key: p.value for p in model.metadata_props})
    assert mc.numeric_names == ["carat", "depth"] and mc.categorical_names == ["cut", "boxed"]
    specs = {s.name: s for s in mc.inputs}
    assert specs["cut"].categories == ["Fair", "Good", "Ideal", "Premium"] and specs["cut"].impute is not None
    assert specs["boxed"].kind == C.KIND_BOOLEAN and specs["boxed"].impute is None
    assert specs["carat"].missing_indicator and specs["carat"].missing_rate > 0
    assert len(mc.input_stats.mean) == 2
    # Raw values as a client sends them: missing numbers, a missing and an unknown category.
    x = np.array([[0.8, 61.0], [np.nan, 62.5], [1.6, np.nan], [2.4, 60.1]], dtype=np.float32)
    s = np.array([["Ideal", "true"], ["", "false"], ["Superb", "true"], ["Fair", "false"]], dtype=object)
    sess = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input", "categorical"]
    served = sess.run(["probabilities"], {"input": x, "categorical": s})[0]
    design = FeatureEncoder(mc.inputs).design(x.astype(np.float64), s)
    truth = P.softmax64(E.network64(res.model, design))
    np.testing.assert_allclose(served, truth, rtol=0, atol=2e-6)
    ref = ReferenceEvaluator(model).run(["probabilities"], {"input": x, "categorical": s})[0]
    np.testing.assert_allclose(ref, truth, rtol=0, atol=2e-6)
