"""HTTP serving cost: the real service against a bare ASGI app that does nothing, in the same run.

Both servers run under the same uvicorn options (``service.server.uvicorn_options``: event loop, the bounded
HTTP protocol, no uvicorn access log) and the same number of worker processes (``--workers``, 1 by default),
on 127.0.0.1. The no-op app is the ceiling of any Python server on this stack: no framework, it reads the whole
request body and returns a fixed small JSON body. Every cell (protocol x batch x concurrency)
is driven for ``--seconds`` by the same load generator, alternating between the two apps, and reports
requests/s, rows/s, latency p50/p90/p99 and the service's ratio to the no-op app.

The load generator is ``wrk`` when installed (POST bodies through a Lua script), else a Python keep-alive
client (asyncio, uvloop when installed) in its own process; the output says which. On a machine with two or
more cores the servers are pinned to CPU 0 and the load generator to CPU 1 (``--no-pin`` to turn off).

    python -m benchmarks.serve                      # full grid, 5 s per cell
    python -m benchmarks.serve --quick              # 1 s per cell, batch 1 and 64, concurrency 1 and 8
    python -m benchmarks.serve --tool python --protocols v2-json --batches 1 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import MODELS, LiveServer, free_port

PROTOCOLS = ("v1-json", "v2-json", "v2-binary")
N_FEATURES = 64  # the digits model of models/ (8x8 images)
NOOP_RESPONSE = b'{"model_name":"noop","model_version":"1","outputs":[]}'


# ---- the no-op app ------------------------------------------------------------------------------------------
async def noop_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ceiling: a bare ASGI app (no framework) that reads the whole body and returns a fixed response."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    body = NOOP_RESPONSE if scope["method"] == "POST" else b""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_noop(port: int, workers: int) -> None:
    """Run :func:`noop_app` under the service's own uvicorn options (protocol, limits, loop), ``workers`` of it."""
    import uvicorn

    from service.server import bind_socket, uvicorn_options
    from service.settings import Settings

    settings = Settings(
        model_repository=MODELS,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        workers=workers,
    )
    config = uvicorn.Config("benchmarks.serve:noop_app", workers=workers, **uvicorn_options(settings))
    if workers == 1:
        uvicorn.Server(config).run()
        return
    from uvicorn.supervisors import Multiprocess

    with bind_socket("127.0.0.1", port) as sock:
        Multiprocess(config, sockets=[sock]).run()


# ---- requests -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Payload:
    path: str
    headers: dict[str, str]
    body: bytes


def payload(protocol: str, batch: int, seed: int = 0) -> Payload:
    """The request of one cell: ``batch`` digits-like rows (integers 0..16 as float32)."""
    import numpy as np

    x = np.random.default_rng(seed).integers(0, 17, size=(batch, N_FEATURES)).astype(np.float32)
    if protocol == "v1-json":
        body = json.dumps({"instances": x.tolist()}).encode()
        return Payload("/v1/models/digits:predict", {"Content-Type": "application/json"}, body)
    tensor: dict[str, Any] = {"name": "input", "shape": [batch, N_FEATURES], "datatype": "FP32"}
    if protocol == "v2-json":
        tensor["data"] = x.ravel().tolist()
        body = json.dumps({"inputs": [tensor]}).encode()
        return Payload("/v2/models/digits/infer", {"Content-Type": "application/json"}, body)
    if protocol == "v2-binary":  # tritonclient's shape: binary inputs, binary outputs
        raw = x.astype("<f4").tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)),
        }
        return Payload("/v2/models/digits/infer", headers, head + raw)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


