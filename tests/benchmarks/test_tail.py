"""``python -m benchmarks.tail``: reads the server's own durations from its access log, refuses clearly without
wrk or with a tree that is not a checkout, and measures with wrk when it is there. No timing is asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import ROOT
from benchmarks.tail import percentile, server_durations


def test_the_durations_are_the_access_lines_only() -> None:
    access = {
        "logger": "bnserve.access",
        "message": "POST /v2/models/digits/infer 200 0.42ms",
        "duration_ms": 0.42,
    }
    lines = [
        json.dumps(access),
        json.dumps({"logger": "bnserve", "message": "loaded digits/1"}),
        "INFO:     Started server process [12]",
        json.dumps({**access, "duration_ms": 1.5}),
        '{"logger": "bnserve.access", "truncated',
    ]
    assert server_durations(lines) == [0.42, 1.5]


def test_percentiles_are_by_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.99) == 100.0
    assert percentile(list(reversed(values)), 0.9) == 91.0
    assert percentile([3.0], 0.99) == 3.0


def run_tail(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.tail", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_without_wrk_it_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    result = run_tail("--pairs", "1", env={**os.environ, "PATH": str(tmp_path)})  # no wrk on this PATH
    assert (result.returncode, result.stderr.strip()) == (
        2,
        "benchmarks.tail: needs wrk (Debian: apt-get install wrk)",
    )


def test_a_tree_that_is_not_a_checkout_is_refused(tmp_path: Path) -> None:
    result = run_tail("--a-tree", str(tmp_path))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"benchmarks.tail: {tmp_path} is not a bnserve checkout (no service/__main__.py)"
    )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk; the refusal without it is tested above")
def test_one_pair_prints_both_setups_with_the_servers_own_percentiles() -> None:
    result = run_tail("--pairs", "1", "--seconds", "1", "--a", "--drift-enabled false", "--a-tree", str(ROOT))
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if not line.startswith("#")]
    assert [row[:2] for row in rows] == [["1", "A"], ["1", "B"]]
    for row in rows:
        rps, wrk_p50, wrk_p99, p50, p90, p99, worst = (float(v.replace(",", "")) for v in row[2:])
        assert rps > 0
        assert wrk_p50 <= wrk_p99 and p50 <= p90 <= p99 <= worst
    assert "# A: python -m service --drift-enabled false from" in result.stdout
