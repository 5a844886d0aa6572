"""Hidden-layer statistics in the contract, and `python -m training adapt` (AdaBN on the served graph)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import contract as C
from training import adapt as A
from training import export as E
from training.data import load_digits
from training.layers import BatchNorm
from training.network import MLP, BlockStats
from training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]


def preactivations(net: MLP, x: np.ndarray) -> list[np.ndarray]:
    """Each hidden block's test-time pre-activation (after BN), from the network's own forward."""
    seen: list[BlockStats] = []
    net.forward(x, training=False, stats=seen)
    return [s.preactivation for s in seen]


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits):
    """A digits model good enough for accuracy to mean something (about 0.96 on the test split)."""
    return train(digits, hidden=(64, 64), config=TrainConfig(epochs=30, seed=0), progress=False)


def dim(X: np.ndarray) -> np.ndarray:
    """A covariate shift of the digits: half the contrast on a grey background (per-pixel affine)."""
    return 0.5 * X + 4.0


def write_rows(path: Path, names: list[str], X: np.ndarray) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows(X.tolist())
    return path


def run_adapt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", "adapt", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def accuracy(path: Path, X: np.ndarray, y: np.ndarray) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((sess.run(["label"], {"input": X.astype(np.float32)})[0] == y).mean())


def test_hidden_stats_match_a_numpy_forward_of_the_training_split(trained, digits):
    """The recorded per-unit statistics are BN's test-time output on the training split, computed here with
    the unfolded network (standardize -> Linear -> BatchNorm), not with the folded weights export uses."""
    mc = E.make_contract(trained)
    Xtr = digits.X[trained.split.train]
    zs = preactivations(trained.model.net, trained.model.standardizer(Xtr))
    assert [h.name for h in mc.hidden_stats] == ["layer0", "layer1"]
    for h, z in zip(mc.hidden_stats, zs, strict=True):
        z = z.astype(np.float64)  # (N, 64)
        assert h.stats.rows == len(Xtr) and h.stats.n_columns == 64
        np.testing.assert_allclose(h.stats.mean, z.mean(axis=0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(h.stats.std, z.std(axis=0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(
            h.stats.decile_edges, np.quantile(z, np.arange(1, 10) / 10, axis=0).T, atol=1e-4
        )
        freqs = np.asarray(h.stats.decile_freqs)
        np.testing.assert_allclose(freqs.sum(axis=1), 1.0)
        # continuous units: each decile bin holds a tenth of the training rows (up to one row of rounding)
        assert np.abs(freqs - 0.1).max() <= 1.5 / len(Xtr)
    # and in closed form from the pre-BN activations: BN is the affine map gamma (z - mu_run) / sd_run + beta
    bn0 = trained.model.net.blocks[0].bn
    assert isinstance(bn0, BatchNorm)
    pre = trained.model.standardizer(Xtr) @ trained.model.net.blocks[0].linear.W.astype(np.float64)  # (N, 64)
    sd_run = np.sqrt(bn0.running_var.astype(np.float64) + bn0.eps)
    np.testing.assert_allclose(
        mc.hidden_stats[0].stats.mean,
        bn0.beta + bn0.gamma * (pre.mean(axis=0) - bn0.running_mean) / sd_run,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        mc.hidden_stats[0].stats.std, np.abs(bn0.gamma) * pre.std(axis=0) / sd_run, rtol=1e-4
    )


def test_served_graph_returns_hidden_outputs_only_when_asked(trained, digits):
    mc = E.make_contract(trained)
    folded = E.build_folded(E.fold_model(trained.model), mc, 1)
    sess = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"])
    X = digits.X[trained.split.test][:50]
    zs = preactivations(trained.model.net, trained.model.standardizer(X))
    outs = sess.run([h.output for h in mc.hidden_stats], {"input": X.astype(np.float32)})
    for z_onnx, z in zip(outs, zs, strict=True):
        np.testing.assert_allclose(z_onnx, z, atol=1e-4)
    # the client's outputs alone still come first, unchanged
    assert [o.name for o in sess.get_outputs()][:2] == ["probabilities", "label"]
    parsed = C.ModelContract.from_metadata(dict(sess.get_modelmeta().custom_metadata_map))
    assert (
        parsed.hidden_stats == mc.hidden_stats
        and C.ModelContract.from_metadata(parsed.to_metadata()) == parsed
    )


def test_contract_rejects_bad_hidden_stats(trained, digits):
    good = E.make_contract(trained).to_metadata()
    for value, message in [
        ("{}", "must be a JSON list"),
        ('[{"name": "layer0"}]', "output must be a non-empty string"),
        (
            '[{"name": "a", "output": "label", "mean": [0], "std": [1], "decile_edges": [[0,0,0,0,0,0,0,0,0]], '
            '"decile_freqs": [[1,0,0,0,0,0,0,0,0,0]], "rows": 3}]',
            "distinct",
        ),
        (
            '[{"name": "a", "output": "h", "mean": [0], "std": [-1], "decile_edges": [[0,0,0,0,0,0,0,0,0]], '
            '"decile_freqs": [[1,0,0,0,0,0,0,0,0,0]], "rows": 3}]',
            "negative",
        ),
    ]:
        with pytest.raises(C.ContractError, match=message):
            C.ModelContract.from_metadata({**good, C.KEY_HIDDEN_STATS: value})


def test_correction_matches_batchnorm_reestimated_on_the_network():
    """Folded AdaBN equals re-estimating a BN layer's population statistics in the unfolded network."""
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 4))
    bn = BatchNorm(4, dtype=np.float64)
    bn.gamma[:], bn.beta[:] = rng.uniform(0.5, 2, 4), rng.standard_normal(4)
    x_train = rng.standard_normal((4000, 5))
    x_live = 3.0 * rng.standard_normal((4000, 5)) + 1.0  # shifted and scaled
    bn.running_mean[:], bn.running_var[:] = (x_train @ W).mean(axis=0), (x_train @ W).var(axis=0)
    y_train = bn.forward(x_train @ W, training=False)  # what the folded Gemm computes on training rows
    # the network's AdaBN: BN's statistics re-estimated on the live rows
    bn.running_mean[:], bn.running_var[:] = (x_live @ W).mean(axis=0), (x_live @ W).var(axis=0)
    expected = bn.forward(x_live @ W, training=False)
    bn.running_mean[:], bn.running_var[:] = (x_train @ W).mean(axis=0), (x_train @ W).var(axis=0)
    y_live = bn.forward(x_live @ W, training=False)  # the served (unadapted) layer on live rows
    corr = A.Correction.matching(y_live, y_train.mean(axis=0), y_train.std(axis=0))
    np.testing.assert_allclose(corr(y_live), expected, atol=1e-4)  # equal up to BN's eps


