"""Open Inference Protocol (KServe V2) codec: request bytes -> float32 batch, outputs -> response bytes.

Includes the binary tensor data extension: with an ``Inference-Header-Content-Length`` header, the body is a
JSON header of that many bytes followed by raw little-endian tensors, each input announcing its size in
``parameters.binary_data_size``; outputs asked for with ``binary_data`` (or the request-level
``binary_data_output``) come back the same way. No FastAPI here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

import contract
from service.decoding import (
    Numbers,
    check_widths,
    checked_rows,
    describe,
    has_literals,
    loads,
    loads_tensors,
    nested_rows,
    numbers_to_rows,
    to_float32_rows,
)
from service.errors import BadRequest, PayloadTooLarge
from service.runtime import ModelRuntime
from service.tabular import Tabular

PLATFORM = "onnx_onnxv1"
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data",)

#: Input datatypes accepted (all converted to float32), with their little-endian wire dtype.
DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code).newbyteorder("<")
    for name, code in {
        "FP16": "f2",
        "FP32": "f4",
        "FP64": "f8",
        "INT8": "i1",
        "INT16": "i2",
        "INT32": "i4",
        "INT64": "i8",
        "UINT8": "u1",
        "UINT16": "u2",
        "UINT32": "u4",
        "UINT64": "u8",
    }.items()
}
_KNOWN_UNSUPPORTED = {"BOOL", "BYTES", "BF16"}
#: What a JSON value may be for each datatype but FP32 and FP64 (whose range is float32's, checked for all).
BOUNDS: dict[str, tuple[float, float]] = {
    name: (float(np.iinfo(dtype).min), float(np.iinfo(dtype).max))
    for name, dtype in DATATYPES.items()
    if dtype.kind in "iu"
} | {"FP16": (-float(np.finfo(np.float16).max), float(np.finfo(np.float16).max))}


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request: the rows, the outputs to return (name, as binary?) and the echoed id."""

    x: np.ndarray  # (N, F) float32, finite (but for NaN in the missing cells of imputed features)
    outputs: tuple[tuple[str, bool], ...]
    id: str | None
    categorical: np.ndarray | None = None  # (N, K) str: the ``categorical`` input, when the model has one


def server_metadata(version: str) -> dict[str, Any]:
    """``GET /v2``."""
    return {"name": "bnserve", "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(model: ModelRuntime, versions: list[int]) -> dict[str, Any]:
    """``GET /v2/models/{name}``: tensors with ``-1`` for the batch axis, plus the contract's names and the
    input range the model is served on."""
    mc = model.contract
    parameters: dict[str, Any] = {
        "task": mc.task,
        "feature_names": mc.feature_names,
        "input_range": [-model.input_limit, model.input_limit],  # beyond it, 400: the outputs may overflow
    }
    if model.is_classification:
        parameters["class_labels"] = mc.class_labels
    else:
        parameters["target_names"] = mc.target_names
    if mc.inputs:  # the contract describes each feature: kind, categories, imputed value, missing rate
        parameters["features"] = [spec.to_json() for spec in mc.inputs]
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [spec.to_json() for spec in model.input_specs],
        "outputs": [spec.to_json() for spec in model.output_specs],
        "parameters": parameters,
    }


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object, got {describe(value)}")
    return value


def check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{what} must be true or false, got {describe(value)}")
    return value


def parse_infer_request(
    body: bytes, header_length: str | None, model: ModelRuntime, max_rows: int
) -> InferRequest:
    """Decode and validate a V2 inference body for ``model``; :class:`BadRequest` / :class:`PayloadTooLarge`."""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER_LENGTH} must be an integer, got {header_length[:32]!r}") from None
        if not 0 <= json_size <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} is {json_size} but the body has only {len(body)} bytes")
        view = memoryview(body)
        head = view[:json_size]
        request = loads(head)
        binary = view[json_size:]
    else:
        if len(body) <= QUICK_MAX_BYTES and model.tabular is None and model.categorical_spec is None:
            quick = _quick_request(body, model, max_rows)
            if quick is not None:
                return quick
        head = memoryview(body)
        # The data arrays straight to float64, when nothing is unusual (strings are: a categorical input's).
        request = loads_tensors(body) if model.categorical_spec is None else None
        if request is None:
            request = loads(body)
        binary = memoryview(b"")
    if not isinstance(request, dict):
        raise BadRequest(f"the request must be a JSON object, got {describe(request)}")

    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string, got {describe(request_id)}")
    parameters = _dict(request.get("parameters"), "'parameters'")
    binary_default = check_bool(parameters.get("binary_data_output", False), "parameter 'binary_data_output'")

    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    categorical = None
    if model.tabular is not None:  # categorical, boolean or imputed features (service.tabular)
        x, categorical = _decode_tabular(
            inputs, model, model.tabular, max_rows, binary, header_length is not None, has_literals(head)
        )
    elif len(inputs) != 1:
        raise BadRequest(
            f"model {model.name!r} takes one input tensor {contract.INPUT_NAME!r}, got {len(inputs)}"
        )
    else:
        x = _decode_input(inputs[0], model, max_rows, binary, header_length is not None, has_literals(head))
    outputs = requested_outputs(request.get("outputs"), model, binary_default)
    return InferRequest(x=x, outputs=outputs, id=request_id, categorical=categorical)


