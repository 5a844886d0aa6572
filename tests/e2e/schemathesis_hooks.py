"""The one rule of the V2 request a JSON schema cannot state, taught to schemathesis' generator.

The OpenAPI schema bounds ``shape`` (``[1..BNSERVE_MAX_BATCH_ROWS, features]``) and ``data`` (rows of
``features`` numbers, or as many flat) but cannot say that the two agree: nested data has ``shape[0]`` rows,
flat data ``shape[0] * features`` numbers (JSON Schema compares a value to constants, never to another
value). The server refuses a disagreement with 400, as the schema's description of ``RequestInput`` says.
This hook gives every schema-valid (positive) V2 request generated a ``shape[0]`` that agrees with its
``data`` (flat data cut to whole rows first), so that "schema-valid requests are accepted" tests that rule
too; negative requests are left as they were drawn. ``schemathesis.toml`` loads it for the CLI; the fuzz
tests import it.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis import Case, HookContext


def consistent(tensor: Any) -> Any:
    """A V2 input tensor whose ``shape[0]`` agrees with its ``data``; anything else unchanged."""
    if not isinstance(tensor, dict):
        return tensor
    shape, data = tensor.get("shape"), tensor.get("data")
    if not (isinstance(shape, list) and len(shape) == 2 and isinstance(data, list) and data):
        return tensor
    if all(isinstance(row, list) for row in data):  # nested: one list per row
        return {**tensor, "shape": [len(data), shape[1]]}
    f = shape[1]
    if not isinstance(f, int) or f < 1:
        return tensor
    rows = len(data) // f
    return {**tensor, "shape": [rows, f], "data": data[: rows * f]}


@schemathesis.hook
def map_case(context: HookContext, case: Case) -> Case:
    """Positive V2 inference requests: ``shape[0]`` from ``data``."""
    meta = case.meta
    body = case.body
    if meta is None or not meta.generation.mode.is_positive or not isinstance(body, dict):
        return case
    inputs = body.get("inputs")
    if case.operation.path.endswith("/infer") and isinstance(inputs, list):
        case.body = {**body, "inputs": [consistent(tensor) for tensor in inputs]}
    return case
