"""``python -m benchmarks.serve --quick`` runs end to end: both servers start, every cell answers, numbers are finite.

One protocol at a time would miss a broken payload, so all three run, at batch 1, concurrency 1, 1 s per
cell (about 15 s in all). The Python load generator is forced so the test does not depend on wrk; no timing
is asserted, only that the harness measures something and cleans up after itself.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import ROOT

pytestmark = pytest.mark.slow


def test_quick_run_measures_every_cell(tmp_path: Path) -> None:
    out = tmp_path / "cells.json"
    argv = [sys.executable, "-m", "benchmarks.serve", "--quick", "--tool", "python"]
    argv += ["--batches", "1", "--concurrency", "1", "--json", str(out), "--markdown"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# load generator: python" in result.stdout and "# load average before:" in result.stdout
    cells = json.loads(out.read_text())
    assert {(c["app"], c["protocol"]) for c in cells} == {
        (app, protocol) for app in ("noop", "service") for protocol in ("v1-json", "v2-json", "v2-binary")
    }
    for cell in cells:
        assert cell["errors"] == 0
        for key in ("requests_per_s", "rows_per_s", "p50_ms", "p90_ms", "p99_ms", "cpu_us_per_request"):
            assert math.isfinite(cell[key]) and cell[key] > 0, (key, cell)
        assert cell["p50_ms"] <= cell["p90_ms"] <= cell["p99_ms"]
    assert "| v2-json | 1 | 1 |" in result.stdout


def test_in_process_timing_is_finite() -> None:
    argv = [sys.executable, "-m", "benchmarks.serve", "--in-process", "--quick"]
    argv += ["--protocols", "v2-json", "--batches", "1"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    numbers = [float(v) for v in re.findall(r"(\d+(?:\.\d+)?) us", result.stdout)]
    assert len(numbers) == 3 and all(math.isfinite(v) and v > 0 for v in numbers), result.stdout
