"""``python -m benchmarks.request_profile`` runs on the committed model and reports every step, each a positive
finite number of microseconds, the whole call costing more than any of its parts. No timing is asserted."""

from __future__ import annotations

import math
import re
import subprocess
import sys

from benchmarks.harness import ROOT

STEPS = ("wire path", "asgi path", "asgi", "fast path", "offload.infer", "data plane, sync", "decode", "session.run", "encode",
         "metrics.observe", "access.record", "access.flush/line")  # fmt: skip


def test_every_step_is_measured() -> None:
    argv = [
        sys.executable,
        "-m",
        "benchmarks.request_profile",
        "--calls",
        "20",
        "--rounds",
        "1",
        "--batch",
        "2",
    ]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = dict(re.findall(r"^\s*([a-z. ,/]+): +([\d.]+) us$", result.stdout, re.MULTILINE))
    assert set(figures) == set(STEPS), result.stdout
    us = {name: float(value) for name, value in figures.items()}
    assert all(math.isfinite(v) and v > 0 for v in us.values()), us
    assert us["asgi"] > us["session.run"] and us["data plane, sync"] > us["decode"], us
    assert "POST /v2/models" not in result.stdout + result.stderr  # the access lines go nowhere
