"""Schemathesis against the in-process ASGI app: every route of the OpenAPI schema, every declared status.

Driven through hypothesis directly (``operation.as_strategy()``) rather than schemathesis' pytest plugin,
which does not run under this pytest version.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation import GenerationMode

from service.app import create_app
from tests.service.conftest import Repo, settings_for


@pytest.fixture(scope="module")
def api_schema(repo: Repo) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(settings_for(repo.root, max_batch_rows=50, access_log=False))
    with TestClient(app):  # runs the lifespan: the models are loaded, the schema carries working examples
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_every_operation_survives_fuzzing(api_schema: schemathesis.BaseSchema, mode: GenerationMode) -> None:
    """All default checks but "schema-valid data must get 2xx": a JSON schema cannot say that ``data`` must hold
    ``shape[0] * shape[1]`` finite float32 numbers for this model's feature count, so such requests get 400.
    Positive cases follow the schema; negative ones break it (wrong types, missing fields) and must get a 4xx.
    """
    operations = [result.ok() for result in api_schema.get_all_operations()]
    # the drift sample (GET .drift/sample, unversioned and versioned) and the repository API (3) included
    assert len(operations) == 22
    if mode is GenerationMode.NEGATIVE:
        # Only request bodies can break the schema: a path parameter is any string, already fuzzed above.
        operations = [op for op in operations if op.label.endswith(("/infer", ":predict"))]
        assert len(operations) == 4
    failures: dict[str, str] = {}
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        try:
            fuzz()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures[operation.label] = str(exc)[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
