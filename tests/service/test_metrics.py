"""Metrics across worker processes: what a scrape says while the workers start, serve and go away.

Each "worker" is a real process with prometheus-client in multiprocess mode on a shared directory, driven
over its stdin; every read is bounded by a timeout.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from service.metrics import MULTIPROC_ENV

WORKER = """
import sys
from service.metrics import Metrics
metrics = Metrics(workers=2)
print("up", flush=True)
for command in sys.stdin:
    if command.strip() == "ready":
        metrics.ready.set(1)
    line = next(l for l in metrics.render().decode().splitlines() if l.startswith("bnserve_ready "))
    print(line, flush=True)
"""


class Worker:
    def __init__(self, directory: Path) -> None:
        env = {MULTIPROC_ENV: str(directory), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.read() == "up"

    def read(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def ask(self, command: str) -> float:
        """Send a command; the value of ``bnserve_ready`` this worker's scrape reports."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        match = re.fullmatch(r"bnserve_ready (\S+)", self.read())
        assert match is not None
        return float(match.group(1))

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=20)


def test_ready_only_once_every_configured_worker_is(tmp_path: Path) -> None:
    first = Worker(tmp_path)
    try:
        assert first.ask("ready") == 0.0  # the second worker has not even started: not ready
        second = Worker(tmp_path)
        try:
            assert first.ask("scrape") == 0.0  # started, still loading
            assert second.ask("ready") == 1.0
            assert first.ask("scrape") == 1.0  # whichever worker answers the scrape
        finally:
            second.stop()
        assert first.ask("scrape") == 0.0  # a worker went away: not every worker is ready any more
    finally:
        first.stop()
