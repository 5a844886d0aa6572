"""``service.cpus``: CPUs allowed by affinity and by a cgroup quota, on fake cgroup trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service import cpus


def test_no_quota_means_the_affinity_mask(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_quota(tmp_path) is None
    assert cpus.available_cpus(tmp_path) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("text", "quota"), [("200000 100000", 2.0), ("150000 100000", 1.5), ("50000 100000", 0.5)]
)
def test_cgroup_v2_quota(tmp_path: Path, text: str, quota: float) -> None:
    (tmp_path / "cpu.max").write_text(text + "\n")
    assert cpus.cgroup_quota(tmp_path) == quota


def test_a_quota_below_the_mask_wins_rounded_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpus.available_cpus(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("20000 100000\n")
    assert cpus.available_cpus(tmp_path) == 1


def test_the_mask_below_the_quota_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    (tmp_path / "cpu.max").write_text("800000 100000\n")
    assert cpus.available_cpus(tmp_path) == 3


def test_cgroup_v1_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.available_cpus(tmp_path) == 3
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no quota"
    assert cpus.available_cpus(tmp_path) == 8


def test_unreadable_tree_falls_back_to_the_mask(tmp_path: Path) -> None:
    assert cpus.available_cpus(tmp_path / "missing") == len(os.sched_getaffinity(0))