def test_adapt_recovers_accuracy_on_shifted_digits(trained, digits, tmp_path):
    """On dimmed digits the served model drops to chance; adapting on unlabeled dimmed training rows brings it
    back. Measured with this model: 0.963 unshifted, 0.100 dimmed, 0.963 after adapting on 1000 rows."""
    E.export(trained, tmp_path / "models", "digits")
    sp = trained.split
    rows = write_rows(tmp_path / "live.csv", digits.feature_names, dim(digits.X[sp.train][:1000]))
    r = run_adapt("--repository", str(tmp_path / "models"), "--name", "digits", "--rows", str(rows))
    assert r.returncode == 0, r.stderr
    assert f"wrote {tmp_path}/models/digits/2/model.onnx (parent version 1)" in r.stdout
    assert "verified on 1000 rows" in r.stdout

    Xt, yt = digits.X[sp.test], digits.y[sp.test]
    v1, v2 = tmp_path / "models/digits/1/model.onnx", tmp_path / "models/digits/2/model.onnx"
    clean, shifted, adapted = accuracy(v1, Xt, yt), accuracy(v1, dim(Xt), yt), accuracy(v2, dim(Xt), yt)
    assert shifted < 0.5 and clean > 0.9
    assert adapted >= clean - 0.01

    mc = C.ModelContract.from_metadata({p.key: p.value for p in onnx.load(str(v2)).metadata_props})
    ad = mc.adaptation
    assert ad["parent_version"] == 1 and ad["rows"] == 1000 and ad["scope"] == "all" and ad["date"]
    assert ad["drift_score_before"] > 0.25  # the rows were shifted
    # the new version's reference distribution is the adaptation sample's
    np.testing.assert_allclose(mc.input_stats.mean, dim(digits.X[sp.train][:1000]).mean(axis=0))
    assert [h.name for h in mc.hidden_stats] == ["layer0", "layer1"]
    assert (
        mc.training
        == C.ModelContract.from_metadata({p.key: p.value for p in onnx.load(str(v1)).metadata_props}).training
    )


