"""The one live-server helper of the tests and the benchmarks: a server subprocess on a free 127.0.0.1 port.

``LiveServer()`` starts ``python -m service`` (or any command given, such as the benchmarks' no-op app) from
the repository root, in its own process group so that stopping it stops its workers too, without the
caller's ``BNSERVE_*`` variables. Its output (stdout and stderr together) is read by a thread, line by line.
Every wait is bounded: readiness, a log line, the exit.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
HOST = "127.0.0.1"


def free_port(host: str = HOST, other_than: int | None = None) -> int:
    """A TCP port nothing listens on right now (the kernel's pick), never ``other_than``: the kernel may hand
    the same free port out twice in a row, and a server given it for HTTP and gRPC refuses to start."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port != other_than:
            return port
    raise RuntimeError(f"no free port other than {other_than}")


class LiveServer:
    """A server subprocess on ``127.0.0.1:<port>``: by default ``python -m service --host --port *args``.

    ``command`` replaces the whole command line (then pass the ``port`` it listens on); ``env`` adds variables;
    ``cpus`` pins the process (and its children) to those CPUs; ``cwd`` runs it from another directory (another
    checkout's ``python -m service``).
    """

    def __init__(
        self,
        *args: str,
        command: Sequence[str] | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
        name: str = "service",
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.port = port if port is not None else free_port()
        #: The gRPC port of ``python -m service``: a free one unless ``args`` choose (``--grpc-port 0``: off),
        #: never the default 8001, which servers started side by side would fight over.
        self.grpc_port = (
            free_port(other_than=self.port)
            if "--grpc-port" not in args
            else int(args[list(args).index("--grpc-port") + 1])
        )
        grpc = () if "--grpc-port" in args else ("--grpc-port", str(self.grpc_port))
        argv = command or [
            sys.executable, "-m", "service", "--host", HOST, "--port", str(self.port), *grpc, *args
        ]  # fmt: skip
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BNSERVE_")}
        clean.setdefault("OPENBLAS_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd or ROOT,
            env={**clean, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: stop() reaches every worker
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []  # the lines wait_for_line has gone through
        self._tail: collections.deque[str] = collections.deque(maxlen=60)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self._tail.append(line)
            self.lines.put(line)

    def output(self) -> str:
        """The last lines the server wrote (for error messages)."""
        return "\n".join(self._tail)

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def wait_for_line(self, phrase: str, timeout: float = 20.0) -> str:
        """The next output line containing ``phrase``; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if phrase in line:
                return line
        raise AssertionError(f"no line with {phrase!r} within {timeout}s; saw {self.seen[-20:]}")

    def received(self) -> list[str]:
        """Every line received so far that no wait has consumed (they move to ``seen``)."""
        new = []
        while True:
            try:
                new.append(self.lines.get_nowait())
            except queue.Empty:
                break
        self.seen.extend(new)
        return new

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll ``/v2/health/ready`` until it answers 200; AssertionError if the server exits or is too slow."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url("/v2/health/ready"), timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready within {timeout}s:\n{self.output()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of every process in the server's process group (workers included)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == self.proc.pid:  # field 5, pgrp: the group its session started
                total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM to the process group, SIGKILL after ``timeout`` seconds; the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        return int(self.proc.returncode)

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