#: Bodies up to this size try :func:`_quick_request` first; beyond it the simdjson path is cheaper.
QUICK_MAX_BYTES = 1024
_QUICK_TYPES = ("FP32", "FP64")


def _quick_request(body: bytes, model: ModelRuntime, max_rows: int) -> InferRequest | None:
    """The usual small request, decoded in a few steps: ``{"inputs": [{"name": "input", "shape": [n, F],
    "datatype": "FP32" or "FP64", "data": [...]}]}`` and an optional string ``id``, its numbers flat or in
    rows, finite and within the model's input range. None for anything else, including every error: then
    the general path decides, and says what is wrong (``tests/service/test_v2.py`` holds the two to the
    same answers).

    At batch 1 (64 features) it takes half the time of the general path, whose checks each cost a call; from
    about 1.4 KB of body on, the general path's simdjson decode is cheaper.
    """
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(request) is not dict:
        return None
    rid = request.get("id")
    inputs = request.get("inputs")
    if len(request) != (1 if rid is None else 2) or type(inputs) is not list or len(inputs) != 1:
        return None
    if rid is not None and type(rid) is not str:
        return None
    tensor = inputs[0]
    if type(tensor) is not dict or len(tensor) != 4 or tensor.get("name") != contract.INPUT_NAME:
        return None
    shape, data = tensor.get("shape"), tensor.get("data")
    if tensor.get("datatype") not in _QUICK_TYPES or type(shape) is not list or type(data) is not list:
        return None
    if len(shape) != 2 or type(shape[0]) is not int or type(shape[1]) is not int:
        return None
    n_rows, n_cols = shape
    if n_cols != model.n_features or not 0 < n_rows <= max_rows or has_literals(body):
        return None
    try:
        values = np.array(data)  # its dtype says what the numbers are: no string is converted
    except ValueError:  # ragged rows
        return None
    if values.dtype.kind not in "fi" or (
        values.shape != (n_rows * n_cols,) and values.shape != (n_rows, n_cols)
    ):
        return None  # strings, nulls (object), lists where numbers belong
    try:  # float64 first: no overflow in its range check
        x = to_float32_rows(values.astype(np.float64, copy=False).reshape(n_rows, n_cols), model.input_limit)
    except BadRequest:  # NaN (a null), infinities, beyond the input range
        return None
    return InferRequest(x=x, outputs=requested_outputs(None, model, False), id=rid)


def tabular_inputs(names: list[Any], tab: Tabular, model_name: str) -> None:
    """A model with categorical or imputed features takes ``input`` (and ``categorical`` when it has
    categorical features), each once, in any order; :class:`BadRequest` otherwise (REST and gRPC)."""
    wanted = [contract.INPUT_NAME, *([contract.INPUT_CATEGORICAL] if tab.has_categorical else [])]
    for name in names:
        if name not in wanted:
            shown = repr(name[:64]) if isinstance(name, str) else describe(name)
            raise BadRequest(f"unknown input {shown}; model {model_name!r} takes the inputs {wanted}")
    if sorted(names) != sorted(wanted):
        raise BadRequest(f"model {model_name!r} takes the inputs {wanted} (each once), got {names[:8]}")


