"""How many CPUs this process may use: its affinity mask, lowered by a cgroup CPU quota (containers).

``os.cpu_count()`` counts the machine's CPUs, not the ones a container is given: a pod limited to 2 CPUs on a
64-core node would start 64 workers. The quota is read from cgroup v2 (``cpu.max``: ``"<quota> <period>"`` or
``"max <period>"``) or, failing that, cgroup v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); a fractional
quota rounds up (1.5 CPUs -> 2 workers: the second one still gets half a CPU).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs, or ``None`` when there is none (or it is unreadable)."""
    # cgroup v2: the process's own group, from /proc/self/cgroup ("0::/path"), else the root's file.
    own = _read(Path("/proc/self/cgroup")) or ""
    candidates = []
    for line in own.splitlines():
        if line.startswith("0::"):
            candidates.append(root / line[3:].lstrip("/") / "cpu.max")
    candidates.append(root / "cpu.max")
    for path in candidates:
        text = _read(path)
        if text:
            limit, _, interval = text.partition(" ")
            if limit == "max":
                return None
            try:
                return int(limit) / int(interval or "100000")
            except ValueError:
                return None
    quota_text = _read(root / "cpu" / "cpu.cfs_quota_us") or _read(root / "cpu,cpuacct" / "cpu.cfs_quota_us")
    period_text = _read(root / "cpu" / "cpu.cfs_period_us") or _read(
        root / "cpu,cpuacct" / "cpu.cfs_period_us"
    )
    if quota_text and period_text:
        try:
            quota, period = int(quota_text), int(period_text)
        except ValueError:
            return None
        if quota > 0 and period > 0:
            return quota / period
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on: the affinity mask, capped by the cgroup quota (rounded up); at least 1."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        allowed = os.cpu_count() or 1
    quota = cgroup_quota(root)
    if quota is not None and quota > 0:
        allowed = min(allowed, math.ceil(quota))
    return max(1, allowed)
