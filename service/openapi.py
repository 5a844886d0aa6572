"""The OpenAPI document: error responses per route, request-body schemas, working examples, the key's scheme.

The request bodies are read by the data plane, not by FastAPI (it would cost a pydantic validation per
request), so their schemas are added here from :mod:`service.schemas`, with examples made from the first
loaded model (its name, version, and a row of its training means).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from service import schemas
from service.dataplane import JSON
from service.decoding import FLOAT32_MAX
from service.runtime import ModelRuntime
from service.state import ServiceState
from service.v2 import BOUNDS

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": schemas.ErrorResponse, "description": "Bad request: the message names the problem."},
    401: {"model": schemas.ErrorResponse, "description": "Missing or wrong bearer key (when auth is on)."},
    403: {
        "model": schemas.ErrorResponse,
        "description": "Switched off (the repository API in mode 'none').",
    },
    404: {"model": schemas.ErrorResponse, "description": "Unknown model or version."},
    409: {
        "model": schemas.ErrorResponse,
        "description": "In conflict with the server's state (an unload in poll mode: the repository decides).",
    },
    413: {"model": schemas.ErrorResponse, "description": "Body or batch larger than the configured limits."},
    500: {
        "model": schemas.ErrorResponse,
        "description": "Unexpected error; the message carries a request id.",
    },
    503: {"model": schemas.ErrorResponse, "description": "Models not loaded yet."},
}
#: How a guarded operation declares the key (only when one is set).
SECURITY_SCHEME = "HTTPBearer"


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses ``codes``."""
    return {code: _ERROR_RESPONSES[code] for code in codes}


def json_body(model: str) -> dict[str, Any]:
    """``openapi_extra`` for a required JSON request body of the schema ``model``."""
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{model}"}}},
        }
    }


