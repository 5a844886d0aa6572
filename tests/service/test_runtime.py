"""One loaded model: predictions against the closed form, and what ``predict`` refuses."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import BadRequest
from service.repository import load_repository
from service.runtime import load_model
from tests.service.conftest import Repo


def test_runtime_matches_the_closed_form(repo: Repo) -> None:
    loaded = load_repository(repo.root)
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
