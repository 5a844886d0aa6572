"""Where a V2 inference request's microseconds go, in process: the whole ASGI call, then each layer and step.

The app is built as ``python -m service`` builds it (committed models, defaults, access log on), its lifespan
run, and driven directly on a uvloop event loop, no socket: what is left of a request once the HTTP server has
parsed it. Each figure is the best of ``--rounds`` rounds of ``--calls`` sequential calls (so a batch-1 request
is batched with nobody: the batcher's own cost shows), in microseconds per call:

- ``asgi``: the whole app (request id, metrics, access line, fast path, model, response);
- ``fast path``: from the fast path down (no request-id layer, metrics or access line);
- ``offload.infer``: decode, the batcher (future, loop iteration), onnxruntime, encode;
- ``data plane, sync``: decode, onnxruntime, encode in one call (what a thread runs for a large body);
- ``decode`` / ``session.run`` / ``encode``: the steps;
- ``metrics.observe`` / ``access.record``: per-request accounting.

    python -m benchmarks.request_profile [--batch 1] [--calls 3000] [--rounds 5]

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


async def profile(batch: int, calls: int, rounds: int) -> dict[str, float]:
    from service import dataplane, v2
    from service.app import create_app
    from service.settings import Settings

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    settings = Settings(model_repository=ROOT / "models", grpc_port=0, workers=1)
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

    async with app.router.lifespan_context(app):
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
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import uvloop

    figures = uvloop.run(profile(args.batch, args.calls, args.rounds))
    print(f"# V2 JSON, batch {args.batch}, in process (uvloop), best of {args.rounds} x {args.calls} calls")
    for name, us in figures.items():
        print(f"{name:>18}: {us:8.1f} us")


if __name__ == "__main__":
    main()
