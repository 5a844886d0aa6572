"""Serving a model with categorical, boolean and imputed features, in process (``service.tabular``).

The truth is the trained network in float64 on the training side's design matrix (``tabular_model``); the
service's answers must match it within float32 rounding, whichever way a client writes the same rows.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Iterator

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

import contract as C
from service.app import create_app
from service.batching import Batcher
from service.errors import ModelLoadError
from service.runtime import PROBE_UNKNOWN, load_model, probe_inputs
from tests.service.conftest import settings_for
from tests.service.tabular_model import NAME, TabularModel, train_tabular_model

#: float32 serving against the float64 network: what the export's own check allows on these magnitudes.
ATOL = 2e-6

#: Four raw rows: every kind of feature, a missing number, a missing category, an unknown category.
#: Features: carat, depth (imputed), table (not imputed) | cut (imputed), colour (not), boxed (boolean, not).
X = np.array([[0.8, 61.0, 57.0], [np.nan, 62.5, 55.5], [1.6, np.nan, 58.0], [2.4, 60.1, 59.5]], np.float32)
S = np.array(
    [["Ideal", "D", "true"], ["", "E", "false"], ["Superb", "F", "true"], ["Fair", "Z", "false"]],
    dtype=object,
)


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> TabularModel:
    return train_tabular_model(tmp_path_factory.mktemp("tabular") / "models")


@pytest.fixture(scope="module")
def tclient(tabular: TabularModel) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(tabular.root))) as c:
        yield c


def named_rows() -> list[dict[str, object]]:
    """:data:`X` and :data:`S` as V1 objects: nulls, a missing key, JSON booleans, an unknown category."""
    return [
        {"carat": 0.8, "depth": 61.0, "table": 57.0, "cut": "Ideal", "colour": "D", "boxed": True},
        {"carat": None, "depth": 62.5, "table": 55.5, "colour": "E", "boxed": False},  # cut: no key
        {"carat": 1.6, "depth": None, "table": 58.0, "cut": "Superb", "colour": "F", "boxed": "true"},
        {"carat": 2.4, "depth": 60.1, "table": 59.5, "cut": "Fair", "colour": "Z", "boxed": False},
    ]


def v1_probabilities(response: dict, labels: list) -> np.ndarray:
    return np.array([[p["probabilities"][str(c)] for c in labels] for p in response["predictions"]])


def test_metadata_lists_both_inputs_and_describes_every_feature(tclient: TestClient, tabular: TabularModel):
    meta = tclient.get(f"/v2/models/{NAME}").json()
    assert meta["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "categorical", "datatype": "BYTES", "shape": [-1, 3]},
    ]
    features = meta["parameters"]["features"]
    assert [f["name"] for f in features] == ["carat", "depth", "table", "cut", "colour", "boxed"]
    assert [f["kind"] for f in features] == ["numeric"] * 3 + ["categorical", "categorical", "boolean"]
    by_name = {f["name"]: f for f in features}
    assert by_name["cut"]["categories"] == ["Fair", "Good", "Ideal", "Premium"]
    assert by_name["boxed"]["categories"] == ["false", "true"]
    assert (
        by_name["carat"]["impute"] == tabular.contract.inputs[0].impute and by_name["table"]["impute"] is None
    )


def test_v1_named_rows_take_strings_booleans_nulls_and_missing_keys(tclient, tabular):
    r = tclient.post(f"/v1/models/{NAME}:predict", json={"instances": named_rows()})
    assert r.status_code == 200, r.text
    got = v1_probabilities(r.json(), tabular.contract.class_labels)
    np.testing.assert_allclose(got, tabular.expected(X, S), rtol=0, atol=ATOL)


def test_v1_list_rows_are_in_feature_order_with_mixed_types(tclient, tabular):
    rows = [list(row.get(n) for n in tabular.contract.feature_names) for row in named_rows()]
    r = tclient.post(f"/v1/models/{NAME}:predict", json={"instances": rows})
    assert r.status_code == 200, r.text
    got = v1_probabilities(r.json(), tabular.contract.class_labels)
    np.testing.assert_allclose(got, tabular.expected(X, S), rtol=0, atol=ATOL)


def v2_json_body() -> dict:
    data = [None if np.isnan(v) else float(v) for v in X.ravel()]
    return {
        "inputs": [
            {"name": "categorical", "datatype": "BYTES", "shape": [4, 3], "data": S.ravel().tolist()},
            {"name": "input", "datatype": "FP32", "shape": [4, 3], "data": data},
        ]
    }


def test_v2_json_takes_strings_and_null_for_imputed_numbers(tclient, tabular):
    r = tclient.post(f"/v2/models/{NAME}/infer", json=v2_json_body())
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    got = np.array(out["probabilities"]["data"]).reshape(4, -1)
    np.testing.assert_allclose(got, tabular.expected(X, S), rtol=0, atol=ATOL)


def triton_bytes(values: list[str]) -> bytes:
    """Triton's BYTES layout, written here by hand: per element a uint32 little-endian length, its bytes."""
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def binary_body(strings: bytes, numbers: bytes, n: int = 4) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [n, 3],
                    "parameters": {"binary_data_size": len(numbers)},
                },
                {
                    "name": "categorical",
                    "datatype": "BYTES",
                    "shape": [n, 3],
                    "parameters": {"binary_data_size": len(strings)},
                },
            ]
        }
    ).encode()
    return head + numbers + strings, {"Inference-Header-Content-Length": str(len(head))}


