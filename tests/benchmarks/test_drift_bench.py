"""``python -m benchmarks.drift`` runs: both batch sizes print a row of finite positive microseconds (the
README cites it; a change of the monitor's interface once broke it unnoticed). No timing is asserted."""

from __future__ import annotations

import math
import subprocess
import sys

from benchmarks.harness import ROOT


def test_every_column_is_measured() -> None:
    argv = [sys.executable, "-m", "benchmarks.drift", "--repeat", "5"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] in ("1", "64"):
            rows[fields[0]] = [float(v) for v in fields[1:]]
    assert set(rows) == {"1", "64"}, result.stdout
    for values in rows.values():
        assert len(values) == 7 and all(math.isfinite(v) and v > 0 for v in values), result.stdout
