"""Load test with bad input: a real server hammered by concurrent clients mixing valid and invalid requests.

Starts ``python -m service`` on a free 127.0.0.1 port (with an API key and small limits, so that 401 and 413
are exercised too), then keeps ``--concurrency`` keep-alive connections busy until ``--requests`` requests
were answered or ``--seconds`` passed. Every request is drawn from a fixed mix (valid V2 JSON and binary, V1,
metadata, health, drift; and wrong feature counts, NaN, malformed JSON, unknown model/output, wrong datatype,
strings, inconsistent binary sizes, empty batch, too many rows, an oversized body, a missing key), each with
the status it must get. Prints requests/s, latency percentiles, the count of unexpected statuses (must be 0)
and the server's resident memory after a warm-up and at the end (growth beyond noise means a leak).

Meanwhile, during the measured phase, attackers that need no key (``--attackers`` of each kind, 0 to turn them
off): **header floods** (a request line, then header bytes without end: must get 431 or a close, never 200),
**slow clients** (half a request line, then one byte a second: closed by the header timeout), and
**disconnects mid-body** (half a body, then gone: counted as 499 by the server, never 5xx). A prober asks
``/v2/health/live`` every 100 ms throughout; each probe must be answered within ``--probe-timeout``. After the
run, ``/metrics`` must show no 5xx and the 499s of the disconnects.

    python -m benchmarks.load                       # 100,000 requests, at most 300 s
    python -m benchmarks.load --requests 5000       # a short run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import random
import re
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.harness import ROOT, LiveServer

KEY = "load-test-key"
MAX_ROWS = 100
MAX_BODY = 256 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: bytes
    expected: int
    headers: dict[str, str] = field(default_factory=dict)
    auth: bool = True


def v2_json(rows: np.ndarray, **overrides: object) -> bytes:
    tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
    tensor.update(overrides)
    return json.dumps({"id": "load", "inputs": [tensor]}).encode()


def v2_binary(rows: np.ndarray, declared: int | None = None) -> tuple[bytes, dict[str, str]]:
    raw = rows.astype("<f4").tobytes()
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": declared if declared is not None else len(raw)},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    return head + raw, {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def cases() -> list[Case]:
    raw = np.loadtxt(gzip.open(ROOT / "training" / "data" / "digits.csv.gz", "rt"), delimiter=",")
    x = raw[:, :-1].astype(np.float32)
    names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    infer = "/v2/models/digits/infer"
    predict = "/v1/models/digits:predict"
    binary_ok, binary_headers = v2_binary(x[:4])
    binary_bad, _ = v2_binary(x[:4], declared=4 * 64 * 4 + 12)
    json_h = {"Content-Type": "application/json"}
    nan_body = v2_json(x[:1]).replace(b'"data": [', b'"data": [NaN, ', 1)
    return [
        Case("v2 json, 1 row", "POST", infer, v2_json(x[:1]), 200, json_h),
        Case("v2 json, 16 rows", "POST", infer, v2_json(x[:16]), 200, json_h),
        Case("v2 binary, 4 rows", "POST", infer, binary_ok, 200, binary_headers),
        Case("v1 rows", "POST", predict, json.dumps({"instances": x[:2].tolist()}).encode(), 200, json_h),
        Case(
            "v1 named features",
            "POST",
            predict,
            json.dumps({"instances": [dict(zip(names, map(float, x[5])))]}).encode(),
            200,
            json_h,
        ),
        Case("model metadata", "GET", "/v2/models/digits", b"", 200),
        Case("ready", "GET", "/v2/health/ready", b"", 200, auth=False),
        Case("drift report", "GET", "/v2/models/digits/drift", b"", 200),
        Case("63 features", "POST", infer, v2_json(x[:2, :63]), 400, json_h),
        Case("shape vs data", "POST", infer, v2_json(x[:2], shape=[3, 64]), 400, json_h),
        Case("NaN literal", "POST", infer, nan_body, 400, json_h),
        Case("malformed JSON", "POST", infer, b'{"inputs": [', 400, json_h),
        Case("strings", "POST", predict, json.dumps({"instances": [["a"] * 64]}).encode(), 400, json_h),
        Case("wrong datatype", "POST", infer, v2_json(x[:1], datatype="BYTES"), 400, json_h),
        Case(
            "unknown output",
            "POST",
            infer,
            v2_json(x[:1])[:-1] + b', "outputs": [{"name": "z"}]}',
            400,
            json_h,
        ),
        Case("empty batch", "POST", infer, v2_json(x[:0]), 400, json_h),
        Case("binary sizes", "POST", infer, binary_bad, 400, binary_headers),
        Case("unknown model", "POST", "/v2/models/cats/infer", v2_json(x[:1]), 404, json_h),
        Case("too many rows", "POST", infer, v2_json(x[: MAX_ROWS + 1]), 413, json_h),
        Case("oversized body", "POST", infer, b" " * (MAX_BODY + 1), 413, json_h),
        Case("no API key", "POST", infer, v2_json(x[:1]), 401, json_h, auth=False),
    ]


def encode(case: Case, host: str) -> bytes:
    head = f"{case.method} {case.path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(case.body)}\r\n"
    headers = dict(case.headers)
    if case.auth:
        headers["Authorization"] = f"Bearer {KEY}"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode() + case.body


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    by_case: dict[str, list[int]] = field(default_factory=dict)  # name -> [sent, unexpected]
    unexpected: list[str] = field(default_factory=list)  # first few, for the report
    reconnects: int = 0

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        for name, (sent, unexpected) in other.by_case.items():
            mine = self.by_case.setdefault(name, [0, 0])
            mine[0] += sent
            mine[1] += unexpected
        self.unexpected += other.unexpected[: 10 - len(self.unexpected)]
        self.reconnects += other.reconnects


async def client(
    port: int, mix: list[Case], wire: list[bytes], budget: list[int], stop_at: float, seed: int, tally: Tally
) -> None:
    rng = random.Random(seed)
    reader = writer = None
    while budget[0] > 0 and time.monotonic() < stop_at:
        budget[0] -= 1
        i = rng.randrange(len(mix))
        case = mix[i]
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert reader is not None
        start = time.perf_counter()
        try:
            writer.write(wire[i])
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
            status = int(head[9:12])
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                key = key.strip().lower()
                if key == b"content-length":
                    length = int(value)
                elif key == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await reader.readexactly(length)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            status, body, close = -1, repr(exc).encode(), True
        tally.latencies.append(time.perf_counter() - start)
        sent = tally.by_case.setdefault(case.name, [0, 0])
        sent[0] += 1
        if status != case.expected:
            sent[1] += 1
            if len(tally.unexpected) < 10:
                tally.unexpected.append(f"{case.name}: {status} (expected {case.expected}) {body[:160]!r}")
        if close:
            tally.reconnects += 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            reader = writer = None
    if writer is not None:
        writer.close()


@dataclass
class Attacks:
    """What the attackers and the health prober saw."""

    floods: int = 0  # header floods sent
    floods_answered: list[bytes] = field(default_factory=list)  # the status line each got (b"" for a close)
    slow: int = 0
    slow_closed: int = 0  # slow clients the server closed before the run ended
    disconnects: int = 0
    probes: list[float] = field(default_factory=list)  # seconds per health probe; inf when it timed out


async def _status_line(reader: asyncio.StreamReader, timeout: float) -> bytes:
    try:
        return (await asyncio.wait_for(reader.readline(), timeout)).strip()
    except (ConnectionError, asyncio.TimeoutError):
        return b""


async def header_flood(port: int, stop_at: list[float], result: Attacks) -> None:
    """Connections that send header bytes without end (up to 4 MiB each), one after another."""
    while time.monotonic() < stop_at[0]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        result.floods += 1
        try:
            writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Flood: ")
            for _ in range(64):
                writer.write(b"a" * 65536)
                await writer.drain()
        except ConnectionError:
            pass
        result.floods_answered.append(await _status_line(reader, 10))
        writer.close()


async def slow_client(port: int, stop_at: list[float], result: Attacks) -> None:
    """Half a request line, then a byte a second: a connection held open for as long as the server lets it."""
    while time.monotonic() < stop_at[0]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        result.slow += 1
        closed = False
        try:
            writer.write(b"GET /v2/health/live HTTP/1.1\r\nX-Slow: ")
            while time.monotonic() < stop_at[0]:
                writer.write(b"a")
                await writer.drain()
                if reader.at_eof() or await _status_line(reader, 1.0):
                    closed = True
                    break
        except ConnectionError:
            closed = True
        result.slow_closed += closed
        writer.close()


async def disconnect_mid_body(port: int, stop_at: list[float], result: Attacks, body: bytes) -> None:
    """An inference request whose client goes away after half its body, over and over."""
    head = (
        f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    while time.monotonic() < stop_at[0]:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + body[: len(body) // 2])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        result.disconnects += 1
        await asyncio.sleep(0.05)


async def probe_health(port: int, stop_at: list[float], timeout: float, result: Attacks) -> None:
    """``GET /v2/health/live`` on a fresh connection every 100 ms, as a kubelet would."""
    while time.monotonic() < stop_at[0]:
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
            writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            line = await asyncio.wait_for(reader.readline(), timeout)
            writer.close()
            ok = line.startswith(b"HTTP/1.1 200")
        except (ConnectionError, asyncio.TimeoutError):
            ok = False
        result.probes.append(time.perf_counter() - started if ok else float("inf"))
        await asyncio.sleep(0.1)


async def attack(port: int, stop_at: list[float], attackers: int, probe_timeout: float) -> Attacks:
    """Every kind of attacker, ``attackers`` of each, and the health prober, until ``stop_at[0]`` (monotonic
    seconds; another thread may bring it forward)."""
    result = Attacks()
    body = cases()[0].body
    tasks = [probe_health(port, stop_at, probe_timeout, result)]
    for _ in range(attackers):
        tasks += [
            header_flood(port, stop_at, result),
            slow_client(port, stop_at, result),
            disconnect_mid_body(port, stop_at, result, body),
        ]
    await asyncio.gather(*tasks)
    return result


def rss_kib(pid: int) -> int:
    """Resident memory of the server: every process of its process group (the workers too), in KiB."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != pid:
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    if not total:
        raise RuntimeError(f"no process in the group of {pid}")
    return total


