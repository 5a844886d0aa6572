"""Local scale-out test: two bnserve replicas behind nginx (round robin), one drained and restarted mid-run.

Three phases, each driven for ``--duration`` seconds by the same closed-loop load generator (``--concurrency``
keep-alive connections, V2 JSON batch-1 requests carrying real digits rows):

  single     one replica, the generator talks to it directly
  pair       two replicas behind nginx
  failover   two replicas behind nginx; at ``--stop-at`` s one replica gets SIGTERM (it turns not-ready and
             finishes its in-flight requests), is started again once it has exited, and rejoins when ready

The load generator is its own (asyncio, uvloop when installed), not ``benchmarks/serve.py``'s: it must
outlive broken connections (reconnect and count the failure), check every answer, and run the stop/restart
alongside. Every 200 response is compared byte for byte with the answer replica A gave to the same body before the run
(wrong answers are counted); a request fails when it gets no response or a status other than 200. Per phase
it reports requests/s, latency percentiles, failures, and the CPU seconds the replicas, nginx and the
generator used (requests per replica CPU-second is the per-core figure).

Inference is idempotent here (a pure function of the request body; only the drift monitor would count a row
twice), so nginx is told to retry POSTs too (``proxy_next_upstream ... non_idempotent``), which it never does
by default: a request whose connection to a stopping replica breaks is re-sent to the other one.

Needs nginx (Debian: ``apt-get install -y nginx``); installs nothing, binds 127.0.0.1 only, writes only in a
temporary directory, and stops every process it started on any exit.

    python -m benchmarks.scale_out [--duration 20] [--concurrency 16] [--phases single,pair,failover]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import gzip
import http.client
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import HOST, ROOT, free_port
from service.settings import Settings

DIGITS_CSV = ROOT / "training" / "data" / "digits.csv.gz"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process, from /proc (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` every 50 ms; return the seconds it took, or raise after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if predicate():
                return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{what} not within {timeout:.0f} s")


# ---- processes ---------------------------------------------------------------------------------------------------
class Replica:
    """One ``python -m service`` process on a loopback port; its log goes to a file."""

    def __init__(self, name: str, port: int, logdir: Path, extra: list[str]) -> None:
        self.name, self.port, self.log, self.extra = name, port, logdir / f"replica-{name}.log", extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.cpu_before_exit = 0.0  # CPU of earlier incarnations (the failover phase restarts one)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BNSERVE_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                # gRPC off: two replicas share the machine, and HTTP is what is measured.
                [
                    sys.executable,
                    "-m",
                    "service",
                    "--host",
                    HOST,
                    "--port",
                    str(self.port),
                    "--grpc-port",
                    "0",
                    *self.extra,
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def ready(self) -> bool:
        return http_get(self.port, "/v2/health/ready", timeout=1.0)[0] == 200

    def wait_ready(self, timeout: float = 60.0) -> float:
        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited with {self.proc.returncode}; see {self.log}")
            return self.ready()

        return wait_until(up, timeout, f"replica {self.name} ready")

    def cpu(self) -> float:
        return self.cpu_before_exit + (cpu_seconds(self.proc.pid) if self.proc else 0.0)

    def drain(self, timeout: float) -> tuple[float, int]:
        """SIGTERM, then wait for the exit (the service drains in-flight requests): (seconds, exit code)."""
        assert self.proc is not None
        cpu = cpu_seconds(self.proc.pid)  # read before the process (and its /proc entry) goes away
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(
                f"replica {self.name} did not exit within {timeout:.0f} s of SIGTERM"
            ) from None
        self.cpu_before_exit += cpu
        return time.monotonic() - started, self.proc.returncode

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


NGINX_CONF = """\
# written by python -m benchmarks.scale_out; loopback only, every path inside {tmp}
{user}worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream bnserve {{
        # Passive health only (open-source nginx): one failure takes a replica out for 2 s, then one real
        # request probes it again (and is retried on the other replica if it fails).
{servers}
        keepalive 32;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://bnserve;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout 10s;
            # V2 inference is a POST, which nginx never re-sends unless told: it is idempotent here.
            proxy_next_upstream error timeout http_502 http_503{non_idempotent};
            proxy_next_upstream_tries {tries};
            proxy_next_upstream_timeout 5s;
        }}
    }}
}}
"""


class Nginx:
    """Debian's nginx as a child process (``daemon off``) with a configuration written into ``tmp``."""

    def __init__(
        self, binary: str, tmp: Path, port: int, upstream_ports: list[int], retry_post: bool = True
    ) -> None:
        self.binary, self.tmp, self.port = binary, tmp, port
        user = ""
        if os.geteuid() == 0:  # root's workers must drop to an unprivileged user; Debian has nobody:nogroup
            group = "nogroup" if _group_exists("nogroup") else "nobody"
            user = f"user nobody {group};\n"
        servers = "\n".join(f"        server {HOST}:{p} max_fails=1 fail_timeout=2s;" for p in upstream_ports)
        self.conf = tmp / "nginx.conf"
        self.conf.write_text(
            NGINX_CONF.format(
                tmp=tmp,
                user=user,
                servers=servers,
                host=HOST,
                port=port,
                tries=len(upstream_ports),
                non_idempotent=" non_idempotent" if retry_post else "",
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        test = subprocess.run(
            [
                self.binary,
                "-t",
                "-p",
                str(self.tmp),
                "-e",
                str(self.tmp / "nginx-error.log"),
                "-c",
                str(self.conf),
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if test.returncode != 0:
            raise RuntimeError(f"nginx rejects {self.conf}: {test.stderr.strip()}")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "-p",
                str(self.tmp),
                "-e",
                str(self.tmp / "nginx-error.log"),
                "-c",
                str(self.conf),
                "-g",
                "daemon off;",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: http_get(self.port, "/v2/health/ready")[0] == 200, 10, "nginx")

    def pids(self) -> list[int]:
        """The master and its workers."""
        if self.proc is None:
            return []
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [self.proc.pid, *(int(p) for p in children.read_text().split())]
        except FileNotFoundError:
            return [self.proc.pid]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


# ---- the load generator ----------------------------------------------------------------------------------------
def digits_bodies(n: int, input_name: str) -> list[bytes]:
    """``n`` V2 JSON bodies, each one real 8x8 digit (64 features, last CSV column is the label)."""
    with gzip.open(DIGITS_CSV, "rt") as f:
        rows = [line.strip().split(",") for line in f if line.strip()]
    rows = [r for r in rows if all(_is_number(v) for v in r)]  # skips a header if there is one
    picked = [rows[i] for i in np.random.default_rng(0).choice(len(rows), size=n, replace=False)]
    bodies = []
    for row in picked:
        x = [float(v) for v in row[:-1]]
        request = {"inputs": [{"name": input_name, "shape": [1, len(x)], "datatype": "FP32", "data": x}]}
        bodies.append(json.dumps(request, separators=(",", ":")).encode())
    return bodies


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def reference_answers(port: int, path: str, bodies: list[bytes]) -> list[bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    answers = []
    try:
        for body in bodies:
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"reference request failed: {response.status} {payload[:200]!r}")
            answers.append(payload)
    finally:
        conn.close()
    return answers


@dataclass
class Tally:
    """What one load phase saw."""

    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    wrong: int = 0
    per_second: Counter[int] = field(default_factory=Counter)  # successes by whole second since the start
    failed_per_second: Counter[int] = field(default_factory=Counter)
    seconds: float = 0.0


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 request on a kept-alive connection: (status, body, server closes the connection)."""
    writer.write(request)
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length, close = 0, False
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    body = await reader.readexactly(length)
    return status, body, close


async def drive(
    port: int, path: str, bodies: list[bytes], answers: list[bytes], concurrency: int, seconds: float
) -> Tally:
    """``concurrency`` connections, each sending the next body as soon as the previous answer is in."""
    tally = Tally()
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    started = time.perf_counter()
    deadline = started + seconds

    async def connection(k: int) -> None:
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        i = k
        while (t0 := time.perf_counter()) < deadline:
            i = (i + concurrency) % len(requests)
            try:
                if stream is None:
                    stream = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
                status, body, close = await asyncio.wait_for(_exchange(*stream, requests[i]), 15)
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                TimeoutError,
                ValueError,
            ) as e:
                tally.failures[type(e).__name__] += 1
                tally.failed_per_second[int(t0 - started)] += 1
                if stream is not None:
                    stream[1].close()
                stream = None
                await asyncio.sleep(0.01)  # no hot loop while nothing answers
                continue
            t1 = time.perf_counter()
            if status != 200:
                tally.failures[f"HTTP {status}"] += 1
                tally.failed_per_second[int(t0 - started)] += 1
            else:
                tally.latencies.append(t1 - t0)
                tally.per_second[int(t0 - started)] += 1
                tally.wrong += body != answers[i]
            if close:
                stream[1].close()
                stream = None
        if stream is not None:
            stream[1].close()

    await asyncio.gather(*(connection(k) for k in range(concurrency)))
    tally.seconds = time.perf_counter() - started
    return tally


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # installed with uvicorn[standard]; a cheaper client leaves more CPU to the servers
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# A coroutine function run alongside a measured phase: (the phase's start on perf_counter, its event list).
SideTask = Callable[[float, list[str]], Awaitable[None]]


# ---- phases ------------------------------------------------------------------------------------------------------
@dataclass
class Result:
    phase: str
    tally: Tally
    cpu_replicas: float
    cpu_nginx: float
    cpu_client: float
    events: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        lat = np.array(self.tally.latencies) * 1e3
        ok = len(lat)
        failed = sum(self.tally.failures.values())
        pct = np.percentile(lat, [50, 90, 99]) if ok else [float("nan")] * 3
        return {
            "phase": self.phase,
            "seconds": round(self.tally.seconds, 2),
            "ok": ok,
            "failed": failed,
            "failures": dict(self.tally.failures),
            "wrong_answers": self.tally.wrong,
            "requests_per_s": round(ok / self.tally.seconds, 1),
            "p50_ms": round(float(pct[0]), 2),
            "p90_ms": round(float(pct[1]), 2),
            "p99_ms": round(float(pct[2]), 2),
            "max_ms": round(float(lat.max()), 1) if ok else None,
            "cpu_s_replicas": round(self.cpu_replicas, 2),
            "cpu_s_nginx": round(self.cpu_nginx, 2),
            "cpu_s_client": round(self.cpu_client, 2),
            "requests_per_replica_cpu_s": round(ok / self.cpu_replicas, 1) if self.cpu_replicas else None,
            "ok_per_second": [self.tally.per_second.get(s, 0) for s in range(int(self.tally.seconds))],
            "failed_per_second": [
                self.tally.failed_per_second.get(s, 0) for s in range(int(self.tally.seconds))
            ],
            "events": self.events,
        }


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(
    phase: str,
    port: int,
    path: str,
    bodies: list[bytes],
    answers: list[bytes],
    args: argparse.Namespace,
    replicas: list[Replica],
    nginx: Nginx | None,
    during: SideTask | None = None,
) -> Result:
    """Warm up for a second, then drive ``port`` for ``args.duration`` s while ``during`` (a coroutine
    function taking the phase's start time) runs alongside."""
    events: list[str] = []

    async def run() -> tuple[Tally, tuple[list[float], float, float]]:
        await drive(port, path, bodies, answers, args.concurrency, 1.0)
        before = ([r.cpu() for r in replicas], nginx.cpu() if nginx else 0.0, client_cpu())
        t0 = time.perf_counter()
        side = asyncio.ensure_future(during(t0, events)) if during else None
        try:
            tally = await drive(port, path, bodies, answers, args.concurrency, args.duration)
            if side is not None:
                await side
        finally:
            if side is not None:
                side.cancel()
        return tally, before

    loop = new_loop()
    task = loop.create_task(run())
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    handlers = {sig: signal.getsignal(sig) for sig in stops}
    for sig in stops:  # an interruption cancels the phase cleanly instead of raising inside a callback
        loop.add_signal_handler(sig, task.cancel)
    try:
        tally, before = loop.run_until_complete(task)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        for sig in stops:
            loop.remove_signal_handler(sig)
            signal.signal(sig, handlers[sig])
        loop.close()
    after = ([r.cpu() for r in replicas], nginx.cpu() if nginx else 0.0, client_cpu())
    return Result(
        phase,
        tally,
        cpu_replicas=sum(after[0]) - sum(before[0]),
        cpu_nginx=after[1] - before[1],
        cpu_client=after[2] - before[2],
        events=events,
    )


def failover(replica: Replica, stop_at: float, drain_timeout: float) -> SideTask:
    """The side task of the failover phase: drain ``replica`` at ``stop_at`` s, restart it, wait until ready."""

    async def run(t0: float, events: list[str]) -> None:
        def note(text: str) -> None:
            events.append(f"t={time.perf_counter() - t0:5.2f}s {text}")

        await asyncio.sleep(max(0.0, stop_at - (time.perf_counter() - t0)))
        note(f"SIGTERM to replica {replica.name}")
        drained, code = await asyncio.to_thread(replica.drain, drain_timeout)
        note(f"replica {replica.name} exited {code} after draining {drained:.2f}s; restarting")
        replica.start()
        took = await asyncio.to_thread(replica.wait_ready, 60.0)
        note(f"replica {replica.name} ready again {took:.2f}s after the restart")

    return run


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = [
        ("phase", "phase", "<9"),
        ("requests_per_s", "req/s", ">8"),
        ("p50_ms", "p50 ms", ">7"),
        ("p90_ms", "p90 ms", ">7"),
        ("p99_ms", "p99 ms", ">7"),
        ("max_ms", "max ms", ">7"),
        ("ok", "ok", ">7"),
        ("failed", "failed", ">6"),
        ("wrong_answers", "wrong", ">5"),
        ("cpu_s_replicas", "cpu-s srv", ">9"),
        ("cpu_s_nginx", "cpu-s ngx", ">9"),
        ("cpu_s_client", "cpu-s gen", ">9"),
        ("requests_per_replica_cpu_s", "req/srv-cpu-s", ">13"),
    ]
    print("  ".join(f"{title:{align}}" for _, title, align in cols))
    for row in rows:
        print("  ".join(f"{row[key]!s:{align}}" for key, _, align in cols))
    for row in rows:
        if row["failures"]:
            print(f"{row['phase']}: failures {row['failures']}")
        for event in row["events"]:
            print(f"{row['phase']}: {event}")
        if row["phase"] == "failover":
            print(f"failover: ok per second   {row['ok_per_second']}")
            print(f"failover: failed per sec. {row['failed_per_second']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per phase")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent keep-alive connections")
    p.add_argument("--phases", default="single,pair,failover", help="comma-separated: single, pair, failover")
    p.add_argument("--stop-at", type=float, default=None, help="failover: seconds in (default: a quarter)")
    p.add_argument("--model", default="digits")
    p.add_argument("--bodies", type=int, default=256, help="distinct digit rows cycled through")
    p.add_argument(
        "--no-retry-post",
        action="store_true",
        help="nginx's default: never re-send a POST to another replica (shows what the retry buys)",
    )
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the temporary directory (replica and nginx logs)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument(
        "--service-arg",
        action="append",
        default=[],
        help="extra argument for every replica, e.g. --service-arg=--access-log=false (repeatable)",
    )
    args = p.parse_args()
    phases = [s.strip() for s in args.phases.split(",") if s.strip()]
    unknown = set(phases) - {"single", "pair", "failover"}
    if unknown:
        p.error(f"unknown phases {sorted(unknown)}")
    if not 0 < args.duration <= 300:
        p.error("--duration must be in (0, 300] seconds")
    stop_at = args.duration / 4 if args.stop_at is None else args.stop_at
    if not 0 <= stop_at < args.duration:
        p.error("--stop-at must be within the phase")
    nginx_bin = shutil.which("nginx") or next(
        (b for b in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(b, os.X_OK)), None
    )
    if nginx_bin is None and {"pair", "failover"} & set(phases):
        sys.stderr.write(
            "nginx not found: install Debian's package (apt-get install -y nginx), or run --phases single\n"
        )
        return 2
    extra = [a for arg in args.service_arg for a in arg.split("=", 1)]

    # SIGTERM / SIGHUP end the run like Ctrl-C does, through the finally below.
    def interrupted(sig: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    tmp = Path(tempfile.mkdtemp(prefix="bnserve-scale-out-"))
    tmp.chmod(0o755)  # nginx workers run unprivileged
    replicas = [Replica(name, free_port(), tmp, extra) for name in ("A", "B")]
    nginx: Nginx | None = None
    results: list[Result] = []
    keep = args.keep_logs
    try:
        needed = replicas if {"pair", "failover"} & set(phases) else replicas[:1]
        for r in needed:
            r.start()
        for r in needed:
            r.wait_ready()
        status, meta = http_get(replicas[0].port, f"/v2/models/{args.model}")
        if status != 200:
            raise RuntimeError(f"GET /v2/models/{args.model}: {status} {meta[:200]!r}")
        input_name = json.loads(meta)["inputs"][0]["name"]
        path = f"/v2/models/{args.model}/infer"
        bodies = digits_bodies(args.bodies, input_name)
        answers = reference_answers(replicas[0].port, path, bodies)
        if len(needed) > 1 and reference_answers(replicas[1].port, path, bodies) != answers:
            raise RuntimeError("the two replicas disagree on the same requests")
        print(
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.concurrency} connections, "
            f"{args.duration:g} s per phase, V2 JSON batch-1 digits requests to {path}",
            flush=True,
        )
        if "single" in phases:
            results.append(
                measure("single", replicas[0].port, path, bodies, answers, args, replicas[:1], None)
            )
        if {"pair", "failover"} & set(phases):
            assert nginx_bin is not None
            nginx = Nginx(
                nginx_bin, tmp, free_port(), [r.port for r in replicas], retry_post=not args.no_retry_post
            )
            nginx.start()
            if "pair" in phases:
                results.append(measure("pair", nginx.port, path, bodies, answers, args, replicas, nginx))
            if "failover" in phases:
                drain_timeout = Settings.model_fields["graceful_timeout"].default + 10.0
                side = failover(replicas[1], stop_at, drain_timeout)
                results.append(
                    measure("failover", nginx.port, path, bodies, answers, args, replicas, nginx, during=side)
                )
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; stopping everything\n")
        return 130
    except Exception:
        keep = True  # the replica and nginx logs explain what went wrong
        raise
    finally:
        if nginx is not None:
            nginx.stop()
        for r in replicas:
            r.stop()
        rows = [r.row() for r in results]
        if rows:
            print_table(rows)
        if args.json is not None and rows:
            args.json.write_text(
                json.dumps({"load_average": os.getloadavg(), "results": rows}, indent=1) + "\n"
            )
        if keep:
            sys.stderr.write(f"logs kept in {tmp}\n")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
