"""The fast path answers the inference routes exactly as the FastAPI route does.

Each request is sent twice: with a Content-Length (served by the fast path) and chunked, without one (which
the fast path leaves to FastAPI's routing, dependencies and exception handlers). Status and body must agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.fastpath import FastPath
from tests.service.conftest import Repo, settings_for
from tests.service.test_v2 import binary_body, infer_json

X = np.random.default_rng(3).normal(size=(3, 64)).astype(np.float32)
V2 = json.dumps(infer_json(X)).encode()
BINARY, BINARY_HEADERS = binary_body(X, request={"parameters": {"binary_data_output": True}})

CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("/v2/models/digits/infer", V2, {}),
    ("/v2/models/digits/versions/1/infer", V2, {}),
    ("/v2/models/digits/infer", BINARY, BINARY_HEADERS),
    ("/v1/models/digits:predict", json.dumps({"instances": X.tolist()}).encode(), {}),
    ("/v1/models/digits/versions/2:predict", json.dumps({"instances": X.tolist()}).encode(), {}),
    ("/v1/models/iris:predict", json.dumps({"instances": [{"sepal": 1}]}).encode(), {}),
    ("/v2/models/nope/infer", V2, {}),
    ("/v2/models/digits/versions/7/infer", V2, {}),
    ("/v2/models/digits/infer", b'{"inputs": [{"name": "input", "shape": [1, 63]', {}),
    ("/v2/models/digits/infer", json.dumps(infer_json(X[:, :63])).encode(), {}),
]


class CountingApp:
    """Wraps the FastAPI stack behind the fast path and counts the requests that reach it."""

    def __init__(self, app: Any) -> None:
        self.app, self.calls = app, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await self.app(scope, receive, send)


def stack(client: TestClient) -> CountingApp:
    context = client.app.front  # type: ignore[attr-defined]
    for _ in range(10):  # down the service's own layers to the fast path
        if isinstance(context, FastPath):
            break
        context = context.app
    assert isinstance(context, FastPath)
    if not isinstance(context.app, CountingApp):
        context.app = CountingApp(context.app)
    return context.app


@pytest.fixture(scope="module")
def keyed(repo: Repo) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(repo.root, api_key="s3cret"))) as c:
        yield c


def both_ways(client: TestClient, path: str, body: bytes, headers: dict[str, str]) -> tuple[Any, Any]:
    inner = stack(client)
    before = inner.calls
    fast = client.post(path, content=body, headers=headers)
    assert inner.calls == before, "a request with a Content-Length went through the FastAPI stack"
    slow = client.post(path, content=iter([body]), headers=headers)  # chunked: no Content-Length
    assert inner.calls == before + 1
    return fast, slow


@pytest.mark.parametrize(("path", "body", "headers"), CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_fast_path_answers_like_the_fastapi_route(
    client: TestClient, path: str, body: bytes, headers: dict[str, str]
) -> None:
    fast, slow = both_ways(client, path, body, headers)
    assert fast.status_code == slow.status_code
    assert fast.content == slow.content
    for name in ("content-type", "inference-header-content-length", "content-length"):
        assert fast.headers.get(name) == slow.headers.get(name)


def test_a_wrong_or_missing_key_is_left_to_the_fastapi_route(keyed: TestClient) -> None:
    inner = stack(keyed)
    for headers in ({}, {"Authorization": "Bearer nope"}):
        before = inner.calls
        r = keyed.post("/v2/models/digits/infer", content=V2, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert inner.calls == before + 1
    before = inner.calls
    r = keyed.post("/v2/models/digits/infer", content=V2, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and inner.calls == before