def _decode_tabular(
    inputs: list[Any],
    model: ModelRuntime,
    tab: Tabular,
    max_rows: int,
    binary: memoryview,
    has_binary_header: bool,
    booleans_possible: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``input`` and ``categorical`` by name; binary data is laid out in the order of ``inputs``."""
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise BadRequest(f"an input tensor must be an object, got {describe(tensor)}")
    tabular_inputs([t.get("name") for t in inputs], tab, model.name)
    by_name: dict[str, dict[str, Any]] = {t["name"]: t for t in inputs}
    parts: dict[str, memoryview] = {}
    offset = 0
    for tensor in inputs:
        size = _dict(tensor.get("parameters"), f"input {tensor['name']!r} parameters").get("binary_data_size")
        if size is None:
            parts[tensor["name"]] = binary[:0]
            continue
        if not _whole(size) or size < 0:
            raise BadRequest(f"input {tensor['name']!r}: binary_data_size must be a non-negative integer")
        parts[tensor["name"]] = binary[offset : offset + int(size)]
        offset += int(size)
    if offset != len(binary):
        raise BadRequest(
            f"binary data sizes add up to {offset} bytes but the body carries {len(binary)} bytes after the "
            "JSON header"
        )
    try:
        x = _decode_input(
            by_name[contract.INPUT_NAME],
            model,
            max_rows,
            parts[contract.INPUT_NAME],
            has_binary_header,
            booleans_possible,
            tab,
        )
    except BadRequest as exc:  # name the feature of a bad cell, not only its column
        raise BadRequest(tab.name_column(exc.message, tab.numeric)) from None
    if not tab.has_categorical:
        return x, None
    tensor = by_name[contract.INPUT_CATEGORICAL]
    tab.check_categorical_header(tensor.get("datatype"), tensor.get("shape"), len(x))
    if _dict(tensor.get("parameters"), "input 'categorical' parameters").get("binary_data_size") is None:
        return x, tab.json_strings(tensor.get("data"), len(x))
    if "data" in tensor:
        raise BadRequest("input 'categorical' has both 'data' and parameter binary_data_size")
    if not has_binary_header:
        raise BadRequest(
            f"input 'categorical' has binary_data_size but the request has no {HEADER_LENGTH} header"
        )
    return x, tab.byte_strings(parts[contract.INPUT_CATEGORICAL], len(x), "input 'categorical'")


def check_input_header(
    name: Any, datatype: Any, shape: Any, model: ModelRuntime, max_rows: int
) -> tuple[int, int]:
    """Name, datatype and shape of the one input tensor, whatever the wire (JSON or gRPC); (rows, features).

    :class:`BadRequest` naming what is wrong, :class:`PayloadTooLarge` for too many rows.
    """
    if name != contract.INPUT_NAME:
        shown = repr(name[:64]) if isinstance(name, str) else describe(name)
        raise BadRequest(
            f"unknown input {shown}; model {model.name!r} takes one input {contract.INPUT_NAME!r}"
        )
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        shown = repr(datatype[:16]) if isinstance(datatype, str) else describe(datatype)
        kind = "unsupported" if isinstance(datatype, str) and datatype in _KNOWN_UNSUPPORTED else "unknown"
        raise BadRequest(
            f"input 'input' has {kind} datatype {shown}; expected FP32 (FP16, FP64, INT*, UINT* are converted)"
        )
    if not isinstance(shape, list) or not all(_whole(d) and d >= 0 for d in shape):
        raise BadRequest("input 'input': 'shape' must be a list of non-negative integers")
    shape = [int(d) for d in shape]
    n_features = model.n_features
    if len(shape) != 2:
        raise BadRequest(f"input 'input' must have shape [N, {n_features}], got {shape[:8]}")
    n_rows, n_cols = shape
    if n_cols != n_features:
        raise BadRequest(f"expected {n_features} features per row, got {n_cols} (shape {shape})")
    if n_rows == 0:
        raise BadRequest("empty batch: the input has 0 rows")
    if n_rows > max_rows:
        raise PayloadTooLarge(f"{n_rows} rows exceed the limit of {max_rows} rows per request")
    return n_rows, n_cols


def _decode_input(
    tensor: Any,
    model: ModelRuntime,
    max_rows: int,
    binary: memoryview,
    has_binary_header: bool,
    booleans_possible: bool = True,
    tab: Tabular | None = None,
) -> np.ndarray:
    """The ``input`` tensor: JSON ``data`` or its binary bytes ``binary`` -> float32 rows (N, F); with ``tab``
    (a model with imputed features) a missing cell (JSON null, binary NaN) of an imputed feature is NaN."""
    if not isinstance(tensor, dict):
        raise BadRequest(f"an input tensor must be an object, got {describe(tensor)}")
    datatype = tensor.get("datatype")
    shape = tensor.get("shape")
    n_rows, n_cols = check_input_header(tensor.get("name"), datatype, shape, model, max_rows)
    datatype = str(datatype)  # one of DATATYPES: checked above
    shape = [n_rows, n_cols]

    parameters = _dict(tensor.get("parameters"), "input 'input' parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        if len(binary):
            raise BadRequest(
                f"the body carries {len(binary)} bytes after the JSON header but no input has binary_data_size"
            )
        data: Any = tensor.get("data")
        fast = isinstance(data, Numbers)  # parsed straight to float64 by decoding.loads_tensors
        if not fast and not isinstance(data, list):
            raise BadRequest(f"input 'input' needs 'data' (a list of numbers), got {describe(data)}")
        nested = data.widths is not None if fast else bool(data) and isinstance(data[0], list)
        # len(data): the JSON list's length either way (rows when nested, numbers when flat)
        if nested and len(data) != n_rows:
            raise BadRequest(f"shape {shape} has {n_rows} rows but 'data' has {len(data)}")
        if not nested and len(data) != n_rows * n_cols:
            raise BadRequest(f"shape {shape} needs {n_rows * n_cols} values but 'data' has {len(data)}")
        if fast:
            if nested:
                check_widths(data.widths, n_cols)
            return checked_rows(
                data.values.reshape(n_rows, n_cols),
                integral=DATATYPES[datatype].kind in "iu",
                bounds=BOUNDS.get(datatype),
                limit=model.input_limit,
            )
        flat = nested_rows(data, n_cols) if nested else data
        if tab is not None:
            flat = tab.json_numbers(flat, n_cols)
        return numbers_to_rows(
            flat,
            n_rows,
            n_cols,
            integral=DATATYPES[datatype].kind in "iu",
            booleans_possible=booleans_possible,
            bounds=BOUNDS.get(datatype),
            limit=model.input_limit,
            nan_columns=None if tab is None else tab.nan_columns,
        )

    if "data" in tensor:
        raise BadRequest("input 'input' has both 'data' and parameter binary_data_size")
    if not has_binary_header:
        raise BadRequest(f"input 'input' has binary_data_size but the request has no {HEADER_LENGTH} header")
    if not _whole(size) or size < 0:
        raise BadRequest("input 'input': binary_data_size must be a non-negative integer")
    size = int(size)
    dtype = DATATYPES[datatype]
    needed = n_rows * n_cols * dtype.itemsize
    if size != needed:
        raise BadRequest(
            f"input 'input': binary_data_size is {size} bytes but shape {shape} of {datatype} needs {needed}"
        )
    if size != len(binary):
        raise BadRequest(
            f"binary data sizes add up to {size} bytes but the body carries {len(binary)} bytes after the JSON header"
        )
    values = np.frombuffer(binary, dtype=dtype).reshape(n_rows, n_cols)  # (N, F)
    return to_float32_rows(values, model.input_limit, None if tab is None else tab.nan_columns)


def _whole(value: Any) -> bool:
    """A JSON integer: ``3``, or ``3.0`` (JSON Schema's ``integer`` is any number without a fraction)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def requested_outputs(
    requested: Any, model: ModelRuntime, binary_default: bool
) -> tuple[tuple[str, bool], ...]:
    if requested is None or requested == []:
        return tuple((name, binary_default) for name in model.output_names)
    if not isinstance(requested, list):
        raise BadRequest(f"'outputs' must be a list, got {describe(requested)}")
    chosen: list[tuple[str, bool]] = []
    for item in requested:
        if not isinstance(item, dict):
            raise BadRequest(f"each requested output must be an object, got {describe(item)}")
        name = item.get("name")
        if name not in model.output_names and name not in model.hidden_output_names:
            shown = repr(name[:64]) if isinstance(name, str) else describe(name)
            hidden = (
                f" (and, on request, the hidden {list(model.hidden_output_names)})"
                if model.hidden_output_names
                else ""
            )
            raise BadRequest(
                f"unknown output {shown}; model {model.name!r} outputs {list(model.output_names)}{hidden}"
            )
        if any(name == seen for seen, _ in chosen):
            raise BadRequest(f"output {name!r} is requested twice")
        parameters = _dict(item.get("parameters"), f"output {name!r} parameters")
        if "classification" in parameters:
            raise BadRequest("the classification extension is not supported; ask for 'probabilities' instead")
        binary = check_bool(
            parameters.get("binary_data", binary_default), f"output {name!r} parameter 'binary_data'"
        )
        chosen.append((name, binary))
    return tuple(chosen)


def encode_infer_response(
    model: ModelRuntime, request: InferRequest, results: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (binary outputs appended after the JSON header)."""
    datatypes = model.output_datatypes
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, as_binary in request.outputs:
        values = results[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatypes[name], "shape": list(values.shape)}
        if as_binary:
            raw = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = values.ravel()
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = entries
    head = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"Content-Type": "application/json"}
    headers = {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}
    return head + b"".join(blobs), headers