def test_adapt_inputs_only_is_the_standardization(trained, digits):
    """With scope "inputs" only the first Gemm changes, and it equals refitting the standardizer's affine map."""
    mc = E.make_contract(trained)
    layers = E.fold_model(trained.model)
    X = dim(digits.X[trained.split.train])
    ad = A.adapt_layers(layers, mc.input_stats, mc.hidden_stats, X, mc.task, scope="inputs")
    assert all(c is None for c in ad.hidden)
    for old, new in zip(layers[1:], ad.layers[1:]):
        assert old is new
    # x -> (x - m_live) / s_live * s_train + m_train on varying pixels: the live rows get the training moments
    corrected = ad.inputs(X)
    varying = np.asarray(mc.input_stats.std) > 0
    np.testing.assert_allclose(
        corrected.mean(axis=0)[varying], np.asarray(mc.input_stats.mean)[varying], atol=1e-9
    )
    np.testing.assert_allclose(
        corrected.std(axis=0)[varying], np.asarray(mc.input_stats.std)[varying], atol=1e-9
    )


@pytest.fixture(scope="module")
def repo(trained, digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt-refusals")
    E.export(trained, root / "models", "digits")
    return root


def test_adapt_refuses_too_few_rows(repo, digits):
    rows = write_rows(repo / "few.csv", digits.feature_names, digits.X[:12])
    r = run_adapt("--repository", str(repo / "models"), "--name", "digits", "--rows", str(rows))
    assert r.returncode == 2 and r.stdout == ""
    assert (
        r.stderr
        == f"error: {rows}: 12 rows; adaptation needs at least {A.MIN_ROWS} to estimate each unit's mean and standard deviation\n"
    )


def test_adapt_refuses_a_feature_mismatch(repo, digits):
    names = [*digits.feature_names[:-1], "colour"]
    rows = write_rows(repo / "other.csv", names, digits.X[:200])
    r = run_adapt("--repository", str(repo / "models"), "--name", "digits", "--rows", str(rows))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == (
        f"error: {rows}: the columns do not match the model's 64 features (missing pixel_7_7; unexpected colour)\n"
    )
    assert not (repo / "models" / "digits" / "2").exists()


def test_adapt_refuses_a_model_without_batchnorm(digits, tmp_path):
    plain = train(digits, hidden=(16,), batchnorm=False, config=TrainConfig(epochs=2), progress=False)
    E.export(plain, tmp_path / "models", "plain")
    rows = write_rows(tmp_path / "live.csv", digits.feature_names, digits.X[:200])
    r = run_adapt("--repository", str(tmp_path / "models"), "--name", "plain", "--rows", str(rows))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == (
        f"error: {tmp_path}/models/plain/1/model.onnx: the model has no Batch Norm layers (trained with "
        "--no-batchnorm); adaptation re-estimates Batch Norm statistics\n"
    )


def test_adapt_refuses_unknown_models_and_bad_cells(repo, digits):
    rows = write_rows(repo / "ok.csv", digits.feature_names, digits.X[:200])
    r = run_adapt("--repository", str(repo / "models"), "--name", "nope", "--rows", str(rows))
    assert r.returncode == 2 and r.stderr == f"error: {repo}/models/nope: no such model in the repository\n"
    bad = repo / "bad.csv"
    bad.write_text(rows.read_text().replace("\n0.0,", "\nabc,", 1))
    r = run_adapt("--repository", str(repo / "models"), "--name", "digits", "--rows", str(bad))
    assert (
        r.returncode == 2
        and r.stderr == f"error: {bad}: row 0 (line 2), column 'pixel_0_0' is not a finite number: 'abc'\n"
    )


def test_the_verification_catches_a_wrong_adapted_fold(trained, digits):
    """Within the float32 tolerance of the adapted graph, a fold that forgot one pixel's correction is
    refused; the right fold passes."""
    mc = E.make_contract(trained)
    layers = E.fold_model(trained.model)
    X = dim(digits.X[trained.split.train]).astype(np.float32).astype(np.float64)
    ad = A.adapt_layers(layers, mc.input_stats, mc.hidden_stats, X, mc.task)
    unfolded = A.build_corrected(layers, ad, mc, 2)
    truth = ad.output(X)
    report = E.verify(E.build_folded(ad.layers, mc, 2), unfolded, truth, ad.layers, None, mc, X)
    assert report["folded_share_of_tolerance"] < 0.5
    j = 36  # pixel_4_4, in the middle of every digit
    forgot = A.Correction(ad.inputs.alpha.copy(), ad.inputs.delta.copy())
    forgot.alpha[j], forgot.delta[j] = 1.0, 0.0
    wrong = A.fold_corrections(layers, forgot, ad.hidden)
    with pytest.raises(E.ExportError, match="verification failed"):
        E.verify(E.build_folded(wrong, mc, 2), unfolded, truth, wrong, None, mc, X)