# ---- servers ------------------------------------------------------------------------------------------------
def check(server: LiveServer, p: Payload) -> None:
    """One request through urllib: the cell must answer 200 before it is measured."""
    request = urllib.request.Request(server.url(p.path), data=p.body, headers=p.headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        if r.status != 200:
            raise RuntimeError(f"{server.name} answered {r.status} to {p.path}")
        r.read()


def _pinned(cpus: set[int] | None) -> Any:
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


@contextlib.contextmanager
def servers(
    workers: int, cpus: set[int] | None, service_args: Sequence[str]
) -> Iterator[dict[str, LiveServer]]:
    """The service and the no-op app, both ready; both stopped on the way out, whatever happens."""
    started: dict[str, LiveServer] = {}
    try:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "benchmarks.serve",
            "--serve-noop",
            str(port),
            "--workers",
            str(workers),
        ]
        # Several workers get every core; the load generator then shares one with them.
        started["noop"] = LiveServer(
            command=command, port=port, cpus=cpus if workers == 1 else None, name="noop"
        )
        args = ["--model-repository", str(MODELS), "--log-level", "warning", "--workers", str(workers)]
        started["service"] = LiveServer(*args, *service_args, cpus=cpus if workers == 1 else None)
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


# ---- load generators ----------------------------------------------------------------------------------------
@dataclass
class Measured:
    requests: int
    seconds: float
    errors: int  # non-200 answers and socket errors
    p50_ms: float
    p90_ms: float
    p99_ms: float


_WRK_SCRIPT = """
local f = assert(io.open({body_path}, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
{headers}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def wrk_script(directory: Path, p: Payload) -> Path:
    """A wrk Lua script in ``directory`` that POSTs ``p`` (its body in a file beside it) and prints a BENCH line."""
    body_path = directory / "body"
    body_path.write_bytes(p.body)
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in p.headers.items())
    script = directory / "post.lua"
    script.write_text(_WRK_SCRIPT.format(body_path=json.dumps(str(body_path)), headers=headers))
    return script


def run_wrk(url: str, p: Payload, concurrency: int, seconds: float, cpus: set[int] | None) -> Measured:
    """``wrk`` with one thread (it is pinned to one core) and ``concurrency`` keep-alive connections."""
    with tempfile.TemporaryDirectory() as tmp:
        script = wrk_script(Path(tmp), p)
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
        out = subprocess.run(
            [*argv, "-s", str(script), url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
            preexec_fn=_pinned(cpus),
        ).stdout
    return bench_line(out)


def bench_line(out: str) -> Measured:
    """What the BENCH line of :func:`wrk_script`'s output says (wrk's microseconds as milliseconds)."""
    line = next((x for x in out.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no BENCH line:\n{out}")
    n, duration_us, errors, p50, p90, p99 = (int(v) for v in line.split()[1:])
    return Measured(n, duration_us / 1e6, errors, p50 / 1e3, p90 / 1e3, p99 / 1e3)


def run_python(url: str, p: Payload, concurrency: int, seconds: float, cpus: set[int] | None) -> Measured:
    """The Python keep-alive generator (:func:`drive`) in its own process, pinned like wrk would be."""
    spec = json.dumps({"url": url, "headers": p.headers, "concurrency": concurrency, "seconds": seconds})
    with tempfile.NamedTemporaryFile() as body:
        body.write(p.body)
        body.flush()
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.serve", "--drive", spec, body.name],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
            preexec_fn=_pinned(cpus),
        ).stdout
    return Measured(**json.loads(out))


async def _connection(
    host: str, port: int, request: bytes, stop_at: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (start := time.perf_counter()) < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors[0] += 1
    finally:
        writer.close()


def drive(spec: dict[str, Any], body: bytes) -> Measured:
    """Keep ``concurrency`` HTTP/1.1 keep-alive connections busy for ``seconds``; closed loop, like wrk."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    url = urllib.parse.urlsplit(spec["url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    head = f"POST {url.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in spec["headers"].items())
    request = (head + "\r\n").encode() + body
    latencies: list[float] = []
    errors = [0]

    async def main() -> float:
        started = time.perf_counter()
        stop_at = started + spec["seconds"]
        await asyncio.gather(
            *(
                _connection(host, port, request, stop_at, latencies, errors)
                for _ in range(spec["concurrency"])
            )
        )
        return time.perf_counter() - started

    elapsed = asyncio.run(main())
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else math.nan

    return Measured(len(ordered), elapsed, errors[0], pct(0.50), pct(0.90), pct(0.99))


