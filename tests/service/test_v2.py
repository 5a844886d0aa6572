"""KServe V2 / Open Inference Protocol routes through FastAPI's TestClient."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import Repo


def infer_json(x: np.ndarray, datatype: str = "FP32", nested: bool = True, **extra: Any) -> dict[str, Any]:
    data = x.tolist() if nested else x.ravel().tolist()
    return {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype, "data": data}],
        **extra,
    }


def binary_body(
    x: np.ndarray, datatype: str = "FP32", request: dict[str, Any] | None = None
) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor request the way tritonclient builds it (no Content-Type)."""
    raw = x.tobytes()
    head = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        **(request or {}),
    }
    text = json.dumps(head).encode()
    return text + raw, {"Inference-Header-Content-Length": str(len(text))}


def split_binary(response: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Decode a binary response: the JSON header, then each output's bytes in order."""
    size = int(response.headers["Inference-Header-Content-Length"])
    head = json.loads(response.content[:size])
    arrays, offset = {}, size
    for out in head["outputs"]:
        if "data" in out:
            continue
        n = out["parameters"]["binary_data_size"]
        dtype = {"FP32": "<f4", "INT64": "<i8"}[out["datatype"]]
        arrays[out["name"]] = np.frombuffer(response.content[offset : offset + n], dtype).reshape(
            out["shape"]
        )
        offset += n
    assert offset == len(response.content)
    return head, arrays


def test_health(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/digits/ready").status_code == 200
    assert client.get("/v2/models/digits/versions/1/ready").status_code == 200
    response = client.get("/v2/models/nope/ready")
    assert response.status_code == 404
    assert response.json() == {"error": "unknown model 'nope'; this server has ['digits', 'house', 'iris']"}


def test_server_metadata(client: TestClient) -> None:
    body = client.get("/v2").json()
    assert body["name"] == "bnserve"
    assert isinstance(body["version"], str) and body["version"]
    assert "binary_tensor_data" in body["extensions"]


def test_model_metadata(client: TestClient) -> None:
    body = client.get("/v2/models/digits").json()
    assert body["name"] == "digits"
    assert body["versions"] == ["1", "2"]
    assert body["platform"] == "onnx_onnxv1"
    assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert body["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
    ]
    assert body["parameters"]["class_labels"] == list(range(10))
    assert body["parameters"]["input_range"] == [-1e32, 1e32]  # test_runtime.py checks how it is found
    assert client.get("/v2/models/digits/versions/1").json()["versions"] == ["1"]
    house = client.get("/v2/models/house").json()
    assert house["outputs"] == [{"name": "prediction", "datatype": "FP32", "shape": [-1, 1]}]


@pytest.mark.parametrize(("datatype", "nested"), [("FP32", True), ("FP32", False), ("FP64", True)])
def test_infer_json_matches_the_closed_form(
    client: TestClient, repo: Repo, datatype: str, nested: bool
) -> None:
    tiny = repo.models["digits"]
    x = np.random.default_rng(1).normal(size=(5, 64)).astype(np.float32)
    response = client.post("/v2/models/digits/infer", json=infer_json(x, datatype, nested, id="req-7"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-7"
    assert body["model_name"] == "digits" and body["model_version"] == "2"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probabilities"]["shape"] == [5, 10] and outputs["probabilities"]["datatype"] == "FP32"
    assert outputs["label"]["shape"] == [5] and outputs["label"]["datatype"] == "INT64"
    want = tiny.expected(x)
    got = np.array(outputs["probabilities"]["data"]).reshape(5, 10)
    np.testing.assert_allclose(got, want["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outputs["label"]["data"], want["label"])


def test_infer_integer_inputs_and_versions(client: TestClient, repo: Repo) -> None:
    x = np.arange(2 * 64).reshape(2, 64) % 17
    for path, key in (
        ("/v2/models/digits/versions/1/infer", "digits@1"),
        ("/v2/models/digits/infer", "digits"),
    ):
        body = client.post(path, json=infer_json(x, "INT32")).json()
        got = np.array(body["outputs"][0]["data"]).reshape(2, 10)
        np.testing.assert_allclose(got, repo.models[key].expected(x)["probabilities"], rtol=1e-5, atol=1e-6)


def test_requested_outputs_are_honoured(client: TestClient) -> None:
    x = np.zeros((3, 64), np.float32)
    body = client.post("/v2/models/digits/infer", json=infer_json(x, outputs=[{"name": "label"}])).json()
    assert [o["name"] for o in body["outputs"]] == ["label"]
    assert "id" not in body


def test_regression(client: TestClient, repo: Repo) -> None:
    x = np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32)
    body = client.post("/v2/models/house/infer", json=infer_json(x)).json()
    (out,) = body["outputs"]
    assert out["name"] == "prediction" and out["shape"] == [4, 1]
    np.testing.assert_allclose(
        np.reshape(out["data"], (4, 1)), repo.models["house"].expected(x)["prediction"], rtol=1e-5
    )


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT64", "UINT8", "FP16"])
def test_binary_inputs_and_outputs(client: TestClient, repo: Repo, datatype: str) -> None:
    np_type = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "UINT8": "u1", "FP16": "<f2"}[datatype]
    x = (np.random.default_rng(3).uniform(0, 16, size=(6, 64))).astype(np_type)
    body, headers = binary_body(x, datatype, {"id": "b1", "parameters": {"binary_data_output": True}})
    response = client.post("/v2/models/digits/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    head, arrays = split_binary(response)
    assert head["id"] == "b1"
    want = repo.models["digits"].expected(x.astype(np.float32))
    np.testing.assert_allclose(arrays["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(arrays["label"], want["label"])


def test_mixed_binary_and_json_outputs(client: TestClient) -> None:
    x = np.ones((2, 64), np.float32)
    outputs = [
        {"name": "label", "parameters": {"binary_data": False}},
        {"name": "probabilities", "parameters": {"binary_data": True}},
    ]
    body, headers = binary_body(x, request={"outputs": outputs})
    response = client.post("/v2/models/digits/infer", content=body, headers=headers)
    head, arrays = split_binary(response)
    assert [o["name"] for o in head["outputs"]] == ["label", "probabilities"]
    assert len(head["outputs"][0]["data"]) == 2
    assert arrays["probabilities"].shape == (2, 10)


def test_body_without_content_type_is_served(client: TestClient) -> None:
    x = np.zeros((1, 64), np.float32)
    response = client.post("/v2/models/digits/infer", content=json.dumps(infer_json(x)).encode())
    assert "content-type" not in response.request.headers
    assert response.status_code == 200


def test_row_is_independent_of_its_batch(client: TestClient) -> None:
    x = np.random.default_rng(4).normal(size=(100, 64)).astype(np.float32)
    batch = client.post("/v2/models/digits/infer", json=infer_json(x)).json()["outputs"][0]["data"]
    batch = np.reshape(batch, (100, 10))
    for i in (0, 37, 99):
        alone = client.post("/v2/models/digits/infer", json=infer_json(x[i : i + 1])).json()["outputs"][0][
            "data"
        ]
        np.testing.assert_array_equal(alone, batch[i])


@pytest.mark.parametrize(
    ("datatype", "value", "message"),
    [
        ("UINT8", -5, "value at row 0, column 1 is -5, outside the declared datatype's range [0, 255]"),
        ("INT8", 1000, "value at row 0, column 1 is 1000, outside the declared datatype's range [-128, 127]"),
        ("UINT16", 70000, "outside the declared datatype's range [0, 65535]"),
        (
            "FP16",
            70000.0,
            "value at row 0, column 1 is 70000, outside the declared datatype's range [-65504, 65504]",
        ),
    ],
)
def test_json_values_must_fit_their_declared_datatype(
    client: TestClient, datatype: str, value: float, message: str
) -> None:
    row = [0.0, float(value), 0.0, 0.0]
    r = client.post("/v2/models/iris/infer", json=infer_json(np.array([row]), datatype))
    assert r.status_code == 400
    assert message in r.json()["error"]


@pytest.mark.parametrize(
    ("datatype", "value"), [("UINT8", 255), ("INT8", -128), ("FP16", 65504.0), ("INT64", 2**62)]
)
def test_json_values_at_the_edge_of_their_datatype_pass(
    client: TestClient, datatype: str, value: float
) -> None:
    r = client.post("/v2/models/iris/infer", json=infer_json(np.array([[0, value, 0, 0]]), datatype))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("value", "shown"),
    [("true", "a boolean"), ("false", "a boolean"), ('"1"', "a string"), ("null", "null"), ("[1]", "a list")],
)
def test_non_numbers_are_named_whichever_decoder_runs(client: TestClient, value: str, shown: str) -> None:
    # Both bodies hold the same bad value; the second also has "true" in the id, which sends every body through
    # the exact per-element check rather than the fast conversion.
    for request_id in ("plain", "true"):
        body = (
            f'{{"id": "{request_id}", "inputs": [{{"name": "input", "shape": [2, 4], "datatype": "FP32", '
            f'"data": [1, 2, 3, 4, 5, {value}, 7, 8]}}]}}'
        )
        r = client.post("/v2/models/iris/infer", content=body)
        assert r.status_code == 400
        assert r.json()["error"] == f"value at row 1, column 1 is {shown}; expected a number"


def test_fast_and_exact_decoding_agree() -> None:
    from service.decoding import numbers_to_rows

    rng = np.random.default_rng(3)
    flat = [*rng.normal(size=60).tolist(), *rng.integers(-1000, 1000, size=4).tolist()]
    fast = numbers_to_rows(flat, 8, 8, booleans_possible=False)
    exact = numbers_to_rows(flat, 8, 8, booleans_possible=True)
    np.testing.assert_array_equal(fast, exact)
    np.testing.assert_array_equal(fast, np.array(flat, dtype=np.float64).astype(np.float32).reshape(8, 8))


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@pytest.mark.parametrize(
    ("encoding", "make", "status", "message"),
    [
        ("gzip", lambda b: _gz(b[:100]) + _gz(b[100:]), 200, None),  # RFC 1952: members concatenated
        ("GZIP", _gz, 200, None),  # content codings are case-insensitive (RFC 9110)
        ("x-gzip", _gz, 200, None),
        ("Identity", lambda b: b, 200, None),
        ("Deflate", zlib.compress, 200, None),
        ("gzip", lambda b: _gz(b)[:-4], 400, "the gzip body is truncated"),  # cut before the length
        ("gzip", lambda b: _gz(b)[:-8], 400, "the gzip body is truncated"),  # no trailer at all
        ("gzip", lambda b: _gz(b) + b"garbage", 400, "the gzip body has 7 bytes of garbage after its end"),
        ("gzip", lambda b: _gz(b)[:-8] + b"\0\0\0\0" + _gz(b)[-4:], 400, "not valid gzip data"),  # bad CRC
        ("deflate", lambda b: zlib.compress(b) + b"x", 400, "the deflate body has 1 bytes of garbage"),
        ("br", lambda b: b, 400, "unsupported Content-Encoding 'br'"),
    ],
)
def test_content_codings(
    client: TestClient, encoding: str, make: Any, status: int, message: str | None
) -> None:
    body = json.dumps(infer_json(np.zeros((2, 4), np.float32))).encode()
    r = client.post("/v2/models/iris/infer", content=make(body), headers={"Content-Encoding": encoding})
    assert r.status_code == status, r.text
    if message is not None:
        assert message in r.json()["error"]


def _outcome(body: bytes, model: Any) -> tuple[Any, ...]:
    from service import v2
    from service.errors import ServiceError

    try:
        got = v2.parse_infer_request(body, None, model, 8)
    except ServiceError as exc:
        return ("error", exc.status_code, exc.message)
    return ("ok", got.x.dtype, got.x.shape, got.x.tobytes(), got.outputs, got.id, got.categorical)


def test_the_quick_decode_answers_as_the_general_one(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small bodies try ``v2._quick_request`` first: on every body, valid or not, the outcome (rows to the bit,
    outputs, id, or the error message) is that of the general path alone."""
    from service import v2
    from service.runtime import load_model

    model = load_model("iris", 1, repo.root / "iris" / "1" / "model.onnx")
    rng = np.random.default_rng(11)
    rows = rng.normal(size=(3, 4)) * 3
    good = infer_json(rows, "FP32", nested=False, id="r-1")
    variants: list[Any] = [
        good,
        infer_json(rows),
        infer_json(rows[:1], "FP64", nested=False),
        infer_json(rows.astype(np.int64), "FP32"),
        infer_json(rows, "INT32"),
        infer_json(rows, "FP16"),
        infer_json(rows * 1e30),  # beyond the model's input range
        infer_json(rng.normal(size=(9, 4))),  # more rows than allowed (8)
        infer_json(rng.normal(size=(1, 5))),
        {**good, "id": 7},
        {**good, "parameters": {"binary_data_output": True}},
        {**good, "outputs": [{"name": "label"}]},
        {**good, "extra": 1},
        {"inputs": [{**good["inputs"][0], "name": "x"}]},
        {"inputs": [{**good["inputs"][0], "shape": [3.0, 4]}]},
        {"inputs": [{**good["inputs"][0], "shape": [4, 3]}]},
        {"inputs": [{**good["inputs"][0], "shape": [0, 4]}]},
        {"inputs": [{**good["inputs"][0], "shape": [3, 4, 1]}]},
        {"inputs": [{**good["inputs"][0], "shape": "3x4"}]},
        {"inputs": [{**good["inputs"][0], "data": good["inputs"][0]["data"][:-1]}]},
        {"inputs": [{**good["inputs"][0], "parameters": {}}]},
        {"inputs": [good["inputs"][0], good["inputs"][0]]},
        {"inputs": []},
        {"inputs": {"name": "input"}},
        [good],
        "text",
    ]
    bodies = [json.dumps(v).encode() for v in variants]
    data = json.dumps(good["inputs"][0]["data"])
    for bad in ("true", "null", '"1"', "[1]", "1e999", "-1e999", "18446744073709551616", "{}"):
        bodies.append(json.dumps(good).replace(data, data.replace(data.split(", ")[1], bad, 1)).encode())
    bodies += [b'{"inputs": [', b"", b'{"id": "true", ' + json.dumps(good).encode()[1:]]
    nested = json.dumps(infer_json(rows))
    bodies.append(nested.replace("], [", "], [0.5, ", 1).encode())  # a ragged row
    assert all(len(b) <= v2.QUICK_MAX_BYTES for b in bodies)

    taken = []
    original = v2._quick_request
    monkeypatch.setattr(v2, "_quick_request", lambda *a: taken.append(original(*a)) or taken[-1])
    both = [_outcome(body, model) for body in bodies]
    quick = sum(t is not None for t in taken)
    assert len(taken) == len(bodies)
    monkeypatch.setattr(v2, "QUICK_MAX_BYTES", 0)
    general = [_outcome(body, model) for body in bodies]
    for body, a, b in zip(bodies, both, general, strict=True):
        assert a == b, body
    assert all(t is not None for t in taken[:4])  # flat, in rows, FP64, integers: the quick path served them
    assert quick <= sum(outcome[0] == "ok" for outcome in general)
    assert sum(outcome[0] == "error" for outcome in general) >= 25  # the variants do reach the errors
    assert both[0][0] == "ok" and both[0][5] == "r-1"
    np.testing.assert_array_equal(
        np.frombuffer(both[0][3], np.float32).reshape(3, 4), rows.astype(np.float32)
    )
