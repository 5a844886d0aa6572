"""The load harness (``python -m benchmarks.load``) on a tiny budget: a real server, every kind of request, each status right."""

from __future__ import annotations

import re
import subprocess
import sys

from benchmarks.harness import ROOT


def test_mixed_valid_and_invalid_load_gets_only_expected_statuses():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--requests",
            "600",
            "--warmup",
            "100",
            "--checkpoints",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "unexpected statuses: 0" in r.stdout and "server alive at the end: True" in r.stdout
    rows = re.findall(r"^(\S.*?)\s+(\d{3})\s+(\d+)\s+(\d+)$", r.stdout, flags=re.M)
    statuses = {int(status) for _, status, _, _ in rows}
    assert statuses == {200, 400, 401, 404, 413}  # every kind of answer was exercised
    assert sum(int(sent) for _, _, sent, _ in rows) == 600
