"""Where a request's latency tail is spent: the client's view against the server's own, two setups alternating.

Each run starts a server, warms it up, drives one cell (V2 JSON, the first digits image ``--batch`` times, wrk
with ``--conns`` connections), stops it, and prints wrk's p50 and p99 beside the server's: the durations its
own access log gives (``duration_ms``, from a request's headers to its response). A tail the client sees and
the server does not is time the request spent before the server read it: the event loop busy with something
else, or the client waiting for a CPU.

Setup A and setup B alternate, ``--pairs`` times. Each is ``python -m service`` with extra arguments
(``--a``, ``--b``, split like a shell line), from this checkout or from another one (``--a-tree``,
``--b-tree``: e.g. ``git worktree add /tmp/before HEAD~1``), so that flags and code can both be compared:

    python -m benchmarks.tail --batch 64 --conns 1 --a "--drift-enabled false"
    python -m benchmarks.tail --batch 1 --conns 1 --a-tree /tmp/before
"""

from __future__ import annotations

import argparse
import json
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from benchmarks.harness import HOST, LiveServer, free_port
from benchmarks.serve import bench_line, payload, wrk_script


def server_durations(lines: Iterable[str]) -> list[float]:
    """The ``duration_ms`` of every JSON access-log line among ``lines`` (other lines are skipped)."""
    out = []
    for line in lines:
        if '"bnserve.access"' not in line:
            continue
        try:
            out.append(float(json.loads(line)["duration_ms"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) by rank, as wrk reports them: the value below which that share falls."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _drain(server: LiveServer) -> list[str]:
    """The lines the server has written since the last call, once it has written none for 0.2 s (the access
    log writes every 20 ms; requests in flight when wrk stopped finish meanwhile). At most 5 s."""
    out: list[str] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            out.append(server.lines.get(timeout=0.2))
        except queue.Empty:
            break
    return out


def one_run(args: Sequence[str], tree: Path | None, batch: int, conns: int, seconds: int) -> str:
    """One server, warmed up, one measured wrk run: the row to print."""
    port = free_port()
    argv = [sys.executable, "-m", "service", "--host", HOST, "--port", str(port), "--grpc-port", "0",
            "--log-format", "json", "--access-log", "true", "--log-level", "info", *args]  # fmt: skip
    server = LiveServer(command=argv, port=port, cwd=tree)
    try:
        server.wait_ready()
        p = payload("v2-json", batch)
        with tempfile.TemporaryDirectory() as tmp:
            script = wrk_script(Path(tmp), p)
            url = server.url(p.path)
            wrk = ["wrk", "--timeout", "10s", "-s", str(script)]
            subprocess.run([*wrk, "-t2", "-c8", "-d2s", url], capture_output=True, timeout=60, check=True)
            _drain(server)  # the warm-up's lines
            out = subprocess.run(
                [*wrk, f"-t{min(conns, 2)}", f"-c{conns}", f"-d{seconds}s", url],
                capture_output=True,
                text=True,
                timeout=seconds + 60,
                check=True,
            ).stdout
            durations = server_durations(_drain(server))
    finally:
        server.stop()
    m = bench_line(out)
    if m.errors:
        raise RuntimeError(f"{m.errors} requests failed")
    if not durations:
        raise RuntimeError("the server wrote no access line")
    return (
        f"{m.requests / m.seconds:9,.0f} {m.p50_ms:8.2f} {m.p99_ms:8.2f}   "
        f"{percentile(durations, 0.5):8.2f} {percentile(durations, 0.9):8.2f} {percentile(durations, 0.99):8.2f} "
        f"{max(durations):8.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=5, help="measured seconds per run")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--a", default="", help="setup A's extra arguments for python -m service")
    parser.add_argument("--b", default="", help="setup B's extra arguments")
    parser.add_argument("--a-tree", type=Path, default=None, help="run setup A from this checkout")
    parser.add_argument("--b-tree", type=Path, default=None, help="run setup B from this checkout")
    args = parser.parse_args(argv)
    for tree in (args.a_tree, args.b_tree):
        if tree is not None and not (tree / "service" / "__main__.py").is_file():
            sys.stderr.write(f"benchmarks.tail: {tree} is not a bnserve checkout (no service/__main__.py)\n")
            return 2
    if shutil.which("wrk") is None:
        sys.stderr.write("benchmarks.tail: needs wrk (Debian: apt-get install wrk)\n")
        return 2
    setups = {
        "A": (shlex.split(args.a), args.a_tree),
        "B": (shlex.split(args.b), args.b_tree),
    }
    for name, (extra, tree) in setups.items():
        print(
            f"# {name}: python -m service {' '.join(extra) or '(defaults)'}{f' from {tree}' if tree else ''}"
        )
    print(f"# batch {args.batch}, {args.conns} connection(s), {args.seconds} s per run after a 2 s warm-up")
    print("#          wrk: req/s  p50 ms  p99 ms   server: p50 ms  p90 ms  p99 ms  max ms")
    for i in range(args.pairs):
        for name, (extra, tree) in setups.items():
            row = one_run(extra, tree, args.batch, args.conns, args.seconds)
            print(f"{i + 1:2d} {name} {row}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
