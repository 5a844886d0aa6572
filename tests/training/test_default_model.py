"""The committed default model is what `python -m training` makes, and it meets the accuracy target."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from contract import ModelContract
from training.data import load_digits
from training.train import train

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "models" / "digits" / "1" / "model.onnx"


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """`python -m training` with its defaults, into a temporary repository."""
    repo = tmp_path_factory.mktemp("repo")
    r = subprocess.run(
        [sys.executable, "-m", "training", "--quiet", "--repository", str(repo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert f"wrote {repo}/digits/1/model.onnx" in r.stdout and "test: loss" in r.stdout
    return repo / "digits" / "1" / "model.onnx"


def test_default_run_reaches_the_accuracy_target(fresh):
    meta = ModelContract.from_metadata(session(fresh).get_modelmeta().custom_metadata_map)
    assert meta.training["metrics"]["test"]["accuracy"] >= 0.97
    assert meta.training["seed"] == 0 and meta.training["model_config"]["hidden"] == [256, 256]


def test_committed_default_model_is_reproducible(fresh):
    new, old = session(fresh), session(COMMITTED)
    m_new = ModelContract.from_metadata(new.get_modelmeta().custom_metadata_map)
    m_old = ModelContract.from_metadata(old.get_modelmeta().custom_metadata_map)
    assert m_new.training["metrics"] == m_old.training["metrics"]
    assert m_new.input_stats == m_old.input_stats and m_new.feature_names == m_old.feature_names
    X = load_digits().X.astype(np.float32)
    p_new = new.run(["probabilities"], {"input": X})[0]
    p_old = old.run(["probabilities"], {"input": X})[0]
    assert np.abs(p_new - p_old).max() <= 1e-6


def test_same_seed_same_numbers(fresh):
    """An in-process run with the defaults repeats the command line's numbers exactly."""
    meta = ModelContract.from_metadata(session(fresh).get_modelmeta().custom_metadata_map)
    again = train(load_digits(), progress=False)
    assert again.metrics == meta.training["metrics"]
    assert len(again.history) == meta.training["epochs_run"]