def openapi_builder(app: FastAPI, state: ServiceState, key_required: bool) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` with the request-body schemas and examples built from the first served model (rebuilt
    after a swap, so that the examples name a version that serves)."""

    described: list[object] = [None]  # the served set the cached schema's examples were made from

    def build() -> dict[str, Any]:
        repository = state.repository  # one snapshot for the whole build
        if app.openapi_schema is not None and described[0] is repository:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, defs = models_json_schema(
            [
                (schemas.InferenceRequest, "validation"),
                (schemas.V1PredictRequest, "validation"),
                (schemas.InferenceResponse, "serialization"),
            ],
            ref_template="#/components/schemas/{model}",
        )
        components = spec.setdefault("components", {})
        components.setdefault("schemas", {}).update(defs.get("$defs", {}))
        if key_required:
            components["securitySchemes"] = {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Only when BNSERVE_API_KEY is set.",
                }
            }
        _exact_instances(components["schemas"])
        # With a key set the document stays open (a browser cannot send the key for /docs) but says nothing of
        # the models: no names, feature names or training means, which only the key's holders may read.
        if repository is not None and len(repository) and not key_required:
            _add_examples(spec, next(iter(repository)))
            _exact_features(components["schemas"], list(repository), state.settings.max_batch_rows)
            if any(m.tabular is not None for m in repository):
                _tabular_inputs(components["schemas"])
        if repository is not None:  # cache only the complete schema, until a swap changes the served set
            app.openapi_schema, described[0] = spec, repository
        return spec

    return build


def feature_number(limit: float = FLOAT32_MAX) -> dict[str, Any]:
    """A JSON number the service accepts as a feature value: within a model's input limit (at most float32's
    range; ``ModelRuntime.input_limit``)."""
    return {"type": "number", "minimum": -limit, "maximum": limit}


FLOAT32 = feature_number()


def _exact_instances(defs: dict[str, Any]) -> None:
    """``instances`` holds at least one row, whichever form (pydantic puts ``min_length`` on the union, as a
    ``minLength`` that only strings obey); every number, V1 or V2, within float32's range."""
    instances = defs["V1PredictRequest"]["properties"]["instances"]
    instances.pop("minLength", None)
    rows, named = instances["anyOf"]
    rows["minItems"] = named["minItems"] = 1
    rows["items"]["items"] = FLOAT32
    named["items"]["additionalProperties"] = FLOAT32
    tensor = defs["RequestInput"]
    # data: absent with binary data, never null; numbers within the declared datatype's range.
    tensor["properties"]["data"] = _flat_or_nested(FLOAT32)
    tensor["description"] = (
        f"{tensor.get('description', '')} The one rule this schema cannot state: 'shape' is [rows, features] "
        "of 'data', i.e. nested data has shape[0] rows and flat data shape[0] * shape[1] numbers."
    ).strip()
    # A JSON body carries its numbers in data; binary tensors (binary_data_size) are another body format, a JSON
    # header then raw bytes, announced by the Inference-Header-Content-Length header (see the route's text).
    tensor["required"] = [*tensor["required"], "data"]
    tensor["properties"]["parameters"] = {
        "anyOf": [
            {"type": "null"},
            {
                "type": "object",
                "properties": {"binary_data_size": {"type": "null"}},
                "description": "binary_data_size only in a binary tensor request",
            },
        ]
    }
    # The classification extension (Triton's) is refused by name; other output parameters are ignored.
    defs["OutputParameters"]["not"] = {"required": ["classification"]}
    tensor["allOf"] = [
        {
            "if": {"properties": {"datatype": {"const": name}}, "required": ["datatype"]},
            "then": {"properties": {"data": _flat_or_nested(_datatype_number(name, low, high))}},
        }
        for name, (low, high) in BOUNDS.items()
    ]


def _tabular_inputs(defs: dict[str, Any]) -> None:
    """A model with categorical or imputed features is served: V2 takes its second input ``categorical``
    (BYTES: strings, ``""`` for a missing cell) beside ``input``, and ``null`` for a missing number; V1 cells
    are numbers, strings, booleans or ``null`` (:mod:`service.tabular` says which feature takes which)."""
    tensor = defs["RequestInput"]
    properties = tensor["properties"]
    properties["name"] = {"type": "string", "enum": ["input", "categorical"]}
    properties["datatype"]["enum"] = [*properties["datatype"]["enum"], "BYTES"]
    properties["data"] = _flat_or_nested({"anyOf": [FLOAT32, {"type": "string"}, {"type": "null"}]})
    tensor["allOf"] = []  # the per-datatype number rules: a null may stand in any numeric datatype now
    tensor["description"] = (
        f"{tensor.get('description', '')} A model with categorical features takes two tensors: 'input' "
        "(numbers, null for a missing cell of an imputed feature) and 'categorical' (BYTES: strings, \"\" for a "
        "missing cell), each in the order of the model's parameters.features."
    )
    defs["InferenceRequest"]["properties"]["inputs"]["maxItems"] = 2
    cell = {"anyOf": [FLOAT32, {"type": "string"}, {"type": "boolean"}, {"type": "null"}]}
    rows, named = defs["V1PredictRequest"]["properties"]["instances"]["anyOf"]
    rows["items"]["items"] = cell
    named["items"]["additionalProperties"] = cell


def _flat_or_nested(number: dict[str, Any]) -> dict[str, Any]:
    return {
        "anyOf": [
            {"type": "array", "items": number},
            {"type": "array", "items": {"type": "array", "items": number}},
        ]
    }


def _datatype_number(name: str, low: float, high: float) -> dict[str, Any]:
    """What a JSON value of an integer datatype (a whole number in its range) or FP16 may be."""
    kind = "number" if name.startswith("FP") else "integer"
    return {
        "type": kind,
        "minimum": int(low) if kind == "integer" else low,
        "maximum": int(high) if kind == "integer" else high,
    }


def _exact_features(defs: dict[str, Any], models: list[ModelRuntime], max_rows: int) -> None:
    """When every loaded model takes the same features, say so: rows of that many numbers, objects with exactly
    those names, a V2 shape of ``[1..max_rows, F]``. (With models of different inputs one schema cannot tell
    which path takes which; the server's 400 names the mismatch.)"""
    names = {tuple(m.contract.feature_names) for m in models}
    if len(names) != 1 or any(m.tabular is not None for m in models):  # strings, nulls: not these schemas
        return
    (features,) = names
    f = len(features)
    # Every model's outputs stay finite within the smallest input limit (one schema for every path).
    number = feature_number(min(m.input_limit for m in models))
    rows, named = defs["V1PredictRequest"]["properties"]["instances"]["anyOf"]
    rows["items"] = {"type": "array", "items": number, "minItems": f, "maxItems": f}
    named["items"] = {
        "type": "object",
        "properties": dict.fromkeys(features, number),
        "required": list(features),
        "additionalProperties": False,
    }
    flat, nested = defs["RequestInput"]["properties"]["data"]["anyOf"]
    # whole rows (their count must match shape[0])
    flat.update(minItems=f, maxItems=max_rows * f, items=number)
    nested.update(minItems=1, maxItems=max_rows)
    nested["items"].update(minItems=f, maxItems=f, items=number)
    outputs = {(*m.output_names, *m.hidden_output_names) for m in models}
    if len(outputs) == 1:  # the same task everywhere: only its outputs can be asked for, each at most once
        (choices,) = outputs
        defs["RequestOutput"]["properties"]["name"] = {"enum": list(choices)}
        requested = defs["InferenceRequest"]["properties"]["outputs"]
        listed = next(s for s in requested["anyOf"] if s.get("type") == "array")
        listed["maxItems"] = len(choices)
        listed["allOf"] = [
            {
                "contains": {"properties": {"name": {"const": name}}, "required": ["name"]},
                "minContains": 0,
                "maxContains": 1,
            }
            for name in choices
        ]
    shape = defs["RequestInput"]["properties"]["shape"]
    # More rows than BNSERVE_MAX_BATCH_ROWS get 413.
    shape["prefixItems"] = [
        {"type": "integer", "minimum": 1, "maximum": max_rows},
        {"type": "integer", "const": f},
    ]
    rows["maxItems"] = named["maxItems"] = max_rows


def _add_examples(spec: dict[str, Any], model: ModelRuntime) -> None:
    """Working examples in /docs: the model's name and version, and a row of its training means."""
    if model.tabular is not None:
        _add_tabular_examples(spec, model)
        return
    row = [round(float(v), 4) for v in model.contract.input_stats.mean]
    f = model.n_features
    v2_examples = {
        "nested": {
            "summary": "one row, nested data",
            "value": {
                "id": "example-1",
                "inputs": [{"name": "input", "shape": [1, f], "datatype": "FP32", "data": [row]}],
            },
        },
        "flat": {
            "summary": "two rows, flat data, selected output",
            "value": {
                "inputs": [{"name": "input", "shape": [2, f], "datatype": "FP64", "data": row + row}],
                "outputs": [{"name": model.output_names[0]}],
            },
        },
    }
    v1_examples = {
        "rows": {"summary": "rows in feature order", "value": {"instances": [row]}},
        "named": {
            "summary": "named features",
            "value": {
                "instances": [dict(zip(model.contract.feature_names, row))],
            },
        },
    }
    _set_examples(spec, model, v1_examples, v2_examples)


def _add_tabular_examples(spec: dict[str, Any], model: ModelRuntime) -> None:
    """A model with categorical or imputed features: the training means and each most frequent category."""
    mc = model.contract
    numbers = dict(zip(mc.numeric_names, (round(float(v), 4) for v in mc.input_stats.mean)))
    strings = {s.name: max(zip(s.frequencies, s.categories))[1] for s in mc.inputs if not s.is_numeric}
    named: dict[str, Any] = {
        n: numbers[n] if n in numbers else (strings[n] == "true" if _boolean(model, n) else strings[n])
        for n in mc.feature_names
    }
    inputs: list[dict[str, Any]] = [
        {"name": "input", "shape": [1, len(numbers)], "datatype": "FP32", "data": list(numbers.values())}
    ]
    if strings:
        inputs.append(
            {
                "name": "categorical",
                "shape": [1, len(strings)],
                "datatype": "BYTES",
                "data": list(strings.values()),
            }
        )
    v2_examples = {"named inputs": {"summary": "one row, both inputs", "value": {"inputs": inputs}}}
    v1_examples = {
        "named": {"summary": "named features", "value": {"instances": [named]}},
        "rows": {"summary": "rows in feature order", "value": {"instances": [list(named.values())]}},
    }
    _set_examples(spec, model, v1_examples, v2_examples)


def _boolean(model: ModelRuntime, name: str) -> bool:
    return any(s.name == name and s.kind == "boolean" for s in model.contract.inputs)


def _set_examples(
    spec: dict[str, Any], model: ModelRuntime, v1_examples: dict[str, Any], v2_examples: dict[str, Any]
) -> None:
    """Put the examples on every route's request body, and the model's name and version on its parameters."""
    for path, item in spec.get("paths", {}).items():
        for operation in item.values():
            for param in operation.get("parameters", []):
                if param.get("name") == "name":
                    param["example"] = model.name
                elif param.get("name") == "version":
                    param["example"] = str(model.version)
            content = operation.get("requestBody", {}).get("content", {}).get(JSON)
            if content is not None:
                content["examples"] = v2_examples if path.startswith("/v2") else v1_examples
