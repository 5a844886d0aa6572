"""The hot-swap benchmark (``python -m benchmarks.swap``) on a tiny budget: two swaps, no failed request."""

from __future__ import annotations

import re
import subprocess
import sys

from benchmarks.harness import ROOT


def test_two_swaps_under_load_fail_no_request():
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.swap", "--swaps", "2", "--every", "1.5", "--connections", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert re.search(r"^\d+ requests, 0 failed; 2 swaps", r.stdout, re.M), r.stdout
    latencies = re.search(r"swap latency .*, ms: (\d+), (\d+)$", r.stdout, re.M)
    assert latencies is not None, r.stdout  # both versions went live ("never" otherwise)
