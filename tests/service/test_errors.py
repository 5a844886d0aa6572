"""Every bad input gets a 4xx ``{"error": ...}`` naming the problem, in the protocol's error shape."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

V2 = "/v2/models/digits/infer"
V1 = "/v1/models/digits:predict"
ROW = [0.5] * 64


def v2(shape: list[int], data: Any, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    return {
        "json": {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}], **extra}
    }


def binary(head: dict[str, Any], raw: bytes, header: str | None = None) -> dict[str, Any]:
    text = json.dumps(head).encode()
    return {"content": text + raw, "headers": {"Inference-Header-Content-Length": header or str(len(text))}}


def bin_head(shape: list[int], size: int, datatype: str = "FP32") -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}
        ]
    }


NAMED = {f"pixel_{i}_{j}": 0.0 for i in range(8) for j in range(8)}
ROWS_63 = [ROW, ROW, ROW[:63]]

CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    # --- V2 ---
    (
        "v2 wrong feature count",
        V2,
        v2([1, 63], ROW[:63]),
        400,
        "expected 64 features per row, got 63 (shape [1, 63])",
    ),
    ("v2 ragged nested row", V2, v2([3, 64], ROWS_63), 400, "expected 64 features per row, got 63 (row 2)"),
    (
        "v2 shape vs data length",
        V2,
        v2([2, 64], ROW),
        400,
        "shape [2, 64] needs 128 values but 'data' has 64",
    ),
    ("v2 nested rows vs shape", V2, v2([2, 64], [ROW]), 400, "shape [2, 64] has 2 rows but 'data' has 1"),
    ("v2 1-D shape", V2, v2([64], ROW), 400, "input 'input' must have shape [N, 64], got [64]"),
    ("v2 negative shape", V2, v2([-1, 64], ROW), 400, "'shape' must be a list of non-negative integers"),
    (
        "v2 wrong datatype",
        V2,
        v2([1, 64], ROW, "BYTES"),
        400,
        "input 'input' has unsupported datatype 'BYTES'",
    ),
    ("v2 unknown datatype", V2, v2([1, 64], ROW, "FP8"), 400, "input 'input' has unknown datatype 'FP8'"),
    # found by a live schemathesis run: an object where the datatype string belongs was a 500
    ("v2 datatype not a string", V2, v2([1, 64], ROW, {}), 400, "input 'input' has unknown datatype"),  # type: ignore[arg-type]
    (
        "v2 float data for INT",
        V2,
        v2([1, 64], ROW, "INT32"),
        400,
        "value at row 0, column 0 is not an integer",
    ),
    (
        "v2 unknown input",
        V2,
        {"json": {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}},
        400,
        "unknown input 'x'; model 'digits' takes one input 'input'",
    ),
    (
        "v2 two inputs",
        V2,
        {"json": {"inputs": [v2([1, 64], ROW)["json"]["inputs"][0]] * 2}},
        400,
        "model 'digits' takes one input tensor 'input', got 2",
    ),
    ("v2 no inputs", V2, {"json": {"inputs": []}}, 400, "'inputs' must be a non-empty list of tensors"),
    (
        "v2 unknown output",
        V2,
        v2([1, 64], ROW, outputs=[{"name": "logits"}]),
        400,
        "unknown output 'logits'; model 'digits' outputs ['probabilities', 'label']",
    ),
    ("v2 empty batch", V2, v2([0, 64], []), 400, "empty batch: the input has 0 rows"),
    (
        "v2 string in data",
        V2,
        v2([1, 64], [*ROW[:5], "1.0", *ROW[6:]]),
        400,
        "value at row 0, column 5 is a string; expected a number",
    ),
    ("v2 boolean in data", V2, v2([1, 64], [True, *ROW[1:]]), 400, "value at row 0, column 0 is a boolean"),
    ("v2 null in data", V2, v2([1, 64], [None, *ROW[1:]]), 400, "value at row 0, column 0 is null"),
    (
        "v2 NaN literal",
        V2,
        {"content": b'{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":[NaN]}]}'},
        400,
        "malformed JSON: NaN at char",
    ),
    (
        "v2 Infinity literal",
        V2,
        {"content": b'{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":[-Infinity]}]}'},
        400,
        "malformed JSON: Infinity at char",
    ),
    (
        "v2 beyond float32",
        V2,
        v2([1, 64], [*ROW[:3], 1e39, *ROW[4:]]),
        400,
        "value at row 0, column 3 is 1e+39, outside the float32 range",
    ),
    # the tiny digits model's input range, from GET /v2/models/digits (test_v2.py checks it is [-1e32, 1e32])
    (
        "v2 beyond the model's input range",
        V2,
        v2([1, 64], [*ROW[:3], 1e33, *ROW[4:]], datatype="FP64"),
        400,
        "value at row 0, column 3 is 1e+33, outside the model's input range [-1e+32, 1e+32]",
    ),
    (
        "v2 binary beyond the model's input range",
        V2,
        binary(bin_head([1, 64], 256), np.array([-1e33, *ROW[1:]], dtype="<f4").tobytes()),
        400,
        "value at row 0, column 0 is -1e+33, outside the model's input range [-1e+32, 1e+32]",
    ),
    (
        "v2 beyond float64",
        V2,
        {"content": b'{"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":[1e400]}]}'},
        400,
        "malformed JSON: number is infinity when parsed as double",
    ),
    (
        "v2 malformed JSON",
        V2,
        {"content": b'{"inputs": [', "headers": {"Content-Type": "application/json"}},
        400,
        "malformed JSON: unexpected end of data (line 1, column 13)",
    ),
    ("v2 not an object", V2, {"json": [1, 2]}, 400, "the request must be a JSON object, got a list"),
    ("v2 id not a string", V2, v2([1, 64], ROW, id=5), 400, "'id' must be a string, got int"),
    (
        "v2 binary sizes do not add up",
        V2,
        binary(bin_head([1, 64], 256), b"\0" * 200),
        400,
        "binary data sizes add up to 256 bytes but the body carries 200 bytes after the JSON header",
    ),
    (
        "v2 binary size vs shape",
        V2,
        binary(bin_head([1, 64], 128), b"\0" * 128),
        400,
        "binary_data_size is 128 bytes but shape [1, 64] of FP32 needs 256",
    ),
    (
        "v2 header beyond body",
        V2,
        binary(bin_head([1, 64], 256), b"\0" * 256, header="99999"),
        400,
        "Inference-Header-Content-Length is 99999 but the body has only",
    ),
    (
        "v2 header not a number",
        V2,
        binary(bin_head([1, 64], 256), b"\0" * 256, header="abc"),
        400,
        "Inference-Header-Content-Length must be an integer, got 'abc'",
    ),
    (
        "v2 binary without header",
        V2,
        {"json": bin_head([1, 64], 256)},
        400,
        "input 'input' has binary_data_size but the request has no Inference-Header-Content-Length header",
    ),
    (
        "v2 trailing bytes",
        V2,
        binary(v2([1, 64], ROW)["json"], b"\0" * 8),
        400,
        "the body carries 8 bytes after the JSON header but no input has binary_data_size",
    ),
    (
        "v2 binary NaN",
        V2,
        binary(bin_head([1, 64], 256), np.full(64, np.nan, np.float32).tobytes()),
        400,
        "value at row 0, column 0 is NaN; expected a finite float32 number",
    ),
    (
        "v2 binary infinity",
        V2,
        binary(bin_head([1, 64], 512, "FP64"), np.full(64, np.inf).tobytes()),
        400,
        "value at row 0, column 0 is infinite",
    ),
    ("v2 unknown model", "/v2/models/nope/infer", v2([1, 64], ROW), 404, "unknown model 'nope'"),
    (
        "v2 unknown version",
        "/v2/models/digits/versions/9/infer",
        v2([1, 64], ROW),
        404,
        "model 'digits' has no version '9'; available: ['1', '2']",
    ),
    (
        "v2 gzip garbage",
        V2,
        {"content": b"not gzip", "headers": {"Content-Encoding": "gzip"}},
        400,
        "the body is not valid gzip data",
    ),
    # --- V1 ---
    (
        "v1 wrong feature count",
        V1,
        {"json": {"instances": ROWS_63}},
        400,
        "expected 64 features per row, got 63 (row 2)",
    ),
    ("v1 missing instances", V1, {"json": {"rows": [ROW]}}, 400, "'instances' is missing"),
    ("v1 empty batch", V1, {"json": {"instances": []}}, 400, "empty batch: 'instances' is empty"),
    (
        "v1 string value",
        V1,
        {"json": {"instances": [ROW, [*ROW[:63], "x"]]}},
        400,
        "value at row 1, column 63 is a string; expected a number",
    ),
    (
        "v1 unknown feature",
        V1,
        {"json": {"instances": [NAMED, {**NAMED, "colour": 1}]}},
        400,
        "unknown feature 'colour' (row 1)",
    ),
    (
        "v1 missing feature",
        V1,
        {"json": {"instances": [{k: v for k, v in NAMED.items() if k != "pixel_3_4"}]}},
        400,
        "missing feature 'pixel_3_4' (row 0)",
    ),
    ("v1 mixed rows", V1, {"json": {"instances": [NAMED, ROW]}}, 400, "row 1 is a list; expected an object"),
    (
        "v1 boolean value",
        V1,
        {"json": {"instances": [{**NAMED, "pixel_0_0": False}]}},
        400,
        "value at row 0, column 0 is a boolean",
    ),
    (
        "v1 beyond the model's input range",
        V1,
        {"json": {"instances": [{**NAMED, "pixel_0_2": 2e32}]}},
        400,
        "value at row 0, column 2 is 2e+32, outside the model's input range [-1e+32, 1e+32]",
    ),
    (
        "v1 unknown model",
        "/v1/models/nope:predict",
        {"json": {"instances": [ROW]}},
        404,
        "unknown model 'nope'",
    ),
    (
        "v1 columnar inputs",
        V1,
        {"json": {"inputs": [ROW]}},
        400,
        "the columnar 'inputs' format is not supported",
    ),
]


@pytest.mark.parametrize(("case", "path", "kwargs", "status", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    client: TestClient, case: str, path: str, kwargs: dict[str, Any], status: int, message: str
) -> None:
    response = client.post(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"], body
    assert message in body["error"]
    assert len(body["error"]) < 300  # names the problem, never echoes the payload


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    response = client.get("/v2/nothing/here")
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}
    response = client.get(V2)
    assert response.status_code == 405 and response.json() == {"error": "Method Not Allowed"}


def test_inputs_that_would_overflow_the_model_are_refused_first(client: TestClient) -> None:
    # Finite float32 inputs whose weighted sum overflows (softmax of inf is NaN, which must not go out as null)
    # lie beyond the model's input range: refused before the model runs. (The check of the outputs behind it,
    # for the rest: test_runtime.py.)
    response = client.post(V2, **v2([1, 64], [3e38] * 64))
    assert response.status_code == 400
    assert response.json() == {
        "error": "value at row 0, column 0 is 3e+38, outside the model's input range [-1e+32, 1e+32] "
        "(beyond it its outputs may overflow)"
    }
