"""Limits, authentication, readiness, unexpected errors, metrics, the access log, docs and the offload policy."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.runtime import ModelRuntime
from tests.service.conftest import Repo, settings_for

ROW = [0.25] * 64
KEY = "s3cret-key-value"


def infer_body(rows: int) -> dict:
    return {"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": [ROW] * rows}]}


@pytest.fixture(scope="module")
def limited(repo: Repo) -> Iterator[TestClient]:
    app = create_app(settings_for(repo.root, max_body_bytes=4096, max_batch_rows=3, api_key=KEY))
    with TestClient(app) as c:
        yield c


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_body_limit_with_content_length(limited: TestClient) -> None:
    response = limited.post("/v1/models/digits:predict", content=b"[" + b"0," * 5000 + b"0]", headers=AUTH)
    assert response.status_code == 413
    assert response.json() == {"error": "request body exceeds the limit of 4096 bytes"}


def test_body_limit_with_chunked_body(limited: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 100

    response = limited.post("/v2/models/digits/infer", content=chunks(), headers=AUTH)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413
    assert "exceeds the limit of 4096 bytes" in response.json()["error"]


def test_gzip_bomb_is_stopped_at_the_limit(limited: TestClient) -> None:
    bomb = gzip.compress(b" " * 100_000)
    assert len(bomb) < 4096
    response = limited.post(
        "/v1/models/digits:predict", content=bomb, headers={**AUTH, "Content-Encoding": "gzip"}
    )
    assert response.status_code == 413
    assert "decompressed body exceeds the limit of 4096 bytes" in response.json()["error"]


def test_gzip_body_is_accepted(client: TestClient) -> None:
    body = gzip.compress(json.dumps({"instances": [ROW]}).encode())
    response = client.post("/v1/models/digits:predict", content=body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200


def test_row_limit(limited: TestClient) -> None:
    assert (
        limited.post(
            "/v2/models/iris/infer",
            headers=AUTH,
            json={"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": [1.0] * 12}]},
        ).status_code
        == 200
    )
    response = limited.post("/v1/models/iris:predict", json={"instances": [[1, 2, 3, 4]] * 4}, headers=AUTH)
    assert response.status_code == 413
    assert response.json() == {"error": "4 rows exceed the limit of 3 rows per request"}
    response = limited.post(
        "/v2/models/iris/infer",
        headers=AUTH,
        json={"inputs": [{"name": "input", "shape": [4, 4], "datatype": "FP32", "data": [1.0] * 16}]},
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2"),
        ("GET", "/v2/models/digits"),
        ("GET", "/v2/models/digits/versions/1"),
        ("POST", "/v2/models/digits/infer"),
        ("POST", "/v1/models/digits:predict"),
        ("GET", "/v1/models/digits"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}x"])
def test_guarded_routes_need_the_key(limited: TestClient, method: str, path: str, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    response = limited.request(method, path, headers=headers, json=infer_body(1))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"error": "missing or wrong API key: send 'Authorization: Bearer <key>'"}


def test_with_the_key_and_open_routes(limited: TestClient) -> None:
    assert limited.post("/v2/models/digits/infer", json=infer_body(1), headers=AUTH).status_code == 200
    assert limited.get("/v1/models/digits", headers=AUTH).status_code == 200
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready", "/metrics"):
        assert limited.get(path).status_code == 200, path


def access_lines(client: TestClient) -> io.StringIO:
    """Send the app's access log, as JSON, to a string (read after ``flush``)."""
    access = client.app.state.service.access_log  # type: ignore[attr-defined]
    access.flush()
    access.stream, access.fmt = io.StringIO(), "json"
    return access.stream


def test_the_key_never_reaches_the_logs(limited: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    lines = access_lines(limited)
    with caplog.at_level(logging.DEBUG):
        limited.post("/v2/models/digits/infer", json=infer_body(1), headers=AUTH)
        limited.post("/v2/models/digits/infer", json=infer_body(1), headers={"Authorization": "Bearer guess"})
    limited.app.state.service.access_log.flush()  # type: ignore[attr-defined]
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records) + lines.getvalue()
    assert lines.getvalue().count("bnserve.access") == 2
    assert KEY not in text and "guess" not in text


def test_unexpected_exception_is_a_json_500_with_a_request_id(
    repo: Repo, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(create_app(settings_for(repo.root))) as c:
        model = c.app.state.service.repository.get("iris")  # type: ignore[attr-defined]

        class Exploding:
            def run(self, *args: object, **kwargs: object) -> None:
                raise RuntimeError("secret internals /etc/passwd")

        model.session = Exploding()
        with caplog.at_level(logging.ERROR, logger="bnserve"):
            response = c.post(
                "/v1/models/iris:predict",
                json={"instances": [[1, 2, 3, 4]]},
                headers={"X-Request-ID": "req-42"},
            )
    assert response.status_code == 500
    assert response.json() == {"error": "internal server error (request id req-42)"}
    assert response.headers["x-request-id"] == "req-42"
    assert "secret" not in response.text and "Traceback" not in response.text
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "req-42" in record.getMessage() and record.exc_info is not None


def test_observers_get_the_rows_and_cannot_fail_a_request(client: TestClient) -> None:
    model = client.app.state.service.repository.get("iris")  # type: ignore[attr-defined]
    seen: list[np.ndarray] = []

    def broken(x: np.ndarray) -> None:
        raise ValueError("monitor bug")

    model.observers[:] = [seen.append, broken]
    try:
        response = client.post("/v1/models/iris:predict", json={"instances": [[1, 2, 3, 4], [5, 6, 7, 8]]})
        bad = client.post("/v1/models/iris:predict", json={"instances": [[1, 2, 3]]})
    finally:
        model.observers.clear()
    assert response.status_code == 200 and bad.status_code == 400
    (x,) = seen  # only the successful request
    np.testing.assert_array_equal(x, np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32))


