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
from service.runtime import ModelRuntime
from service.state import ServiceState

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": schemas.ErrorResponse, "description": "Bad request: the message names the problem."},
    401: {"model": schemas.ErrorResponse, "description": "Missing or wrong bearer key (when auth is on)."},
    404: {"model": schemas.ErrorResponse, "description": "Unknown model or version."},
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
    """``app.openapi`` with the request-body schemas and examples built from the first loaded model."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
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
        if state.repository is not None and len(state.repository):
            _add_examples(spec, next(iter(state.repository)))
        if state.repository is not None:  # cache only the complete schema
            app.openapi_schema = spec
        return spec

    return build


def _add_examples(spec: dict[str, Any], model: ModelRuntime) -> None:
    """Working examples in /docs: the model's name and version, and a row of its training means."""
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