# ---- in-process: the ASGI call alone -------------------------------------------------------------------------
def asgi_costs(protocol: str = "v2-json", batch: int = 1, calls: int = 2000) -> dict[str, float]:
    """µs per ``await app(scope, receive, send)`` (best of 5 x ``calls``), without HTTP: no-op app and service."""
    import logging

    from service.app import create_app
    from service.settings import Settings

    p = payload(protocol, batch)
    headers = [(b"host", b"bench"), (b"content-length", str(len(p.body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in p.headers.items()]

    def scope() -> dict[str, Any]:
        return {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": p.path, "raw_path": p.path.encode(), "query_string": b"",
            "root_path": "", "headers": list(headers), "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2), "state": {},
        }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": p.body, "more_body": False}

    async def send(message: Any) -> None:
        pass

    async def best(app: Any) -> float:
        for _ in range(calls // 4):
            await app(scope(), receive, send)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(calls):
                await app(scope(), receive, send)
            times.append((time.perf_counter() - started) / calls * 1e6)
        return min(times)

    async def main() -> dict[str, float]:
        out = {"noop": await best(noop_app)}
        for drift in (True, False):
            settings = Settings(
                model_repository=MODELS, log_level="warning", drift_enabled=drift, workers=1, grpc_port=0
            )
            app = create_app(settings)
            async with app.router.lifespan_context(app):
                out[f"service (drift {'on' if drift else 'off'})"] = await best(app)
        return out

    logging.disable(logging.WARNING)
    try:
        return asyncio.run(main())
    finally:
        logging.disable(logging.NOTSET)


# ---- the grid -----------------------------------------------------------------------------------------------
@dataclass
class Cell:
    app: str
    protocol: str
    batch: int
    concurrency: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float  # server CPU time per request: robust to noisy neighbours, unlike req/s


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def run_grid(args: argparse.Namespace) -> list[Cell]:
    from service.server import event_loop, http_parser

    tool = args.tool
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"
    if tool == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk); use --tool python")
    runner = run_wrk if tool == "wrk" else run_python
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    server_cpus, load_cpus = ({0}, {1}) if pin else (None, None)
    print(f"# machine: {machine()}")
    print(f"# load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        f"# load generator: {tool}; uvicorn loop={event_loop()} http={http_parser()}; service workers={args.workers}; "
        + ("servers pinned to CPU 0, load generator to CPU 1" if pin else "no CPU pinning")
    )
    print(f"# {args.seconds:g} s per cell (after a {args.warmup:g} s warm-up), apps alternating per cell")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    cells: list[Cell] = []
    header = f"{'app':>8} {'protocol':>9} {'batch':>5} {'conc':>4} {'req/s':>9} {'rows/s':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>6} {'cpu us/req':>8}"
    print(header)
    with servers(args.workers, server_cpus, args.service_args) as running:
        for protocol in args.protocols:
            for batch in args.batches:
                p = payload(protocol, batch)
                for server in running.values():
                    check(server, p)
                for concurrency in args.concurrency:
                    pair: dict[str, Cell] = {}
                    for name in ("noop", "service"):
                        url = running[name].url(p.path)
                        if args.warmup > 0:
                            runner(url, p, concurrency, args.warmup, load_cpus)
                        cpu = running[name].cpu_seconds()
                        m = runner(url, p, concurrency, args.seconds, load_cpus)
                        cpu_us = (running[name].cpu_seconds() - cpu) / max(m.requests, 1) * 1e6
                        rps = m.requests / m.seconds
                        cell = Cell(
                            name,
                            protocol,
                            batch,
                            concurrency,
                            rps,
                            rps * batch,
                            m.p50_ms,
                            m.p90_ms,
                            m.p99_ms,
                            m.errors,
                            cpu_us,
                        )
                        pair[name] = cell
                        cells.append(cell)
                        print(
                            f"{name:>8} {protocol:>9} {batch:>5} {concurrency:>4} {rps:>9.0f} {rps * batch:>10.0f} "
                            f"{m.p50_ms:>8.2f} {m.p90_ms:>8.2f} {m.p99_ms:>8.2f} {m.errors:>6} {cpu_us:>8.0f}"
                        )
                    ratio = pair["service"].requests_per_s / pair["noop"].requests_per_s
                    p99 = pair["service"].p99_ms / pair["noop"].p99_ms
                    cpu_ratio = pair["service"].cpu_us_per_request / pair["noop"].cpu_us_per_request
                    print(
                        f"{'ratio':>8} {'':>9} {'':>5} {'':>4} throughput {ratio:.2f}x no-op, p99 {p99:.2f}x no-op, "
                        f"server CPU per request {cpu_ratio:.2f}x no-op"
                    )
    print(f"# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return cells


def markdown(cells: list[Cell]) -> str:
    """One row per cell: both apps side by side and the service's ratios."""
    lines = [
        "| protocol | batch | conc | no-op req/s | service req/s | service rows/s | no-op p50/p90/p99 ms "
        "| service p50/p90/p99 ms | throughput ratio | p99 ratio | CPU µs/req no-op / service |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    by_key = {(c.app, c.protocol, c.batch, c.concurrency): c for c in cells}
    for c in cells:
        if c.app != "service":
            continue
        n = by_key[("noop", c.protocol, c.batch, c.concurrency)]
        lines.append(
            f"| {c.protocol} | {c.batch} | {c.concurrency} | {n.requests_per_s:.0f} | {c.requests_per_s:.0f} "
            f"| {c.rows_per_s:.0f} | {n.p50_ms:.2f} / {n.p90_ms:.2f} / {n.p99_ms:.2f} "
            f"| {c.p50_ms:.2f} / {c.p90_ms:.2f} / {c.p99_ms:.2f} "
            f"| {c.requests_per_s / n.requests_per_s:.2f} | {c.p99_ms / n.p99_ms:.2f} "
            f"| {n.cpu_us_per_request:.0f} / {c.cpu_us_per_request:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell and app")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each measurement")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes of the service and of the no-op app"
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and load generator to CPUs")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 1 s per cell, no warm-up, concurrency 1 8"
    )
    p.add_argument("--json", type=Path, help="also write every cell to this JSON file")
    p.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    p.add_argument(
        "--service-arg",
        dest="service_args",
        action="append",
        default=[],
        help="extra argument for python -m service (repeatable), e.g. --service-arg=--access-log=false",
    )
    p.add_argument(
        "--in-process", action="store_true", help="only time the ASGI call of each app, without HTTP"
    )
    p.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--drive", nargs=2, metavar=("SPEC", "BODY"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_noop is not None:
        serve_noop(args.serve_noop, args.workers)
        return 0
    if args.drive is not None:
        spec, body_path = args.drive
        print(json.dumps(asdict(drive(json.loads(spec), Path(body_path).read_bytes()))))
        return 0
    if args.in_process:
        for protocol in args.protocols:
            for batch in args.batches:
                costs = asgi_costs(protocol, batch, 500 if args.quick else 2000)
                shown = ", ".join(f"{name} {us:.0f} us" for name, us in costs.items())
                print(f"{protocol} batch {batch}: {shown}")
        return 0
    if args.quick:
        args.seconds = min(args.seconds, 1.0)
        args.warmup = 0.0
        if args.concurrency == [1, 8, 32]:
            args.concurrency = [1, 8]
    # SIGTERM unwinds like Ctrl-C, through the ``finally`` that stops both servers.
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(128 + sig))
    cells = run_grid(args)
    if args.markdown:
        print(markdown(cells))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(c) for c in cells], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
