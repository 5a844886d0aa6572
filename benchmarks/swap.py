"""Hot swaps under load: how long a new version takes to go live, and what a swap does to request latency.

Serves a temporary repository holding the committed digits model as version 1 (poll mode), keeps
``--connections`` keep-alive clients sending batch-1 V2 JSON requests without a version, and every
``--every`` seconds places the next version (the same model file: the work of a swap is loading and checking
it, whatever its weights) the way ``python -m training`` does, into a hidden folder renamed into place.

Per swap it measures, from the clients' side:

* **swap latency**: from the rename to the last request that started after it and was still answered by an
  older version (with ``--workers 2``: until every worker has swapped);
* request latency **p50/p99 before** (the second before each rename) against **during** (from when the
  server began loading the new version, by its own log line, to one second after the swap).

It also counts failed requests (anything but 200), which must be 0. Run: ``python -m benchmarks.swap``
(``--workers 2``, ``--no-file-events`` to time pure polling).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from benchmarks.harness import MODELS, LiveServer

DIGITS = MODELS / "digits" / "1" / "model.onnx"


def place_version(root: Path, name: str, version: int, data: bytes) -> float:
    """Write ``root/name/version/model.onnx`` as training does (hidden folder, then rename); the rename's time."""
    model_dir = root / name
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
    (staging / "model.onnx").write_bytes(data)
    placed = time.monotonic()
    os.rename(staging, model_dir / str(version))
    return placed


@dataclass
class Sample:
    """One request as the client saw it: monotonic start and end, HTTP status, the version that answered."""

    started: float
    finished: float
    status: int
    version: str
    outputs: list[float] | None


@dataclass
class Load:
    """``connections`` threads, each a keep-alive connection posting ``body`` to ``path`` back to back."""

    port: int
    path: str
    body: bytes
    connections: int = 8
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.connections):
            thread = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> list[Sample]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return sorted(self.samples, key=lambda s: s.started)

    def _run(self) -> None:
        headers = {"Content-Type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        mine: list[Sample] = []
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                conn.request("POST", self.path, self.body, headers)
                response = conn.getresponse()
                data = response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status, data = 0, b""  # a refused or dropped connection: a failed request
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            finished = time.monotonic()
            version, outputs = "", None
            if status == 200:
                answer = orjson.loads(data)
                version = answer["model_version"]
                outputs = answer["outputs"][0]["data"]
            mine.append(Sample(started, finished, status, version, outputs))
        conn.close()
        self.samples.extend(mine)  # one extend per thread: list.extend is atomic under the GIL


def swap_latency(samples: list[Sample], placed: float, version: str) -> float | None:
    """Seconds from ``placed`` until requests starting later are all answered by ``version`` or newer."""
    after = [s for s in samples if s.started >= placed and s.status == 200]
    if not any(s.version == version for s in after):
        return None
    stale = [s.started for s in after if int(s.version) < int(version)]
    first_new = min(s.started for s in after if s.version == version)
    return max([first_new, *stale]) - placed


_SWAPPED = re.compile(r"serving digits version \d+ .*swapped in (\d+) ms")


def _drain(server: LiveServer) -> list[str]:
    """Every line the server wrote that no one has read yet."""
    lines = []
    while not server.lines.empty():
        lines.append(server.lines.get_nowait())
    return lines


def percentiles(values: list[float]) -> str:
    if not values:
        return "no requests"
    p50, p99 = np.percentile(np.asarray(values) * 1e3, [50, 99])
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms ({len(values)} requests)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=5, help="new versions placed (default 5)")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between them (default 3)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    parser.add_argument(
        "--poll-seconds", type=float, default=2.0, help="repository poll interval (default 2)"
    )
    parser.add_argument("--no-file-events", action="store_true", help="poll only, no inotify wake-ups")
    args = parser.parse_args(argv)

    data = DIGITS.read_bytes()
    x = [float(v) for v in np.random.default_rng(0).integers(0, 17, size=64)]
    body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x}]})
    with tempfile.TemporaryDirectory(prefix="bnserve-swap-") as tmp:
        root = Path(tmp) / "models"
        (root / "digits" / "1").mkdir(parents=True)
        shutil.copy(DIGITS, root / "digits" / "1" / "model.onnx")
        server = LiveServer(
            "--model-repository",
            str(root),
            "--model-control-mode",
            "poll",
            "--repository-poll-seconds",
            str(args.poll_seconds),
            "--repository-file-events",
            str(not args.no_file_events).lower(),
            "--workers",
            str(args.workers),
            "--access-log",
            "false",
            name="bnserve",
        )
        with server:
            server.wait_ready()
            for _ in range(args.workers):  # every worker serves version 1 before version 2 arrives
                server.wait_for_line("Application startup complete", timeout=60)
            load = Load(server.port, "/v2/models/digits/infer", body, args.connections)
            load.start()
            time.sleep(args.every)
            placed = {}
            for version in range(2, 2 + args.swaps):
                placed[str(version)] = place_version(root, "digits", version, data)
                time.sleep(args.every)
            samples = load.stop()

        server_ms = [float(m.group(1)) for m in map(_SWAPPED.search, _drain(server)) if m]

    failed = sum(s.status != 200 for s in samples)
    latencies, before, during = [], [], []
    for version, t in placed.items():
        latency = swap_latency(samples, t, version)
        latencies.append(latency)
        swapped = t + (latency if latency is not None else args.every)
        # during: from when loading the new version began (the server's own time for it) to 1 s after the swap
        loading = max(server_ms, default=0.0) / 1e3
        before += [s.finished - s.started for s in samples if t - 1.0 <= s.started < t]
        during += [
            s.finished - s.started for s in samples if swapped - loading - 0.05 <= s.started < swapped + 1.0
        ]
    mode = "poll only" if args.no_file_events else "poll + file events"
    print(
        f"{len(samples)} requests, {failed} failed; {args.swaps} swaps, {args.workers} worker(s), "
        f"{args.connections} connections, {mode}, poll every {args.poll_seconds:g} s"
    )
    shown = [f"{v * 1e3:.0f}" if v is not None else "never" for v in latencies]
    print(f"swap latency (rename -> every request on the new version), ms: {', '.join(shown)}")
    if server_ms:
        shown = ", ".join(f"{v:.0f}" for v in server_ms)
        print(f"server side (load, checks, probe, swap), ms: {shown}")
    print(f"latency before (1 s before each rename):        {percentiles(before)}")
    print(f"latency during (load start -> 1 s after swap): {percentiles(during)}")
    return 1 if failed or None in latencies else 0


if __name__ == "__main__":
    sys.exit(main())
