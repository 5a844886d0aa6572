"""Where a batch-1 p99 comes from when the load generator shares the server's cores (Linux only).

The peers bench (``../shared/tools/peers/bench``) runs wrk with two threads on the same two cores as the
server's two workers. Its p99 at batch 1 and 8 connections swings between runs of the same code. This tool
repeats that cell against one server (every default, or ``--service-arg``), each run with fresh
connections, and samples every 10 ms which CPU each worker's main thread and each wrk thread is on
(``/proc/<tid>/stat``, field 39). Per run it prints requests/s, p50, p99, how often wrk's two threads shared a
CPU, each CPU's idle share and the context switches a second; then the p99s grouped by where wrk's threads
were.

``--autogroup-nice K`` lowers the server's scheduling weight against every other session on the machine
(``/proc/<pid>/autogroup``, Linux's session autogroups; the server is started in its own session, as the peers
bench starts it). A diagnostic, not a setting: it shows whether the tail is the client waiting for a core.

    python -m benchmarks.placement                       # 8 runs of 4 s, batch 1, 8 connections
    python -m benchmarks.placement --runs 6 --autogroup-nice 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import LiveServer
from benchmarks.serve import bench_line, payload, wrk_script


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    wrk_same_cpu: float  # share of samples with wrk's threads on one CPU
    idle: list[float]  # per CPU, percent
    switches: float  # context switches a second, workers' main threads and wrk's threads


def _cpu_of(tid: int) -> int:
    with open(f"/proc/{tid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])


def _switches(tid: int) -> int:
    with open(f"/proc/{tid}/schedstat") as f:
        return int(f.read().split()[2])


def _idle() -> list[int]:
    """Idle + iowait jiffies per CPU."""
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                fields = [int(v) for v in line.split()[1:]]
                out.append(fields[3] + fields[4])
    return out


def _workers(server: LiveServer) -> list[int]:
    """The worker processes (uvicorn's spawned children), or the server itself when it runs one process."""
    out = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True).stdout
    kids = []
    for pid in (int(p) for p in out.split()):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"spawn_main" in f.read():
                kids.append(pid)
    return kids or [server.proc.pid]


def _wrk_threads(wrk: subprocess.Popen[str]) -> list[int]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        tids = [int(t) for t in os.listdir(f"/proc/{wrk.pid}/task") if int(t) != wrk.pid]
        if len(tids) >= 2:
            return tids
        time.sleep(0.05)
    raise RuntimeError("wrk did not start its threads")


def one_run(url: str, script: Path, conns: int, seconds: int, workers: list[int]) -> Run:
    wrk = subprocess.Popen(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(min(0.7, seconds / 4))
        threads = _wrk_threads(wrk)
        tids = workers + threads
        before = {t: _switches(t) for t in tids}
        idle0, t0 = _idle(), time.monotonic()
        same = total = 0
        while time.monotonic() - t0 < seconds / 2:
            cpus = [_cpu_of(t) for t in threads]
            same += len(set(cpus)) == 1
            total += 1
            time.sleep(0.01)
        elapsed = time.monotonic() - t0
        idle1 = _idle()
        switches = sum(_switches(t) - before[t] for t in tids) / elapsed
        out, _ = wrk.communicate(timeout=seconds + 60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    m = bench_line(out)
    if m.errors:
        raise RuntimeError(f"{m.errors} requests failed")
    tick = os.sysconf("SC_CLK_TCK")
    idle = [100 * (b - a) / (tick * elapsed) for a, b in zip(idle0, idle1, strict=True)]
    return Run(m.requests / m.seconds, m.p50_ms, m.p99_ms, same / max(total, 1), idle, switches)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=4, help="measured seconds per run")
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--autogroup-nice", type=int, default=None, help="the server's autogroup nice, 1-19")
    parser.add_argument(
        "--service-arg",
        dest="service_args",
        action="append",
        default=[],
        help="extra argument for python -m service",
    )
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        sys.stderr.write("benchmarks.placement: needs Linux (/proc)\n")
        return 2
    if shutil.which("wrk") is None:
        sys.stderr.write("benchmarks.placement: needs wrk (Debian: apt-get install wrk)\n")
        return 2
    server = LiveServer("--log-level", "warning", *args.service_args)
    try:
        server.wait_ready()
        workers = _workers(server)
        if args.autogroup_nice is not None:
            Path(f"/proc/{server.proc.pid}/autogroup").write_text(str(args.autogroup_nice))
        group = Path(f"/proc/{server.proc.pid}/autogroup")
        p = payload("v2-json", 1)
        with tempfile.TemporaryDirectory() as tmp:
            script = wrk_script(Path(tmp), p)
            url = server.url(p.path)
            one_run(url, script, args.conns, 2, workers)  # warm-up
            print(f"# {len(workers)} worker(s); batch 1, {args.conns} connections, wrk -t2; {args.runs} runs of "
                  f"{args.seconds} s; server {group.read_text().strip() if group.exists() else 'no autogroup'}")  # fmt: skip
            print("run  req/s   p50 ms  p99 ms  wrk threads on one CPU  idle % per CPU  switches/s")
            runs = []
            for i in range(args.runs):
                r = one_run(url, script, args.conns, args.seconds, workers)
                runs.append(r)
                idle = ",".join(f"{v:.0f}" for v in r.idle)
                print(f"{i + 1:3d} {r.rps:7,.0f} {r.p50_ms:8.2f} {r.p99_ms:7.2f} {r.wrk_same_cpu:18.0%} "
                      f"{idle:>15} {r.switches:11,.0f}", flush=True)  # fmt: skip
    finally:
        server.stop()
    for label, group_runs in (
        ("wrk's threads mostly on one CPU", [r for r in runs if r.wrk_same_cpu >= 0.5]),
        ("wrk's threads mostly on different CPUs", [r for r in runs if r.wrk_same_cpu < 0.5]),
    ):
        if group_runs:
            p99s = sorted(r.p99_ms for r in group_runs)
            print(f"# {label}: {len(p99s)} runs, p99 median {statistics.median(p99s):.2f} ms "
                  f"(range {p99s[0]:.2f}-{p99s[-1]:.2f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