async def run(port: int, n: int, concurrency: int, seconds: float, seed: int) -> tuple[Tally, float]:
    mix = cases()
    wire = [encode(c, f"127.0.0.1:{port}") for c in mix]
    tally = Tally()
    budget = [n]
    started = time.perf_counter()
    stop_at = time.monotonic() + seconds
    await asyncio.gather(
        *(client(port, mix, wire, budget, stop_at, seed + k, tally) for k in range(concurrency))
    )
    return tally, time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100_000, help="requests to send in the measured phase")
    p.add_argument(
        "--seconds", type=float, default=300.0, help="stop the measured phase after this long anyway"
    )
    p.add_argument("--concurrency", type=int, default=16, help="keep-alive connections")
    p.add_argument("--warmup", type=int, default=3000, help="requests before the first memory reading")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoints", type=int, default=5, help="memory readings during the measured phase")
    p.add_argument(
        "--attackers", type=int, default=2, help="attackers of each kind during the measured phase"
    )
    p.add_argument("--probe-timeout", type=float, default=1.0, help="seconds a health probe may take")
    args = p.parse_args()

    server = LiveServer(
        "--log-level", "warning",
        "--api-key", KEY, "--max-batch-rows", str(MAX_ROWS), "--max-body-bytes", str(MAX_BODY),
        "--header-timeout", "2", "--body-timeout", "2",  # short, so that the slow clients meet them in the run
    )  # fmt: skip
    port = server.port
    try:
        server.wait_ready()
        warm, _ = asyncio.run(run(port, args.warmup, args.concurrency, 120, args.seed + 10_000))
        time.sleep(0.5)
        rss = [rss_kib(server.proc.pid)]
        # The measured phase in --checkpoints parts, with a memory reading after each: a leak climbs steadily,
        # allocator noise levels off.
        tally, elapsed = Tally(), 0.0
        deadline = time.monotonic() + args.seconds
        attack_until = [deadline]
        attacks: list[Attacks] = []
        attacker = threading.Thread(
            target=lambda: attacks.append(
                asyncio.run(attack(port, attack_until, args.attackers, args.probe_timeout))
            )
        )
        if args.attackers:
            attacker.start()
        for part in range(args.checkpoints):
            n = args.requests // args.checkpoints
            t, dt = asyncio.run(run(port, n, args.concurrency, deadline - time.monotonic(), args.seed + part))
            tally.merge(t)
            elapsed += dt
            time.sleep(0.2)
            rss.append(rss_kib(server.proc.pid))
        attack_until[0] = 0.0
        if args.attackers:
            attacker.join(60)
        rss_before, rss_after = rss[0], rss[-1]
        alive = server.proc.poll() is None
        statuses = scraped_statuses(port) if alive else {}
    finally:
        server.stop()

    lat = np.sort(np.array(tally.latencies)) * 1e3
    done = len(lat)
    bad = sum(u for _, u in tally.by_case.values())
    print(f"# {done:,} requests in {elapsed:.1f} s over {args.concurrency} connections "
          f"(after {len(warm.latencies):,} warm-up requests); server alive at the end: {alive}")  # fmt: skip
    print(f"# {done / elapsed:,.0f} requests/s; latency p50 {np.percentile(lat, 50):.2f} ms, "
          f"p90 {np.percentile(lat, 90):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms, max {lat[-1]:.1f} ms")  # fmt: skip
    print(f"# server RSS after warm-up {rss_before / 1024:.1f} MiB, after the run {rss_after / 1024:.1f} MiB "
          f"({(rss_after - rss_before) / 1024:+.1f} MiB); reconnects after 'Connection: close': {tally.reconnects}")  # fmt: skip
    print("# server RSS at each checkpoint (MiB): " + ", ".join(f"{r / 1024:.1f}" for r in rss))
    print(f"{'request':<20} {'expected':>8} {'sent':>8} {'unexpected':>10}")
    by_name = {c.name: c for c in cases()}
    for name, (sent, unexpected) in tally.by_case.items():
        print(f"{name:<20} {by_name[name].expected:>8} {sent:>8} {unexpected:>10}")
    print(f"unexpected statuses: {bad}")
    for line in tally.unexpected:
        print("  " + line)
    failed = bad > 0 or not alive
    if attacks:
        a = attacks[0]
        answered = [line[9:12].decode() or "close" for line in a.floods_answered]
        wrong_floods = [x for x in answered if x not in ("431", "close")]
        probes = np.array(a.probes)
        late = int((probes > args.probe_timeout).sum())
        errors_5xx = sum(n for code, n in statuses.items() if code.startswith("5"))
        print(f"# header floods: {a.floods} ({', '.join(f'{k}: {answered.count(k)}' for k in sorted(set(answered)))})"
              f"; slow clients: {a.slow}, closed by the server: {a.slow_closed}; disconnects mid-body: "
              f"{a.disconnects}, counted 499 by the server: {statuses.get('499', 0)}")  # fmt: skip
        print(f"# health probes: {len(probes)}, slowest {np.max(probes[np.isfinite(probes)], initial=0) * 1e3:.1f} ms, "
              f"over {args.probe_timeout:g} s or failed: {late}; 5xx in the server's metrics: {errors_5xx}")  # fmt: skip
        failed = failed or bool(wrong_floods) or late > 0 or errors_5xx > 0
        failed = failed or statuses.get("499", 0) < a.disconnects
    return 1 if failed else 0


def scraped_statuses(port: int) -> dict[str, int]:
    """Requests by status code, from the server's own ``bnserve_requests_total``, summed over the other labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, int] = {}
    for match in re.finditer(r'^bnserve_requests_total\{[^}]*status="(\d+)"[^}]*\} (\S+)$', text, re.M):
        counts[match.group(1)] = counts.get(match.group(1), 0) + int(float(match.group(2)))
    return counts


if __name__ == "__main__":
    sys.exit(main())
