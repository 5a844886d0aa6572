"""The simdjson route for V2 JSON tensors (decoding.loads_tensors) decides exactly as the exact orjson route.

Every request is decoded twice: as the service does (simdjson when it can vouch for the data) and with that
route turned off (orjson and the per-element checks). Rows, errors and their messages must be identical; the
cases the fast route must not take are checked to fall back.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import decoding, v2
from service.decoding import Numbers, loads_tensors
from service.errors import ServiceError
from service.runtime import ModelRuntime
from tests.service.conftest import Repo


@pytest.fixture(scope="module")
def model(repo: Repo) -> ModelRuntime:
    from service.runtime import load_model

    return load_model("iris", 1, repo.root / "iris" / "1" / "model.onnx")  # 4 features


def decode(body: bytes, model: ModelRuntime, fast: bool) -> tuple[str, Any]:
    """('ok', rows) or ('error', status and message), through the fast route or the exact one only."""
    real = decoding.loads_tensors
    if not fast:
        v2.loads_tensors = lambda body: None  # type: ignore[assignment]
    try:
        x = v2.parse_infer_request(body, None, model, 1000).x
        return "ok", x
    except ServiceError as exc:
        return "error", (exc.status_code, exc.message)
    finally:
        v2.loads_tensors = real  # type: ignore[assignment]


def same(body: bytes, model: ModelRuntime) -> tuple[str, Any]:
    fast, exact = decode(body, model, True), decode(body, model, False)
    assert fast[0] == exact[0], (fast, exact)
    if fast[0] == "ok":
        assert fast[1].dtype == np.float32 and np.array_equal(fast[1], exact[1])
    else:
        assert fast[1] == exact[1]
    return fast


def request(data: Any, shape: list[int], datatype: str = "FP32", **extra: Any) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}], **extra}
    ).encode()


numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.floats(-1e6, 1e6),
)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.lists(numbers, min_size=4, max_size=4), min_size=1, max_size=5),
    nested=st.booleans(),
    datatype=st.sampled_from(["FP32", "FP64", "INT32", "INT64", "FP16", "UINT8"]),
)
def test_any_numbers_decode_the_same_both_ways(
    model: ModelRuntime, rows: list[list[Any]], nested: bool, datatype: str
) -> None:
    data = rows if nested else [v for row in rows for v in row]
    same(request(data, [len(rows), 4], datatype), model)


def test_a_plain_request_takes_the_fast_route() -> None:
    parsed = loads_tensors(request([[1, 2.5, -3e2, 0]], [1, 4], id="a", outputs=[{"name": "label"}]))
    assert parsed is not None
    data = parsed["inputs"][0]["data"]
    assert isinstance(data, Numbers) and data.widths == (4,)
    assert data.values.tolist() == [1.0, 2.5, -300.0, 0.0]
    assert parsed["id"] == "a" and parsed["outputs"] == [{"name": "label"}]


@pytest.mark.parametrize(
    "body",
    [
        request([1, "2", 3, 4], [1, 4]),  # a string
        request([1, True, 3, 4], [1, 4]),  # a boolean
        request([1, None, 3, 4], [1, 4]),  # null
        request([1, [2], 3, 4], [1, 4]),  # a number hidden in a one-element list
        request([[1, 2, 3, 4], 5], [2, 4]),  # a row that is not a list
        request([[[1, 2, 3, 4]]], [1, 4]),  # too deep
        request([1, 2, 3, 4], [1, 4], id="a [bracket]"),  # "[" in a string: cannot count arrays
        b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, NaN, 3, 4]}]}',
        b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 1e999, 3, 4]}]}',
        b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}',
        b"[1, 2, 3, 4]",
        # a repeated key (orjson keeps the last one), at the top and in a tensor
        b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], '
        b'"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5, 6, 7, 8]}]}',
        b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], '
        b'"data": [5, 6, 7, 8]}]}',
        # a key with a NUL, which simdjson lists but cannot look up (found by schemathesis)
        b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], '
        b'"\\u0000x": 1}',
    ],
)
def test_what_the_fast_route_cannot_vouch_for_goes_the_exact_way(body: bytes, model: ModelRuntime) -> None:
    assert loads_tensors(body) is None
    same(body, model)


@pytest.mark.parametrize(
    "body",
    [
        request([1, 2, 3], [1, 4]),  # too few values
        request([[1, 2, 3, 4]], [2, 4]),  # too few rows
        request([[1, 2, 3, 4], [1, 2, 3]], [2, 4]),  # a short row
        request([[1, 2, 3], [4, 5, 6, 7, 8]], [2, 4]),  # ragged rows whose total is right
        request([1.5, 2, 3, 4], [1, 4], "INT32"),  # not whole
        request([300, 2, 3, 4], [1, 4], "UINT8"),  # out of the datatype's range
        request([1e39, 2, 3, 4], [1, 4], "FP64"),  # beyond float32
        request([1, 2, 3e37, 4], [1, 4]),  # beyond the model's input range (ModelRuntime.input_limit)
        request([], [1, 4]),
    ],
)
def test_errors_read_the_same_both_ways(body: bytes, model: ModelRuntime) -> None:
    assert model.input_limit < 3e37
    assert loads_tensors(body) is not None  # taken by the fast route, refused by the same checks
    assert same(body, model)[0] == "error"
