"""Where a V2 inference request's microseconds go, in process: the whole ASGI call, then each layer and step.

The app is built as ``python -m service`` builds it (committed models, defaults, access log on), its lifespan
run, and driven directly on a uvloop event loop, no socket: what is left of a request once the HTTP server has
parsed it. Each figure is the best of ``--rounds`` rounds of ``--calls`` sequential calls (so a batch-1 request
is batched with nobody: the batcher's own cost shows), in microseconds per call:

- ``wire path`` / ``asgi path``: the connection's protocol fed ``--connections`` whole requests per loop
  iteration (one per connection, as under that many clients) and run until every response is written, with
  the wire path in its lifespan state (:mod:`service.wire`) or without (the ASGI app): CPU per request,
  parsing included, socket excluded;
- ``asgi``: the whole app (request id, metrics, access line, fast path, model, response);
- ``fast path``: from the fast path down (no request-id layer, metrics or access line);
- ``offload.infer``: decode, the batcher (future, loop iteration), onnxruntime, encode;
- ``data plane, sync``: decode, onnxruntime, encode in one call (what a thread runs for a large body);
- ``decode`` / ``session.run`` / ``encode``: the steps;
- ``metrics.observe`` / ``access.record``: per-request accounting;
- ``access.flush/line``: formatting and writing the access log, per line (a flush holds the loop for its lines).

    python -m benchmarks.request_profile [--batch 1] [--calls 3000] [--rounds 5] [--connections 16] [--no-drift] [--no-layers]

The server's own share (uvicorn, httptools, the socket) is what ``python -m benchmarks.serve`` reports for
the bare ASGI no-op, as CPU microseconds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROW = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
       0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]  # fmt: skip


def body_for(batch: int) -> bytes:
    """The peers bench's request: the first digits image, ``batch`` times, V2 JSON."""
    data = [float(v) for v in ROW] * batch
    tensor = {"name": "input", "shape": [batch, 64], "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


class RecordingTransport(asyncio.Transport):
    """A connection's transport that keeps what the protocol writes (no socket)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def protocol_cost(
    app: Any, lifespan_state: dict[str, Any], body: bytes, connections: int, calls: int
) -> float:
    """CPU microseconds per request through the connection's protocol: ``connections`` keep-alive connections
    each given one whole request per loop iteration, until ``calls`` requests are answered."""
    import uvicorn
    from uvicorn.server import ServerState

    from service.connections import BoundedHttpToolsProtocol

    config = uvicorn.Config(app, lifespan="off", log_config=None, proxy_headers=False)
    config.load()
    raw = (
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    server_state = ServerState()
    conns = []
    for _ in range(connections):
        protocol = BoundedHttpToolsProtocol(config, server_state, dict(lifespan_state))
        transport = RecordingTransport()
        protocol.connection_made(transport)
        conns.append((protocol, transport))
    rounds = max(1, calls // connections)
    started = time.process_time()
    for _ in range(rounds):
        for protocol, _ in conns:
            protocol.data_received(raw)
        for _ in range(10_000):  # bounded: a round is answered within a few loop iterations
            if all(t.written.endswith(b"}") for _, t in conns):
                break
            await asyncio.sleep(0)
        for _, transport in conns:
            assert transport.written.startswith(b"HTTP/1.1 200 "), transport.written[:100]
            transport.written.clear()
    cpu = time.process_time() - started
    for protocol, _ in conns:
        protocol.connection_lost(None)
    return cpu / (rounds * connections) * 1e6


async def profile(
    batch: int, calls: int, rounds: int, connections: int = 16, drift: bool = True, layers: bool = True
) -> dict[str, float]:
    from service import dataplane, v2
    from service.app import create_app
    from service.settings import Settings

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    settings = Settings(
        model_repository=ROOT / "models", grpc_port=0, workers=1, drift_enabled=drift, drift_layers=layers
    )
    app = create_app(settings)
    body = body_for(batch)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v2/models/digits/infer", "raw_path": b"/v2/models/digits/infer", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    out: dict[str, float] = {}

    async def best(name: str, call: Callable[[], Awaitable[Any] | Any]) -> None:
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(calls):
                result = call()
                if asyncio.iscoroutine(result):
                    await result
            times.append((time.perf_counter() - started) / calls * 1e6)
        out[name] = min(times)

    async with app.router.lifespan_context(app) as lifespan_state:
        state = app.state.service
        if state.access_log is not None:  # the lines are formatted and written (batched), to nowhere
            state.access_log.stream = open(os.devnull, "w")  # closed with the process
        model = state.models().get("digits", None)
        assert state.offload is not None
        info = dataplane.RequestInfo("bench")
        await app(dict(scope), receive, send)
        assert sent[0]["status"] == 200, sent
        decoded = dataplane.decode_v2(model, body, None, None, state.limits, info)
        results = model.predict(decoded.x)
        request = v2.parse_infer_request(body, None, model, state.limits.max_batch_rows)
        names = model.run_names((), model.watches_layers)

        for name, wire in (("wire path", True), ("asgi path", False)):
            given = lifespan_state if wire else {}
            await protocol_cost(app, given, body, connections, calls // 5)  # warm
            out[name] = min(
                [await protocol_cost(app, given, body, connections, calls) for _ in range(rounds)]
            )
        await best("asgi", lambda: app(dict(scope), receive, send))
        fast = app.front.app  # RequestContext -> FastPath
        await best("fast path", lambda: fast(dict(scope, **{"bnserve.info": info}), receive, send))
        await best(
            "offload.infer",
            lambda: state.offload.infer(
                len(body), False, dataplane.decode_v2, info, model, body, None, None, state.limits, info
            ),
        )
        await best(
            "data plane, sync", lambda: dataplane.infer_v2(model, body, None, None, state.limits, info)
        )
        await best("decode", lambda: v2.parse_infer_request(body, None, model, state.limits.max_batch_rows))
        await best("session.run", lambda: model.session.run(names, {"input": decoded.x}))
        await best("encode", lambda: v2.encode_infer_response(model, request, results))
        await best("metrics.observe", lambda: state.metrics.observe("digits", "v2", 200, 0.001, batch))
        if state.access_log is not None:
            access = state.access_log
            await best(
                "access.record",
                lambda: access.record(
                    "POST", "/v2/models/digits/infer", 200, 0.001, "bench", "v2", "digits", 1, batch,
                    "127.0.0.1",
                ),
            )  # fmt: skip
            entry = (
                time.time(),
                "POST",
                "/v2/models/digits/infer",
                200,
                0.001,
                "bench",
                "v2",
                "digits",
                1,
                1,
                None,
            )

            def flush_lines() -> None:  # what one flush holds the loop for, per line written
                access._pending = [entry] * 500
                access.flush()

            await best("access.flush/line", flush_lines)
            out["access.flush/line"] /= 500
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--connections", type=int, default=16, help="requests per loop iteration (wire/asgi path)"
    )
    ap.add_argument("--no-drift", action="store_true", help="serve without the drift monitors")
    ap.add_argument(
        "--no-layers", action="store_true", help="drift on the inputs only, not the hidden layers"
    )
    args = ap.parse_args()
    import uvloop

    figures = uvloop.run(
        profile(args.batch, args.calls, args.rounds, args.connections, not args.no_drift, not args.no_layers)
    )
    print(
        f"# V2 JSON, batch {args.batch}, in process (uvloop), best of {args.rounds} x {args.calls} calls; "
        f"drift {'off' if args.no_drift else 'inputs only' if args.no_layers else 'on'}; wire/asgi path: "
        f"{args.connections} requests per loop iteration, CPU us per request"
    )
    for name, us in figures.items():
        print(f"{name:>18}: {us:8.1f} us")


if __name__ == "__main__":
    main()