def test_v2_binary_takes_nan_for_imputed_numbers_and_tritons_bytes_layout(tclient, tabular):
    body, headers = binary_body(triton_bytes(S.ravel().tolist()), X.astype("<f4").tobytes())
    r = tclient.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"][0]["data"]).reshape(4, -1)
    np.testing.assert_allclose(got, tabular.expected(X, S), rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"table": "57"}, "feature 'table' is a string (row 1); expected a number"),
        ({"cut": 3}, "feature 'cut' is a number (row 1); expected a string, one of its categories"),
        ({"colour": None}, "feature 'colour' is missing (row 1) and the model has no imputed value"),
        ({"table": None}, "feature 'table' is missing (row 1) and the model has no imputed value"),
        ({"boxed": "yes"}, "feature 'boxed' is 'yes' (row 1); expected true or false"),
        ({"boxed": ""}, "feature 'boxed' is missing (row 1)"),
        ({"carat": True}, "feature 'carat' is a boolean (row 1); expected a number"),
        ({"carat": 1e39}, "value at row 1, column 0 (feature 'carat') is 1e+39, outside the float32 range"),
        ({"price": 3}, "unknown feature 'price' (row 1)"),
    ],
)
def test_v1_bad_cells_get_400_naming_feature_and_row(tclient, row, message):
    rows = named_rows()[:2]
    rows[1] = {**rows[1], **row}
    r = tclient.post(f"/v1/models/{NAME}:predict", json={"instances": rows})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_v1_missing_key_of_a_feature_without_imputed_value_gets_400(tclient):
    rows = named_rows()[:1]
    del rows[0]["colour"]
    r = tclient.post(f"/v1/models/{NAME}:predict", json={"instances": rows})
    assert r.status_code == 400
    assert "feature 'colour' is missing (row 0)" in r.json()["error"]


def test_v2_bad_tensors_get_400(tclient):
    cases = []
    body = v2_json_body()
    body["inputs"][1]["data"][8] = None  # row 2, column 2: 'table' is not imputed
    cases.append((body, "feature 'table' is missing (row 2)"))
    body = v2_json_body()
    body["inputs"][0]["data"][4] = ""  # row 1, 'colour'
    cases.append((body, "feature 'colour' is missing (row 1)"))
    body = v2_json_body()
    body["inputs"][0]["data"][0] = 7
    cases.append((body, "row 0, column 0 (feature 'cut') is a number; expected a string (BYTES)"))
    body = v2_json_body()
    body["inputs"][0]["data"] = list(range(12))  # numbers only: no strings at all
    body["inputs"][1]["data"] = [1.0] * 12
    cases.append((body, "row 0, column 0 (feature 'cut') is a number; expected a string (BYTES)"))
    body = v2_json_body()
    body["inputs"] = body["inputs"][1:]
    cases.append((body, "takes the inputs ['input', 'categorical']"))
    body = v2_json_body()
    body["inputs"][0]["datatype"] = "FP32"
    cases.append((body, "input 'categorical' has datatype 'FP32'; expected BYTES"))
    body = v2_json_body()
    body["inputs"][0]["shape"] = [4, 2]
    cases.append((body, "input 'categorical' must have shape [4, 3]"))
    for body, message in cases:
        r = tclient.post(f"/v2/models/{NAME}/infer", json=body)
        assert r.status_code == 400, (message, r.text)
        assert message in r.json()["error"], (message, r.json())


