"""V1 predict codec (TensorFlow-Serving / KServe V1 style): ``{"instances": ...}`` -> ``{"predictions": ...}``.

Instances are rows of numbers in the contract's feature order, or objects keyed by feature name (a model with
categorical, boolean or imputed features takes strings, booleans and nulls too: :mod:`service.tabular`). Predictions
speak the contract's language: the original class value and a probability per class, or the regression
value(s). No FastAPI here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

import contract
from service.decoding import (
    describe,
    has_literals,
    loads,
    nested_rows,
    not_named_error,
    numbers_to_rows,
    unknown_features_error,
)
from service.errors import BadRequest, PayloadTooLarge
from service.runtime import ModelRuntime


def parse_predict_request(
    body: bytes, model: ModelRuntime, max_rows: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode ``{"instances": [...]}`` into float32 rows (N, F) for ``model`` (finite, but for the missing cells
    of imputed features) and, for a model with categorical features, its string rows (N, K)."""
    request = loads(body)
    if not isinstance(request, dict):
        raise BadRequest(f"the request must be a JSON object, got {describe(request)}")
    instances = request.get("instances")
    if instances is None:
        if "inputs" in request:
            raise BadRequest("the columnar 'inputs' format is not supported; send {\"instances\": [...]}")
        raise BadRequest("'instances' is missing; send {\"instances\": [[...], ...]}")
    if not isinstance(instances, list):
        raise BadRequest(f"'instances' must be a list, got {describe(instances)}")
    if not instances:
        raise BadRequest("empty batch: 'instances' is empty")
    if len(instances) > max_rows:
        raise PayloadTooLarge(f"{len(instances)} rows exceed the limit of {max_rows} rows per request")
    if model.tabular is not None:  # categorical, boolean or imputed features (service.tabular)
        return model.tabular.v1_rows(instances, model.input_limit)
    n_features = model.n_features
    if isinstance(instances[0], dict):
        flat = _named_rows(instances, model.contract.feature_names)
    else:
        flat = nested_rows(instances, n_features)
    return (
        numbers_to_rows(
            flat, len(instances), n_features, booleans_possible=has_literals(body), limit=model.input_limit
        ),
        None,
    )


def _named_rows(instances: list[Any], names: list[str]) -> list[Any]:
    """Objects keyed by feature name -> the flat list of values in contract order."""
    wanted = set(names)
    flat: list[Any] = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise not_named_error(instance, i)
        if instance.keys() != wanted:
            unknown = [k for k in instance if k not in wanted]
            if unknown:
                raise unknown_features_error(unknown, i)
            missing = [n for n in names if n not in instance]
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise BadRequest(f"missing feature {missing[0]!r}{more} (row {i})")
        flat.extend([instance[n] for n in names])
    return flat


def encode_predict_response(model: ModelRuntime, results: dict[str, np.ndarray]) -> bytes:
    """``{"predictions": [...]}``: label + per-class probabilities, or the regression value per row."""
    if model.is_classification:
        labels = model.contract.class_labels
        keys = [str(c) for c in labels]
        probabilities = results[contract.OUTPUT_PROBABILITIES]  # (N, C) float32
        predictions: Any = [
            {"label": labels[int(k)], "probabilities": dict(zip(keys, row))}
            for k, row in zip(results[contract.OUTPUT_LABEL], probabilities)
        ]
    else:
        values = results[contract.OUTPUT_PREDICTION]  # (N, T) float32
        predictions = values[:, 0] if values.shape[1] == 1 else values
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)


def model_status(model: ModelRuntime, versions: list[int], ready: bool) -> dict[str, Any]:
    """``GET /v1/models/{name}``: KServe V1 ``ready`` plus TF-Serving's ``model_version_status``."""
    state = "AVAILABLE" if ready else "UNAVAILABLE"
    return {
        "name": model.name,
        "ready": ready,
        "model_version_status": [
            {"version": str(v), "state": state, "status": {"error_code": "OK", "error_message": ""}}
            for v in sorted(versions, reverse=True)
        ],
    }
