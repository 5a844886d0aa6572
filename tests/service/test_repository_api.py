"""The repository API over HTTP (Triton's paths and bodies), and what follows a swap: metadata, drift, metrics, /docs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.conftest import DIGIT_FEATURES, TinyModel, settings_for, tiny_model, write_model

KEY = "repo-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
X = np.random.default_rng(3).normal(size=(2, 64)).astype(np.float32)


def put(root: Path, version: int, data: bytes | None = None) -> TinyModel:
    """Version ``version`` of model ``m`` (its closed form returned), under the default policy (latest 1)."""
    tiny, proto = tiny_model("m", version, "classification", DIGIT_FEATURES, list(range(10)), 20 + version)
    write_model(root, "m", version, data if data is not None else proto)
    (root / "m" / "config.pbtxt").write_text('name: "m"\n')
    return tiny


def infer(client: TestClient, tiny: TinyModel) -> str:
    """Infer without a version; the answer must be ``tiny``'s closed form. Returns the model_version."""
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": X.ravel().tolist()}]}
    response = client.post("/v2/models/m/infer", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    answer = response.json()
    probabilities = np.asarray(answer["outputs"][0]["data"]).reshape(2, 10)
    np.testing.assert_allclose(probabilities, tiny.expected(X)["probabilities"], atol=1e-6)
    return answer["model_version"]


def examples(client: TestClient) -> dict[str, str]:
    """The path parameters' examples in /openapi.json (shown without a key only)."""
    spec = client.get("/openapi.json").json()
    params = spec["paths"]["/v2/models/{name}/versions/{version}/infer"]["post"]["parameters"]
    return {p["name"]: p["example"] for p in params}


def metric(client: TestClient, pattern: str) -> list[str]:
    return re.findall(pattern, client.get("/metrics").text, re.M)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "models"


def app_client(root: Path, mode: str, **overrides: object) -> TestClient:
    settings = settings_for(root, model_control_mode=mode, repository_file_events=False, **overrides)
    return TestClient(create_app(settings))


@pytest.fixture
def explicit(root: Path) -> Iterator[TestClient]:
    put(root, 1)
    with app_client(root, "explicit", api_key=KEY) as client:
        yield client


def test_routes_are_guarded_by_the_key(explicit: TestClient) -> None:
    for path in ("/v2/repository/index", "/v2/repository/models/m/load", "/v2/repository/models/m/unload"):
        response = explicit.post(path)
        assert response.status_code == 401 and "API key" in response.json()["error"]
    assert explicit.post("/v2/repository/index", headers=AUTH).json() == [
        {"name": "m", "version": "1", "state": "READY", "reason": ""}
    ]


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        (b'{"ready": "yes"}', "'ready' must be true or false"),
        (b"[1]", "must be a JSON object"),
        (b"{", "not valid JSON"),
    ],
)
def test_bad_index_bodies(explicit: TestClient, body: bytes, phrase: str) -> None:
    response = explicit.post("/v2/repository/index", content=body, headers=AUTH)
    assert response.status_code == 400 and phrase in response.json()["error"]


def test_a_load_swaps_and_everything_follows(root: Path, explicit: TestClient) -> None:
    v1 = put(root, 1)
    assert infer(explicit, v1) == "1"
    v2 = put(root, 2)
    assert explicit.post("/v2/repository/models/m/load", json={}, headers=AUTH).status_code == 200
    assert infer(explicit, v2) == "2"
    assert explicit.get("/v2/models/m", headers=AUTH).json()["versions"] == ["2"]
    assert explicit.get("/v2/models/m/versions/1", headers=AUTH).status_code == 404
    # drift: version 2 has a monitor fed by the request above; version 1's is gone
    drift = explicit.get("/v2/models/m/drift", headers=AUTH).json()
    assert drift["version"] == "2" and drift["rows_seen"] == 2
    assert explicit.get("/v2/models/m/versions/1/drift", headers=AUTH).status_code == 404
    # metrics: the served version only
    assert metric(explicit, r'^bnserve_model_info\{.*model="m",.*version="(\d)"\} 1\.0$') == ["2"]
    assert metric(explicit, r'^bnserve_drift_score\{model="m",version="(\d)"') == ["2"]
    assert explicit.post("/v2/repository/index", json={"ready": True}, headers=AUTH).json() == [
        {"name": "m", "version": "2", "state": "READY", "reason": ""}
    ]


def test_a_failed_load_names_the_version_and_keeps_the_old_one(root: Path, explicit: TestClient) -> None:
    v1 = put(root, 1)
    put(root, 2, b"\x00 not a model")
    response = explicit.post("/v2/repository/models/m/load", headers=AUTH)
    assert response.status_code == 400
    assert re.fullmatch(
        r"failed to load 'm': version 2: not a loadable ONNX model \(.*\); version 1 stays",
        response.json()["error"],
    )
    assert infer(explicit, v1) == "1"
    assert metric(explicit, r'^bnserve_model_load_failures_total\{model="m"\} (\S+)$') == ["1.0"]
    entry = explicit.post("/v2/repository/index", headers=AUTH).json()[1]
    assert entry["version"] == "2" and entry["state"] == "UNAVAILABLE"
    assert entry["reason"].startswith("failed to load: not a loadable ONNX model")


def test_load_refuses_overrides_and_unknown_models(explicit: TestClient) -> None:
    response = explicit.post(
        "/v2/repository/models/m/load", json={"parameters": {"config": "{}"}}, headers=AUTH
    )
    assert response.status_code == 400 and "not supported" in response.json()["error"]
    response = explicit.post("/v2/repository/models/nope/load", headers=AUTH)
    assert response.status_code == 404 and "no model 'nope'" in response.json()["error"]


def test_unload(explicit: TestClient) -> None:
    response = explicit.post(
        "/v2/repository/models/m/unload", json={"parameters": {"unload_dependents": False}}, headers=AUTH
    )
    assert response.status_code == 200
    assert explicit.get("/v2/models/m/ready").status_code == 404
    assert explicit.post("/v2/models/m/infer", json={}, headers=AUTH).status_code == 404
    assert explicit.post("/v2/repository/index", headers=AUTH).json() == [
        {"name": "m", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
    ]
    assert metric(explicit, r'^bnserve_model_info\{.*model="m".*$') == []


def test_none_mode_turns_the_api_off(root: Path) -> None:
    put(root, 1)
    with app_client(root, "none") as client:
        for path in (
            "/v2/repository/index",
            "/v2/repository/models/m/load",
            "/v2/repository/models/m/unload",
        ):
            response = client.post(path)
            assert response.status_code == 403
            assert "off in model control mode 'none'" in response.json()["error"]


def test_poll_mode_loads_now_and_refuses_unload(root: Path) -> None:
    put(root, 1)
    with app_client(root, "poll", repository_poll_seconds=3600) as client:
        v2 = put(root, 2)
        assert examples(client) == {"name": "m", "version": "1"}
        assert client.post("/v2/repository/models/m/load").status_code == 200  # re-read now, not in an hour
        assert infer(client, v2) == "2"
        # /docs: the examples name the served version
        assert examples(client) == {"name": "m", "version": "2"}
        response = client.post("/v2/repository/models/m/unload")
        assert response.status_code == 409 and "not allowed in poll mode" in response.json()["error"]
