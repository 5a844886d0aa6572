"""The wire path (``service.wire``) answers exactly as the ASGI app, without starting a task.

The connection's protocol (:class:`BoundedHttpToolsProtocol`) is driven in process: raw request bytes in through
``data_received``, the bytes it writes caught by a transport that records them. Each request is sent to a
protocol whose lifespan state holds the wire path and to one whose state does not (the ASGI app then serves
it: ``RequestContext``, the fast path, FastAPI); the two responses must be the same bytes, and the wire path
must have started no ASGI task. Metrics and access lines are compared the same way.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import uvicorn
from uvicorn.server import ServerState

from benchmarks.request_profile import RecordingTransport
from service.app import create_app
from service.connections import WIRE_STATE_KEY, BoundedHttpToolsProtocol
from service.wire import WirePath
from tests.service.conftest import Repo, settings_for
from tests.service.test_v2 import binary_body, infer_json

X = np.random.default_rng(5).normal(size=(3, 64)).astype(np.float32)
V2 = json.dumps(infer_json(X)).encode()
BINARY, BINARY_HEADERS = binary_body(X, request={"parameters": {"binary_data_output": True}})
V1 = json.dumps({"instances": X.tolist()}).encode()
KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}

#: (path, body, headers, whether the wire path takes it)
CASES: list[tuple[str, bytes, dict[str, str], bool]] = [
    ("/v2/models/digits/infer", V2, AUTH, True),
    ("/v2/models/digits/versions/1/infer", V2, AUTH, True),
    ("/v2/models/digits/infer", BINARY, {**AUTH, **BINARY_HEADERS}, True),
    ("/v1/models/digits:predict", V1, AUTH, True),
    ("/v1/models/digits/versions/2:predict", V1, AUTH, True),
    ("/v1/models/iris:predict", b'{"instances": [{"sepal": 1}]}', AUTH, True),
    ("/v2/models/nope/infer", V2, AUTH, True),  # 404
    ("/v2/models/digits/versions/7/infer", V2, AUTH, True),  # 404
    ("/v2/models/digits/infer", b'{"inputs": [{"name": "input", "shape": [1, 63]', AUTH, True),  # 400
    ("/v2/models/digits/infer", json.dumps(infer_json(X[:, :63])).encode(), AUTH, True),  # 400
    ("/v2/models/digits/infer", b"", AUTH, True),  # 400
    (
        "/v2/models/digits/infer",
        json.dumps(infer_json(np.full((1, 64), 1e38, np.float32))).encode(),
        AUTH,
        True,
    ),
    ("/v2/models/digits/infer", V2, {}, False),  # no key: FastAPI's 401
    ("/v2/models/digits/infer", V2, {"Authorization": "Bearer wrong"}, False),
    ("/v2/models/digits/infer", V2, {**AUTH, "Content-Encoding": "identity"}, False),
    (
        "/v2/models/digits/infer",
        json.dumps(infer_json(np.zeros((250, 64), np.float32))).encode(),
        AUTH,
        False,
    ),  # > 64 KiB
    ("/v2/models/digits/infer", V2, {**AUTH, "X-Request-ID": "given-1"}, True),
    ("/v2/models/digits/infer", V2, {**AUTH, "X-Request-ID": "not a valid id"}, True),
    ("/v2/models/digits", b"", AUTH, False),  # POST to a GET route: 405 from FastAPI
]


class Harness:
    """One app (lifespan run) behind fresh protocols, with or without the wire path in their lifespan state."""

    def __init__(self, app: Any, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.config = uvicorn.Config(app, lifespan="off", log_config=None, proxy_headers=False)
        self.config.load()

    async def exchange(self, raw: bytes, wire: bool, split: int | None = None) -> tuple[bytes, int]:
        """The bytes written back for ``raw`` (fed whole, or in two reads at ``split``), and how many ASGI
        tasks the protocol started."""
        server_state = ServerState()
        protocol = BoundedHttpToolsProtocol(self.config, server_state, dict(self.state) if wire else {})
        transport = RecordingTransport()
        protocol.connection_made(transport)
        tasks = 0
        parts = [raw] if split is None else [raw[:split], raw[split:]]
        for part in parts:
            protocol.data_received(part)
            tasks += sum(
                isinstance(t, asyncio.Task) for t in server_state.tasks
            )  # a body to come is a future
            await asyncio.sleep(0)
        for _ in range(500):  # bounded: the answer comes within a few loop iterations
            if transport.written.count(b"HTTP/1.1 ") >= raw.count(b" HTTP/1.1\r\n") and _complete(
                transport.written
            ):
                break
            await asyncio.sleep(0.002)
        protocol.connection_lost(None)
        return bytes(transport.written), tasks


def _complete(written: bytearray) -> bool:
    head, sep, body = bytes(written).rpartition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def raw_request(path: str, body: bytes, headers: dict[str, str], close: bool = False) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: t",
        f"Content-Length: {len(body)}",
        "Content-Type: application/json",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def harness(repo: Repo, loop: asyncio.AbstractEventLoop) -> Iterator[Harness]:
    app = create_app(settings_for(repo.root, api_key=KEY))
    context = app.router.lifespan_context(app)
    state = loop.run_until_complete(context.__aenter__())
    assert isinstance(state[WIRE_STATE_KEY], WirePath)
    try:
        yield Harness(app, state)
    finally:
        loop.run_until_complete(context.__aexit__(None, None, None))


def run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    return loop.run_until_complete(coro)


@pytest.mark.parametrize(("path", "body", "headers", "takes"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_the_wire_path_answers_the_bytes_of_the_asgi_app(
    harness: Harness,
    loop: asyncio.AbstractEventLoop,
    path: str,
    body: bytes,
    headers: dict[str, str],
    takes: bool,
) -> None:
    raw = raw_request(path, body, headers)
    wire, wire_tasks = run(loop, harness.exchange(raw, wire=True))
    asgi, asgi_tasks = run(loop, harness.exchange(raw, wire=False))
    assert asgi_tasks == 1
    assert wire_tasks == (0 if takes else 1)
    assert wire.startswith(b"HTTP/1.1 "), wire[:200]
    if headers.get("X-Request-ID") == "given-1":
        assert b"\r\nx-request-id: given-1\r\n" in wire
    else:  # fresh ids differ: compare all but the id's value
        wire, asgi = _without_id(wire), _without_id(asgi)
    assert wire == asgi


def _without_id(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"x-request-id: ")]
    assert len(lines) == len(head.split(b"\r\n")) - 1, "exactly one x-request-id"
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_a_body_in_two_reads_and_connection_close(harness: Harness, loop: asyncio.AbstractEventLoop) -> None:
    raw = raw_request("/v2/models/digits/infer", V2, AUTH, close=True)
    wire, tasks = run(loop, harness.exchange(raw, wire=True, split=len(raw) - 100))
    asgi, _ = run(loop, harness.exchange(raw, wire=False, split=len(raw) - 100))
    assert tasks == 0
    assert b"\r\nconnection: close\r\n" in wire
    assert _without_id(wire) == _without_id(asgi)


def test_pipelined_requests_are_answered_in_order(harness: Harness, loop: asyncio.AbstractEventLoop) -> None:
    first = raw_request("/v2/models/digits/infer", V2, {**AUTH, "X-Request-ID": "first"})
    second = raw_request("/v2/models/nope/infer", V2, {**AUTH, "X-Request-ID": "second"})
    third = raw_request("/v1/models/digits:predict", V1, {**AUTH, "X-Request-ID": "third"})
    wire, _ = run(loop, harness.exchange(first + second + third, wire=True))
    asgi, _ = run(loop, harness.exchange(first + second + third, wire=False))
    answers = wire.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"404", b"200"]
    assert [a.split(b"x-request-id: ")[1][:6] for a in answers] == [b"first\r", b"second", b"third\r"]
    assert wire == asgi


def test_metrics_and_access_lines_are_those_of_the_asgi_path(
    harness: Harness, loop: asyncio.AbstractEventLoop
) -> None:
    state = harness.app.state.service
    lines: list[str] = []
    access = state.access_log
    assert access is not None
    original = access.record
    access.record = functools.partial(_record, lines, original)  # type: ignore[method-assign]
    try:
        for wire in (True, False):
            before = _counts(state)
            for path, body, headers, _ in CASES[:8]:
                run(
                    loop,
                    harness.exchange(raw_request(path, body, {**headers, "X-Request-ID": "r1"}), wire=wire),
                )
            after = _counts(state)
            lines.append(
                repr({k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)})
            )
    finally:
        access.record = original  # type: ignore[method-assign]
    half = len(lines) // 2
    wire_lines, asgi_lines = lines[:half], lines[half:]
    assert len(wire_lines) == 9 and wire_lines == asgi_lines  # 8 access records and the metric deltas
    assert "'digits', 'v2', '200'" in wire_lines[-1] and "'nope', 'v2', '404'" not in wire_lines[-1]


def _record(lines: list[str], original: Any, *args: Any) -> None:
    method, path, status, _seconds, *rest = args
    lines.append(repr((method, path, status, *rest)))
    original(*args)


def _counts(state: Any) -> dict[tuple[str, ...], float]:
    out = {}
    for metric in state.metrics.registry.collect():
        if metric.name == "bnserve_requests":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    out[(labels["model"], labels["protocol"], labels["status"])] = sample.value
    return out


def test_a_body_still_coming_is_a_server_task_and_gets_503_when_shutdown_cancels_it(
    harness: Harness, loop: asyncio.AbstractEventLoop
) -> None:
    """As an ASGI request's task: counted in the server's tasks while its body is to come (the graceful shutdown
    waits for it), gone from them once it is complete, and answered a JSON 503 when the shutdown cancels it."""

    async def scenario() -> tuple[bytes, bool, int, int, int]:
        server_state = ServerState()
        protocol = BoundedHttpToolsProtocol(harness.config, server_state, dict(harness.state))
        transport = RecordingTransport()
        protocol.connection_made(transport)
        raw = raw_request("/v2/models/digits/infer", V2, AUTH)
        protocol.data_received(raw[:-10])  # the body's last bytes are still to come
        waiting = len(server_state.tasks)
        protocol.data_received(raw[-10:])  # complete: answered, no longer a task
        for _ in range(500):
            if transport.written:
                break
            await asyncio.sleep(0.002)
        completed = len(server_state.tasks)
        answered = transport.written.startswith(b"HTTP/1.1 200 ")
        transport.written.clear()
        protocol.data_received(raw[:-10])
        for task in list(server_state.tasks):  # what uvicorn does once the graceful timeout is over
            task.cancel()
        for _ in range(500):
            if transport.closed:
                break
            await asyncio.sleep(0.002)
        return bytes(transport.written), answered, waiting, completed, len(server_state.tasks)

    written, answered, waiting, completed, left = run(loop, scenario())
    assert answered and waiting == 1 and completed == 0 and left == 0
    head, _, body = written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nconnection: close" in head
    assert json.loads(body) == {"error": "the server is shutting down"}


def test_the_remembered_paths_stay_bounded_and_right(harness: Harness) -> None:
    wire = harness.state[WIRE_STATE_KEY]
    headers = [(b"content-length", b"2"), (b"authorization", f"Bearer {KEY}".encode())]
    for i in range(1500):  # any name of a hot route's shape is remembered, real model or not
        name = f"m{i % 1200}"
        call = wire.accept(b"POST", f"/v2/models/{name}/versions/{i % 3}/infer".encode(), headers)
        assert call is not None and call.path == f"/v2/models/{name}/versions/{i % 3}/infer"
        assert call.params == {"name": name, "version": str(i % 3)}, call.params
        assert len(wire._paths) <= 1024
    assert wire.accept(b"POST", b"/v2/models/m1/infer?x=1", headers) is None  # a query: the ASGI app's
    assert wire.accept(b"GET", b"/v2/models/m1/infer", headers) is None