def test_not_ready_when_draining(repo: Repo) -> None:
    with TestClient(create_app(settings_for(repo.root))) as c:
        c.app.state.service.begin_shutdown()  # type: ignore[attr-defined]
        response = c.get("/v2/health/ready")
        assert response.status_code == 503 and response.json() == {"error": "shutting down"}
        assert c.get("/v2/models/digits/ready").status_code == 503
        assert c.get("/v1/models/digits").json()["ready"] is False
        assert c.get("/v2/health/live").status_code == 200
        assert "bnserve_ready 0.0" in c.get("/metrics").text


def test_metrics_and_access_log(client: TestClient) -> None:
    lines = access_lines(client)
    client.post("/v2/models/digits/infer", json=infer_body(5), headers={"X-Request-ID": "m-1"})
    client.post("/v2/models/digits/infer", json={"inputs": []})
    client.app.state.service.access_log.flush()  # type: ignore[attr-defined]
    access = [json.loads(line) for line in lines.getvalue().splitlines()]
    text = client.get("/metrics").text
    assert 'bnserve_requests_total{model="digits",protocol="v2",status="200"}' in text
    assert 'bnserve_requests_total{model="digits",protocol="v2",status="400"}' in text
    assert 'bnserve_request_rows_bucket{le="5.0",model="digits",protocol="v2"}' in text
    assert 'bnserve_request_duration_seconds_count{model="digits",protocol="v2"}' in text
    assert (
        'bnserve_model_info{features="64",model="digits",outputs="10",task="classification",version="2"} 1.0'
        in text
    )
    assert len(access) == 2
    first = access[0]
    assert (
        first["logger"] == "bnserve.access"
        and first["request_id"] == "m-1"
        and first["status"] == 200
        and first["rows"] == 5
    )
    assert first["model"] == "digits" and first["model_version"] == 2


def test_docs_and_examples(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    examples = infer["requestBody"]["content"]["application/json"]["examples"]
    name = next(p for p in infer["parameters"] if p["name"] == "name")["example"]
    for example in examples.values():  # the documented examples work as they are
        assert client.post(f"/v2/models/{name}/infer", json=example["value"]).status_code == 200
    predict = spec["paths"]["/v1/models/{name}:predict"]["post"]
    for example in predict["requestBody"]["content"]["application/json"]["examples"].values():
        assert client.post(f"/v1/models/{name}:predict", json=example["value"]).status_code == 200


def test_observer_hook_of_create_app(repo: Repo) -> None:
    fed: list[tuple[str, int, tuple[int, ...]]] = []

    def observers_for(model: ModelRuntime) -> list:
        return [lambda x: fed.append((model.name, model.version, x.shape))]

    with TestClient(create_app(settings_for(repo.root), observers_for=observers_for)) as c:
        assert c.post("/v2/models/digits/versions/1/infer", json=infer_body(2)).status_code == 200
    assert fed == [("digits", 1, (2, 64))]


@pytest.mark.parametrize(
    ("inline_max_bytes", "on_loop"), [(0, False), (32 * 1024, True)], ids=["default", "inline"]
)
def test_onnxruntime_runs_off_the_event_loop_unless_asked(
    repo: Repo, inline_max_bytes: int, on_loop: bool
) -> None:
    """By default every prediction runs in the threadpool; BNSERVE_INLINE_MAX_BYTES opts small bodies into the loop."""
    seen: list[bool] = []

    def observers_for(model: ModelRuntime) -> list:
        real = model.session.run

        def run(*args: Any, **kwargs: Any) -> Any:  # whichever path calls onnxruntime (batched or not)
            try:
                asyncio.get_running_loop()
                seen.append(True)
            except RuntimeError:
                seen.append(False)
            return real(*args, **kwargs)

        model.session.run = run
        return []

    settings = settings_for(repo.root, inline_max_bytes=inline_max_bytes)
    with TestClient(create_app(settings, observers_for=observers_for)) as c:
        assert c.post("/v2/models/digits/infer", json=infer_body(2)).status_code == 200
        assert c.post("/v1/models/digits:predict", json={"instances": [ROW]}).status_code == 200
    assert seen == [on_loop, on_loop]


def test_with_a_key_the_open_schema_names_no_model_detail(limited: TestClient) -> None:
    """/openapi.json and /docs stay open (a browser cannot send the key) but tell nothing of the models."""
    assert limited.get("/docs").status_code == 200
    text = limited.get("/openapi.json").text
    for model in limited.app.state.service.repository:  # type: ignore[attr-defined]
        assert f'"{model.contract.feature_names[1]}"' not in text
        assert str(round(float(model.contract.input_stats.mean[1]), 4)) not in text
