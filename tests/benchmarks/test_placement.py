"""``python -m benchmarks.placement``: finds the workers, refuses clearly without wrk, and measures with it.

The measuring run needs wrk (the load generator the peers bench uses); without it that case is skipped, and the
refusal is tested instead. No timing is asserted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.harness import MODELS, ROOT, LiveServer
from benchmarks.placement import _workers

pytestmark = pytest.mark.slow


def test_without_wrk_it_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python")  # a PATH with python and no wrk
    result = subprocess.run(
        [str(bin_dir / "python"), "-m", "benchmarks.placement", "--runs", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": str(bin_dir)},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "benchmarks.placement: needs wrk (Debian: apt-get install wrk)"
    ]


def test_it_finds_each_worker_process_and_nothing_else() -> None:
    srv = LiveServer("--model-repository", str(MODELS), "--workers", "2", "--log-level", "warning")
    try:
        srv.wait_ready()
        deadline = time.monotonic() + 30
        while len(workers := _workers(srv)) < 2 and time.monotonic() < deadline:  # the second may still start
            time.sleep(0.1)
        assert len(workers) == 2 and srv.proc.pid not in workers
        for pid in workers:
            assert b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    finally:
        srv.stop()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (the refusal is tested above)")
def test_a_short_run_prints_a_row_per_run_and_the_grouped_p99() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.placement", "--runs", "2", "--seconds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if re.match(r"\s+\d+\s", line)]
    assert len(rows) == 2
    for row in rows:
        rps, p50, p99 = (float(v.replace(",", "")) for v in row.split()[1:4])
        assert rps > 0 and 0 < p50 <= p99
    assert re.search(
        r"# wrk's threads mostly on (one CPU|different CPUs): \d runs, p99 median", result.stdout
    )
