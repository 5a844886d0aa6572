"""Schemathesis: in process against every route of the test repository, and live against the committed model.

The in-process test drives hypothesis directly (``operation.as_strategy()``) rather than schemathesis' pytest
plugin, which does not run under this pytest version. The live test runs the CLI as the README's release
fuzzing does, with the repository's ``schemathesis.toml`` (and so its hook: :mod:`tests.e2e.schemathesis_hooks`).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from jsonschema import Draft202012Validator
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import ChecksConfig
from schemathesis.generation import GenerationMode

from benchmarks.harness import ROOT, LiveServer
from service.app import create_app
from service.settings import Settings
from tests.service.conftest import Repo, settings_for

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@pytest.fixture(scope="module")
def api_schema(repo: Repo) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(settings_for(repo.root, max_batch_rows=50, access_log=False))
    with TestClient(app):  # runs the lifespan: the models are loaded, the schema carries working examples
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_every_operation_survives_fuzzing(api_schema: schemathesis.BaseSchema, mode: GenerationMode) -> None:
    """All default checks but "schema-valid data must get 2xx": the test repository serves models of different
    feature counts, and one schema cannot say which path takes how many features, so such requests get 400
    (the live test below runs every check against one model). Positive cases follow the schema; negative ones
    break it (wrong types, missing fields) and must get a 4xx.
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


def test_schemathesis_all_checks_against_a_live_server() -> None:
    """The release fuzzing, bounded: ``schemathesis run --checks all`` (every check, positive and negative
    data, all four phases) against ``python -m service`` on the committed model, with the repository's
    ``schemathesis.toml``, finds nothing: the schema accepts exactly what the server accepts."""
    with LiveServer("--grpc-port", "0", "--access-log", "false", "--max-batch-rows", "8") as server:
        server.wait_ready()
        run = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", server.url("/openapi.json"),
                "--checks", "all", "--max-examples", "5", "--seed", "1", "--no-color",
            ],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    assert "Configuration:    " in run.stdout and "schemathesis.toml" in run.stdout, summary
    assert re.search(r"(\d+) generated, \1 passed", run.stdout), summary


def test_the_rejection_statuses_only_add_413() -> None:
    """``schemathesis.toml`` takes no status out of what schemathesis counts as a rejection: its list is the
    default one plus 413 (a body or batch beyond the configured limits)."""
    config = tomllib.loads((ROOT / "schemathesis.toml").read_text())
    statuses = config["checks"]["negative_data_rejection"]["expected-statuses"]
    default = ChecksConfig().negative_data_rejection.expected_statuses
    assert sorted(statuses) == sorted([*default, "413"])


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({}, None),
        (
            {"outputs": [{"name": "label"}, {"name": "label", "parameters": {"binary_data": True}}]},
            "requested twice",
        ),
        ({"data": [1e31] + [0.0] * 63}, "outside the model's input range [-1e+30, 1e+30]"),
        ({"outputs": [{"name": "label", "parameters": {"classification": 3}}]}, "classification extension"),
    ],
    ids=["valid", "output-twice", "beyond-input-range", "classification"],
)
def test_schema_and_server_agree_on_the_committed_model(change: dict[str, Any], error: str | None) -> None:
    """A few requests on either side of the line, judged by a JSON Schema validator on ``/openapi.json`` and by
    the server: valid exactly when the server answers 200, otherwise its 400 names the reason."""
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": change.get("data", [0.0] * 64)}
    body: dict[str, Any] = {"inputs": [tensor]}
    if "outputs" in change:
        body["outputs"] = change["outputs"]
    with TestClient(create_app(Settings(model_repository=ROOT / "models", access_log=False))) as client:
        spec = client.get("/openapi.json").json()
        response = client.post("/v2/models/digits/infer", json=body)
    validator = Draft202012Validator({**spec, "$ref": "#/components/schemas/InferenceRequest"})
    assert validator.is_valid(body) is (error is None)
    if error is None:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400 and error in response.json()["error"]
