"""One loaded model: predictions against the closed form, and what ``predict`` refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import contract
from service.decoding import FLOAT32_MAX
from service.errors import BadRequest, ModelLoadError
from service.lifecycle import ModelManager
from service.runtime import load_model, probe_rows
from tests.service.conftest import IRIS_FEATURES, Repo, build_onnx, make_contract, write_model


def test_runtime_matches_the_closed_form(repo: Repo) -> None:
    loaded = ModelManager(repo.root).start()
    rng = np.random.default_rng(0)
    for key in ("digits@1", "iris", "house"):
        tiny = repo.models[key]
        x = rng.normal(size=(7, tiny.n_features)).astype(np.float32)
        got = loaded.get(tiny.name, str(tiny.version)).predict(x)
        for name, want in tiny.expected(x).items():
            if name == "label":
                np.testing.assert_array_equal(got[name], want)
            else:
                np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((2, 4), np.float64), "expected float32 rows of 4 features, got float64 [2, 4]"),
        (np.zeros((2, 3), np.float32), "expected float32 rows of 4 features, got float32 [2, 3]"),
        (np.zeros(4, np.float32), "expected float32 rows of 4 features, got float32 [4]"),
    ],
)
def test_predict_refuses_what_is_not_float32_rows_of_the_contract_width(
    repo: Repo, x: np.ndarray, message: str
) -> None:
    path = repo.root / "iris" / "1" / "model.onnx"
    model = load_model("iris", 1, path)
    with pytest.raises(BadRequest) as info:
        model.predict(x)
    assert info.value.message == message


def test_load_model_reads_the_contract_and_the_tensor_specs(repo: Repo) -> None:
    tiny = repo.models["house"]
    model = load_model("house", 3, repo.root / "house" / "3" / "model.onnx")
    assert model.contract == tiny.contract
    assert model.input_spec.to_json() == {"name": "input", "datatype": "FP32", "shape": [-1, 3]}
    assert [s.to_json() for s in model.output_specs] == [
        {"name": "prediction", "datatype": "FP32", "shape": [-1, 1]}
    ]
    assert not model.is_classification and model.n_features == 3


def _foreign_classifier(tmp_path: Path, tail: str) -> Path:
    """A 3-class classifier whose graph breaks one promise of the contract, written with a valid contract."""
    f, k = 4, 3
    rng = np.random.default_rng(1)
    W = rng.normal(size=(f, k)).astype(np.float32)
    b = np.zeros(k, np.float32)
    mc = make_contract(contract.TASK_CLASSIFICATION, IRIS_FEATURES, ["a", "b", "c"], rng)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "B")]
    inits.append(numpy_helper.from_array(np.array(100, np.int64), "hundred"))
    nodes = [helper.make_node("Gemm", ["input", "W", "B"], ["logits"])]
    if tail == "no softmax":  # raw logits served as "probabilities"
        nodes.append(helper.make_node("Identity", ["logits"], ["probabilities"]))
    else:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    nodes.append(helper.make_node("ArgMax", ["probabilities"], ["argmax"], axis=1, keepdims=0))
    if tail == "label + 100":
        nodes.append(helper.make_node("Add", ["argmax", "hundred"], ["label"]))
    elif tail == "argmin label":
        nodes.append(helper.make_node("ArgMin", ["probabilities"], ["label"], axis=1, keepdims=0))
    elif tail == "constant -1":  # argmax * 0 - 1: -1 of the batch's shape
        nodes.append(helper.make_node("Mul", ["argmax", "zero"], ["nothing"]))
        nodes.append(helper.make_node("Sub", ["nothing", "one"], ["label"]))
        inits.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
        inits.append(numpy_helper.from_array(np.array(1, np.int64), "one"))
    else:
        nodes.append(helper.make_node("Identity", ["argmax"], ["label"]))
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", f])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, mc.to_metadata())
    return write_model(tmp_path, "foreign", 1, model)


@pytest.mark.parametrize(
    ("tail", "problem"),
    [
        ("label + 100", "output 'label' is 10"),  # 100..102 for probe row 0: not a class index
        ("constant -1", "output 'label' is -1 for probe row 0, not a class index 0..2"),
        ("argmin label", "the label must be the argmax of the probabilities"),
        ("no softmax", "output 'probabilities'"),
    ],
)
def test_a_model_whose_outputs_break_the_contract_is_refused_at_load(
    tmp_path: Path, tail: str, problem: str
) -> None:
    path = _foreign_classifier(tmp_path, tail)
    with pytest.raises(ModelLoadError) as info:
        load_model("foreign", 1, path)
    message = str(info.value)
    assert problem in message and "\n" not in message
    assert message.startswith(str(path))


def test_a_faithful_foreign_classifier_loads(tmp_path: Path) -> None:
    load_model("foreign", 1, _foreign_classifier(tmp_path, "argmax label"))


def test_probe_rows_come_from_the_training_statistics() -> None:
    stats = contract.InputStats(
        mean=[1.0, 2.0],
        std=[0.5, 1.0],
        decile_edges=[[float(i) for i in range(9)], [float(10 * i) for i in range(9)]],
        decile_freqs=[[0.1] * 10, [0.1] * 10],
        rows=100,
    )
    x = probe_rows(stats)
    assert x.dtype == np.float32 and x.shape == (12, 2)
    np.testing.assert_array_equal(x[:3], [[1.0, 2.0], [0.0, 0.0], [2.0, 4.0]])
    np.testing.assert_array_equal(x[3:, 1], [10.0 * i for i in range(9)])


def _linear_regression(tmp_path: Path, weights: list[float]) -> Path:
    """``y = x @ W`` on three features: the largest output over the box ``|x| <= B`` is ``B * sum|W|``."""
    rng = np.random.default_rng(5)
    mc = make_contract(contract.TASK_REGRESSION, ["a", "b", "c"], ["y"], rng)
    W = np.array(weights, dtype=np.float32).reshape(3, 1)
    proto = build_onnx(contract.TASK_REGRESSION, W, np.zeros(1, np.float32), mc.to_metadata())
    return write_model(tmp_path, "linear", 1, proto)


def test_the_input_limit_keeps_every_output_finite_with_a_margin(tmp_path: Path) -> None:
    """The closed form: over ``|x| <= L`` the output reaches ``L * sum|W|`` (a corner of the box), which must
    stay below the float32 maximum by the margin of 1e6; ``L`` is the largest power of ten that does."""
    weights = [3e20, -2e20, 1e20]  # sum |W| = 6e20
    model = load_model("linear", 1, _linear_regression(tmp_path, weights))
    total = float(np.abs(weights).sum())
    want = 10.0 ** np.floor(np.log10(FLOAT32_MAX / (total * 1e6)))  # 1e11
    assert model.input_limit == want == 1e11
    worst = np.array([[1.0, -1.0, 1.0]], np.float32) * np.float32(want)  # the worst corner: finite
    assert np.isfinite(model.predict(worst)["prediction"]).all()
    # a million times further, the corner overflows: the margin is what the limit keeps
    with pytest.raises(BadRequest, match="non-finite 'prediction'"):
        model.predict(worst * np.float32(1e7))


def test_a_model_that_overflows_near_its_training_range_is_refused(tmp_path: Path) -> None:
    path = _linear_regression(tmp_path, [1e32, 1e32, 1e32])  # finite on the training probes, not 1e6 beyond
    with pytest.raises(
        ModelLoadError, match="overflow float32 on inputs within a factor 1e6 of the training"
    ):
        load_model("linear", 1, path)