def test_v2_binary_bad_bytes_get_400(tclient):
    good = triton_bytes(S.ravel().tolist())
    numbers = X.astype("<f4").tobytes()
    nan_table = X.copy()
    nan_table[3, 2] = np.nan
    cases = [
        (good[:-1], numbers, "element 11 announces 5 bytes but only 4 remain"),
        (good + b"\x00", numbers, "1 bytes remain after the 12 elements"),
        (good[:-9] + struct.pack("<I", 2) + b"\xff\xfe", numbers, "(feature 'boxed') is not UTF-8 text"),
        (good, nan_table.astype("<f4").tobytes(), "value at row 3, column 2 (feature 'table') is NaN"),
    ]
    for strings, nums, message in cases:
        body, headers = binary_body(strings, nums)
        r = tclient.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
        assert r.status_code == 400, (message, r.text)
        assert message in r.json()["error"], (message, r.json())


def test_unknown_categories_and_missing_cells_are_counted(tabular):
    with TestClient(create_app(settings_for(tabular.root))) as c:
        assert c.post(f"/v1/models/{NAME}:predict", json={"instances": named_rows()}).status_code == 200
        assert c.post(f"/v2/models/{NAME}/infer", json=v2_json_body()).status_code == 200
        drift = c.get(f"/v2/models/{NAME}/drift").json()
        metrics = c.get("/metrics").text
    # Each request: carat and depth missing once, cut missing once; unknown: cut 'Superb', colour 'Z'.
    for feature, count in {"carat": 2, "depth": 2, "cut": 2}.items():
        line = f'bnserve_missing_cells_total{{feature="{feature}",model="{NAME}",version="1"}} {float(count)}'
        assert line in metrics
    for feature in ("cut", "colour"):
        line = f'bnserve_unknown_category_total{{feature="{feature}",model="{NAME}",version="1"}} 2.0'
        assert line in metrics
    assert 'bnserve_unknown_category_total{feature="boxed"' not in metrics
    cells = {f["name"]: f for f in drift["cells"]["features"]}
    assert drift["cells"]["rows_seen"] == 8
    assert set(cells) == {"carat", "depth", "cut", "colour", "boxed"}  # 'table' cannot be missing
    assert cells["cut"]["missing_cells"] == 2 and cells["cut"]["unknown_cells"] == 2
    assert cells["colour"]["unknown_cells"] == 2 and cells["boxed"]["unknown_cells"] == 0
    assert cells["carat"]["missing_rate_train"] == pytest.approx(tabular.contract.inputs[0].missing_rate)
    # Live rates are weighted over the window (1000 rows): on 8 rows, about a quarter, as counted.
    assert cells["carat"]["missing_rate_live"] == pytest.approx(0.25, abs=0.01)
    assert cells["colour"]["unknown_rate_live"] == pytest.approx(0.25, abs=0.01)
    # Numeric drift: the numeric features only, a missing number counted at its imputed value (as in training).
    assert [f["name"] for f in drift["features"]] == ["carat", "depth", "table"]
    carat = np.float32([0.8, tabular.contract.inputs[0].impute, 1.6, 2.4] * 2).astype(np.float64)
    weights = (1 - 1 / 1000) ** np.arange(7, -1, -1)  # the monitor's EWMA over the default horizon
    assert drift["features"][0]["mean_live"] == pytest.approx(weights @ carat / weights.sum(), rel=1e-9)
    assert drift["rows_seen"] == 8
    # The hidden layers are watched too, from the runs that served the rows (categories and all).
    assert [layer["rows_effective"] for layer in drift["layers"]] == [pytest.approx(8, rel=0.01)]


