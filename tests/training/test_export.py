"""Export: the fold against closed forms, the ONNX graphs against numpy and onnx.reference, the contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import contract as C
from training import export as E
from training.data import load_csv, load_digits
from training.fold import fold_batchnorm, fold_output_scale, fold_standardization
from training.layers import BatchNorm
from training.train import TrainConfig, train


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def small(digits):
    """A small, quickly trained digits model (the fold does not care how well it learned)."""
    return train(digits, hidden=(32, 16), config=TrainConfig(epochs=4, seed=1), progress=False)


def test_fold_batchnorm_matches_closed_form():
    rng = np.random.default_rng(0)
    W, b = rng.standard_normal((5, 4)), rng.standard_normal(4)
    bn = BatchNorm(4, dtype=np.float64)
    bn.gamma[:], bn.beta[:] = rng.standard_normal(4), rng.standard_normal(4)
    bn.running_mean[:], bn.running_var[:] = rng.standard_normal(4), rng.uniform(0.1, 3, 4)
    x = rng.standard_normal((7, 5))
    W2, b2 = fold_batchnorm(W, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps, b)
    assert np.allclose(x @ W2 + b2, bn.forward(x @ W + b, training=False), atol=1e-12)
    s = bn.gamma / np.sqrt(bn.running_var + bn.eps)
    assert np.allclose(W2, W * s) and np.allclose(b2, bn.beta + (b - bn.running_mean) * s)
    _, b3 = fold_batchnorm(W, bn.gamma, bn.beta, bn.running_mean, bn.running_var, bn.eps)  # no bias
    assert np.allclose(b3, bn.beta - bn.running_mean * s)
    with pytest.raises(ValueError, match="gamma must have shape"):
        fold_batchnorm(W, np.ones(3), bn.beta, bn.running_mean, bn.running_var, 1e-5)


def test_fold_standardization_and_output_scale_match_closed_form():
    rng = np.random.default_rng(1)
    W, b = rng.standard_normal((3, 2)), rng.standard_normal(2)
    m, sd = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    x = rng.standard_normal((6, 3))
    W2, b2 = fold_standardization(W, b, m, sd)
    assert np.allclose(x @ W2 + b2, ((x - m) / sd) @ W + b, atol=1e-12)
    scale, shift = np.array([3.0, 0.5]), np.array([-1.0, 10.0])
    W3, b3 = fold_output_scale(W, b, scale, shift)
    assert np.allclose(x @ W3 + b3, (x @ W + b) * scale + shift)


def test_folded_matches_numpy_and_unfolded_reference(small, digits):
    contract = E.make_contract(small)
    folded = E.build_folded(E.fold_model(small.model), contract, 1)
    unfolded = E.build_unfolded(small.model, contract, 1)
    X = digits.X[small.split.test]
    served = E.run_onnxruntime(folded, {"input": X.astype(np.float32)})
    ref = dict(
        zip(
            ["probabilities", "label"],
            ReferenceEvaluator(unfolded).run(None, {"input": X.astype(np.float32)}),
        )
    )
    numpy_out = small.model.output(X)
    assert np.abs(served["probabilities"] - numpy_out).max() < 1e-5
    assert np.abs(served["probabilities"] - ref["probabilities"]).max() < 1e-5
    assert served["label"].dtype == np.int64 and np.array_equal(served["label"], ref["label"])
    assert np.allclose(served["probabilities"].sum(1), 1, atol=1e-6)
    assert {n.op_type for n in folded.graph.node} == {"Gemm", "Relu", "Softmax", "ArgMax"}
    assert "BatchNormalization" in {n.op_type for n in unfolded.graph.node}


def test_graph_interface(small, digits):
    folded = E.build_folded(E.fold_model(small.model), E.make_contract(small), 7)
    onnx.checker.check_model(folded, full_check=True)
    assert folded.opset_import[0].version >= 17 and folded.model_version == 7
    assert folded.producer_name == "bnserve" and folded.doc_string
    (inp,) = folded.graph.input
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 64
    outs = {o.name: o.type.tensor_type.elem_type for o in folded.graph.output}
    # the task's outputs first, then one extra output per hidden layer for the drift monitor
    assert [o.name for o in folded.graph.output] == ["probabilities", "label", "layer0.z", "layer1.z"]
    assert outs == {
        "probabilities": onnx.TensorProto.FLOAT,
        "label": onnx.TensorProto.INT64,
        "layer0.z": onnx.TensorProto.FLOAT,
        "layer1.z": onnx.TensorProto.FLOAT,
    }


def test_row_independence_in_onnxruntime(small, digits):
    folded = E.build_folded(E.fold_model(small.model), E.make_contract(small), 1)
    X = digits.X[:256].astype(np.float32)
    sess = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"])
    batch = sess.run(["probabilities"], {"input": X})[0]
    for i in (0, 1, 100, 255):
        alone = sess.run(["probabilities"], {"input": X[i : i + 1]})[0]
        assert np.abs(alone[0] - batch[i]).max() < 1e-6


def test_export_writes_the_repository_and_the_contract_round_trips(small, digits, tmp_path):
    r1 = E.export(small, tmp_path, "digits", unfolded_path=tmp_path / "unfolded.onnx")
    r2 = E.export(small, tmp_path, "digits")
    assert (r1.version, r2.version) == (1, 2)
    assert r1.path == tmp_path / "digits" / "1" / "model.onnx" and r2.path.is_file()
    assert 'platform: "onnxruntime_onnx"' in (tmp_path / "digits" / "config.pbtxt").read_text()
    history = json.loads((tmp_path / "digits" / "1" / "history.json").read_text())
    epochs = history["epochs"]
    assert (
        len(epochs) == len(small.history)
        and {"epoch", "lr", "train_loss", "val_accuracy"} <= epochs[0].keys()
    )
    test = history["evaluation"]["test"]
    assert sum(map(sum, test["confusion_matrix"]["rows_true_columns_predicted"])) == len(small.split.test)
    assert set(test["per_class"]) == {str(c) for c in range(10)}
    assert max(r1.verification["folded_vs_float64"], r1.verification["unfolded_vs_float64"]) < 1e-5
    assert r1.verification["folded_share_of_tolerance"] < 0.5 and r1.verification["centred"] == 0.0
    assert (tmp_path / "unfolded.onnx").is_file()
    # the service reads the contract through onnxruntime alone
    meta = ort.InferenceSession(str(r1.path), providers=["CPUExecutionProvider"]).get_modelmeta()
    parsed = C.ModelContract.from_metadata(meta.custom_metadata_map)
    assert C.ModelContract.from_metadata(parsed.to_metadata()) == parsed
    assert parsed.feature_names == digits.feature_names and parsed.class_labels == list(range(10))
    assert parsed.training["seed"] == 1 and parsed.training["bn_stats"] == "ewma"
    assert parsed.training["rows"] == {"train": 1259, "val": 269, "test": 269}
    assert np.allclose(parsed.input_stats.mean, digits.X[small.split.train].mean(0))


def test_verification_refuses_a_corrupted_fold(small, digits, tmp_path, monkeypatch):
    real = E.fold_model

    def corrupted(model, centre=None):
        layers = real(model, centre)
        bad = layers[0]
        W = bad.W.copy()
        W[:, 0] *= 1.01  # a 1% error in one unit's scale, as a wrong sqrt(var + eps) would make
        return [E.Affine(W, bad.b, bad.activation), *layers[1:]]

    monkeypatch.setattr(E, "fold_model", corrupted)
    with pytest.raises(E.ExportError, match="verification failed"):
        E.export(small, tmp_path, "digits")
    assert not (tmp_path / "digits").exists()


def test_regression_and_variants_export_exactly(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3))
    y = 100 + 30 * np.sin(X[:, 0]) + 5 * X[:, 1] * X[:, 2]
    path = tmp_path / "reg.csv"
    path.write_text("a,b,c,y\n" + "\n".join(",".join(f"{v:.6f}" for v in (*x, t)) for x, t in zip(X, y)))
    ds = load_csv(path, "y")
    assert ds.task == "regression"
    for kw in (dict(activation="tanh"), dict(batchnorm=False), dict(hidden=())):
        res = train(ds, config=TrainConfig(epochs=3, batch_size=16), progress=False, **{"hidden": (8,), **kw})
        rep = E.export(res, tmp_path / "repo", "reg")
        sess = ort.InferenceSession(str(rep.path), providers=["CPUExecutionProvider"])
        hidden = [f"layer{i}.z" for i in range(len(res.model.net.blocks))]
        assert [o.name for o in sess.get_outputs()] == ["prediction", *hidden]
        pred = sess.run(None, {"input": X[:5].astype(np.float32)})[0]
        assert pred.shape == (5, 1)
        assert np.allclose(pred, res.model.output(X[:5]), rtol=1e-5, atol=1e-4)


def test_contract_rejects_inconsistent_metadata(small, digits):
    good = E.make_contract(small).to_metadata()
    for key, value, message in [
        (C.KEY_CONTRACT_VERSION, "99", "not supported"),
        (C.KEY_TASK, "ranking", "task must be"),
        (C.KEY_FEATURE_NAMES, "[1, 2]", "list of strings"),
        (C.KEY_FEATURE_NAMES, '["a"]', "one per feature"),
        (C.KEY_CLASS_LABELS, "[0]", "at least 2 class labels"),
        (C.KEY_INPUT_STATS, "{not json", "not valid JSON"),
    ]:
        with pytest.raises(C.ContractError, match=message):
            C.ModelContract.from_metadata({**good, key: value})
    with pytest.raises(C.ContractError, match="no bnserve contract"):
        C.ModelContract.from_metadata({})


def test_export_renames_a_complete_version_into_place(small, digits, tmp_path, monkeypatch):
    """A server polling the repository never sees a version folder before its model.onnx is whole."""
    (tmp_path / "digits").mkdir()
    policy = 'name: "digits"\nversion_policy: { latest: { num_versions: 2 } }\n'
    (tmp_path / "digits" / "config.pbtxt").write_text(policy)
    seen = []
    real_rename = os.rename

    def rename(src, dst):
        seen.append((sorted(p.name for p in Path(src).iterdir()), Path(dst).exists()))
        real_rename(src, dst)

    monkeypatch.setattr(E.os, "rename", rename)
    report = E.export(small, tmp_path, "digits")
    # complete before it appears, in one rename (the figure too: matplotlib is in the dev install)
    assert seen == [(["confusion.png", "history.json", "model.onnx"], False)]
    assert (
        report.path.is_file()
        and [p.name for p in (tmp_path / "digits").iterdir() if p.name.startswith(".")] == []
    )
    assert (tmp_path / "digits" / "config.pbtxt").read_text() == policy  # the operator's policy is kept

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(E.onnx, "save", full_disk)
    with pytest.raises(E.ExportError, match=r"cannot write .*digits/2: No space left on device"):
        E.export(small, tmp_path, "digits")
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == [
        "1",
        "config.pbtxt",
    ]  # nothing half-done


def test_hidden_statistics_of_a_big_table_come_from_a_sample(small, monkeypatch):
    monkeypatch.setattr(E, "HIDDEN_STATS_ROWS", 500)
    contract = E.make_contract(small)
    sample = small.train_rows[np.linspace(0, len(small.train_rows) - 1, 500).astype(np.int64)]
    want = E.hidden_statistics(E.fold_model(small.model), sample)
    assert len(small.train_rows) > 500
    assert [h.stats.rows for h in contract.hidden_stats] == [500, 500]
    assert [h.stats for h in contract.hidden_stats] == [h.stats for h in want]
