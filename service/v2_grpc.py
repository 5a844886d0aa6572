"""Open Inference Protocol over gRPC, codec: ``ModelInferRequest`` -> float32 batch, outputs -> response.

The gRPC twin of :mod:`service.v2`: the same checks in the same words (the tensor checks are V2's own
functions), the same :class:`~service.v2.InferRequest` for the model, only the wire form differs. Input data
comes either as ``raw_input_contents`` (little-endian bytes, what ``tritonclient.grpc`` sends) or as typed
``contents`` (the repeated field of the datatype: ``fp32_contents`` for FP32, ``int_contents`` for INT8..32,
...). The response answers in kind: raw outputs to raw inputs, typed to typed; the request parameter
``binary_data_output`` (or the outputs' ``binary_data``) chooses explicitly. A gRPC response carries either
every output raw or none (the protocol forbids mixing), so conflicting per-output choices are refused. No grpc
import here: the transport is :mod:`service.grpc_server`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import contract
from service import proto, v2
from service.decoding import check_bounds, to_float32_rows
from service.errors import BadRequest
from service.runtime import ModelRuntime
from service.tabular import Tabular

#: The ``InferTensorContents`` field that carries each datatype (FP16 has none: raw only), and its dtype.
CONTENTS_FIELD: dict[str, str | None] = {
    "FP16": None,
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
}
_FIELD_DTYPE = {
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
}
#: Output datatype -> the typed field its values go in.
_OUTPUT_FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents"}


def parameter_value(parameter: Any) -> Any:
    """An ``InferParameter`` as the JSON value REST would carry (``None`` when no choice is set)."""
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def _parameters(parameters: Any) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in parameters.items()}


def server_metadata(version: str) -> Any:
    """``ServerMetadata``: what ``GET /v2`` says."""
    return proto.ServerMetadataResponse(**v2.server_metadata(version))


def model_metadata(model: ModelRuntime, versions: list[int]) -> Any:
    """``ModelMetadata``: what ``GET /v2/models/{name}`` says, less its ``parameters`` (no field for them)."""
    meta = v2.model_metadata(model, versions)
    return proto.ModelMetadataResponse(
        name=meta["name"],
        versions=meta["versions"],
        platform=meta["platform"],
        inputs=meta["inputs"],
        outputs=meta["outputs"],
    )


def parse_infer_request(request: Any, model: ModelRuntime, max_rows: int) -> v2.InferRequest:
    """Decode and validate a ``ModelInferRequest`` for ``model``; :class:`BadRequest` / ``PayloadTooLarge``."""
    parameters = _parameters(request.parameters)
    inputs = request.inputs
    if not inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    tab = model.tabular
    if tab is None and len(inputs) != 1:
        raise BadRequest(
            f"model {model.name!r} takes one input tensor {contract.INPUT_NAME!r}, got {len(inputs)}"
        )
    if tab is not None:
        v2.tabular_inputs([t.name for t in inputs], tab, model.name)
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {len(inputs)} input tensors")
    categorical = None
    if tab is None:
        x = _decode_input(inputs[0], raw[0] if raw else None, model, max_rows)
    else:
        x, categorical = _decode_tabular(inputs, raw, model, tab, max_rows)

    binary_default = bool(raw)  # answer in kind unless asked otherwise
    if "binary_data_output" in parameters:
        binary_default = v2.check_bool(parameters["binary_data_output"], "parameter 'binary_data_output'")
    requested = [{"name": o.name, "parameters": _parameters(o.parameters)} for o in request.outputs]
    outputs = v2.requested_outputs(requested, model, binary_default)
    if len({as_binary for _, as_binary in outputs}) > 1:
        raise BadRequest(
            "a gRPC response carries every output raw or every output typed: the outputs' binary_data "
            "parameters disagree"
        )
    return v2.InferRequest(x=x, outputs=outputs, id=request.id or None, categorical=categorical)


def _decode_tabular(
    inputs: Any, raw: Any, model: ModelRuntime, tab: Tabular, max_rows: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """``input`` and ``categorical`` by name (raw contents in the order of the inputs, or typed contents)."""
    where = {tensor.name: k for k, tensor in enumerate(inputs)}
    k = where[contract.INPUT_NAME]
    try:
        x = _decode_input(inputs[k], raw[k] if raw else None, model, max_rows, tab)
    except BadRequest as exc:  # name the feature of a bad cell, not only its column
        raise BadRequest(tab.name_column(exc.message, tab.numeric)) from None
    if not tab.has_categorical:
        return x, None
    k = where[contract.INPUT_CATEGORICAL]
    tensor = inputs[k]
    tab.check_categorical_header(tensor.datatype, list(tensor.shape), len(x))
    what = "input 'categorical'"
    if raw:
        if tensor.HasField("contents"):
            raise BadRequest(f"{what} has both typed contents and raw_input_contents")
        return x, tab.byte_strings(raw[k], len(x), what)
    used = [f.name for f, _ in tensor.contents.ListFields()]
    if used and used != ["bytes_contents"]:
        raise BadRequest(f"{what} is BYTES: its values go in contents.bytes_contents, got {', '.join(used)}")
    return x, tab.bytes_contents(tensor.contents.bytes_contents, len(x), what)


def _decode_input(
    tensor: Any, raw: bytes | None, model: ModelRuntime, max_rows: int, tab: Tabular | None = None
) -> np.ndarray:
    """One input tensor (header + raw bytes or typed contents) -> finite float32 rows (N, F); with ``tab``, NaN
    is a missing cell of an imputed feature."""
    nan_columns = None if tab is None else tab.nan_columns
    shape = list(tensor.shape)
    n_rows, n_cols = v2.check_input_header(tensor.name, tensor.datatype, shape, model, max_rows)
    datatype = tensor.datatype
    if raw is not None:
        if tensor.HasField("contents"):
            raise BadRequest("input 'input' has both typed contents and raw_input_contents")
        dtype = v2.DATATYPES[datatype]
        needed = n_rows * n_cols * dtype.itemsize
        if len(raw) != needed:
            raise BadRequest(
                f"input 'input': raw_input_contents[0] has {len(raw)} bytes but shape {shape} of {datatype} "
                f"needs {needed}"
            )
        values = np.frombuffer(raw, dtype=dtype).reshape(n_rows, n_cols)  # (N, F)
        return to_float32_rows(values, model.input_limit, nan_columns)
    field = CONTENTS_FIELD[datatype]
    if field is None:
        raise BadRequest(f"input 'input' is {datatype}, which only raw_input_contents can carry")
    contents = tensor.contents
    used = [f.name for f, _ in contents.ListFields()]
    if used and used != [field]:
        raise BadRequest(
            f"input 'input' is {datatype}: its values go in contents.{field}, got {', '.join(used)}"
        )
    values = getattr(contents, field)
    if len(values) != n_rows * n_cols:
        raise BadRequest(
            f"shape {shape} needs {n_rows * n_cols} values but contents.{field} has {len(values)}"
        )
    array = np.fromiter(values, dtype=_FIELD_DTYPE[field], count=len(values)).reshape(
        n_rows, n_cols
    )  # (N, F)
    if (
        array.dtype.itemsize > v2.DATATYPES[datatype].itemsize
    ):  # INT8/16 in int_contents, UINT8/16 in uint_...
        check_bounds(array.astype(np.float64), v2.BOUNDS[datatype])  # the declared range, as for JSON
    return to_float32_rows(array, model.input_limit, nan_columns)


def encode_infer_response(
    model: ModelRuntime, request: v2.InferRequest, results: dict[str, np.ndarray]
) -> Any:
    """The ``ModelInferResponse``: the requested outputs, raw or typed as the request decided."""
    datatypes = {spec.name: spec.datatype for spec in model.output_specs}
    datatypes.update(dict.fromkeys(model.hidden_output_names, "FP32"))
    response = proto.ModelInferResponse(model_name=model.name, model_version=str(model.version))
    if request.id is not None:
        response.id = request.id
    for name, as_raw in request.outputs:
        values = results[name]
        datatype = datatypes[name]
        tensor = response.outputs.add(name=name, datatype=datatype, shape=values.shape)
        if as_raw:
            little = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
            response.raw_output_contents.append(little.tobytes())
        else:
            getattr(tensor.contents, _OUTPUT_FIELD[datatype]).extend(values.ravel().tolist())
    return response