def test_probe_inputs_hold_every_category_an_unknown_one_and_missing_cells(tabular):
    feed = probe_inputs(tabular.contract)
    x, s = feed["input"], feed["categorical"]
    assert x.shape == (12, 3) and s.shape == (12, 3)
    assert np.isnan(x[-1, :2]).all() and np.isfinite(x[-1, 2])  # imputed numbers only
    assert set(s[:, 0]) == {"Fair", "Good", "Ideal", "Premium", PROBE_UNKNOWN, ""}
    assert "" not in set(s[:, 1]) and PROBE_UNKNOWN in set(s[:, 1])  # colour is not imputed


def test_a_contract_without_the_categorical_features_is_refused_at_load(tabular, tmp_path):
    model = onnx.load(str(tabular.root / NAME / "1" / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    inputs = json.loads(meta[C.KEY_INPUTS])
    for (
        spec
    ) in inputs:  # the contract now says every feature is a number: the graph's second input contradicts it
        spec.update(kind="numeric", categories=[], frequencies=[], impute=None)
    meta[C.KEY_INPUTS] = json.dumps(inputs)
    stats = json.loads(meta[C.KEY_INPUT_STATS])
    for key in ("mean", "std", "decile_edges", "decile_freqs"):
        stats[key] = stats[key] + stats[key][:1] * 3
    meta[C.KEY_INPUT_STATS] = json.dumps(stats)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    with pytest.raises(
        ModelLoadError, match=r"graph inputs are \['input', 'categorical'\], the contract needs one"
    ):
        load_model(NAME, 1, path)


def test_a_numeric_model_keeps_the_plain_path(repo):
    model = load_model("iris", 1, repo.root / "iris" / "1" / "model.onnx")
    assert model.tabular is None and model.categorical_spec is None
    assert [s.name for s in model.input_specs] == ["input"]


def test_the_docs_examples_of_a_categorical_model_work(tclient):
    spec = tclient.get("/openapi.json").json()
    posted = 0
    for path, item in spec["paths"].items():
        if not path.endswith(("/infer", ":predict")) or "{version}" in path:
            continue
        examples = item["post"]["requestBody"]["content"]["application/json"]["examples"]
        for example in examples.values():
            url = path.replace("{name}", NAME)
            r = tclient.post(url, json=example["value"])
            assert r.status_code == 200, (url, example, r.text)
            posted += 1
    assert posted >= 3


def test_requests_batched_together_keep_their_own_categories(tabular):
    model = load_model(NAME, 1, tabular.root / NAME / "1" / "model.onnx")
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    model.observers.append(seen.append)
    batcher = Batcher()

    async def together() -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(
            batcher.infer(model, X[:1], (), S[:1]), batcher.infer(model, X[1:], (), S[1:])
        )

    first, rest = asyncio.run(together())
    assert batcher.runs == 1 and batcher.rows == 4
    got = np.vstack([first["probabilities"], rest["probabilities"]])
    np.testing.assert_allclose(got, tabular.expected(X, S), rtol=0, atol=ATOL)
    ((x, s),) = seen  # the observers get the run's rows with their categories
    np.testing.assert_array_equal(x, X)
    assert s.tolist() == S.tolist()


def test_the_schema_accepts_what_a_categorical_model_takes(tclient):
    spec = tclient.get("/openapi.json").json()

    def valid(name: str, body: object) -> bool:
        return Draft202012Validator({**spec, "$ref": f"#/components/schemas/{name}"}).is_valid(body)

    assert valid("InferenceRequest", v2_json_body())
    assert valid("V1PredictRequest", {"instances": named_rows()})
    rows = [[0.8, 61.0, 57.0, "Ideal", "D", True], [None, 62.5, 55.5, "", "E", False]]
    assert valid("V1PredictRequest", {"instances": rows})
    assert not valid("V1PredictRequest", {"instances": [[[1.0]]]})
