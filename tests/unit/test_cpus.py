"""A process keeps busy as many CPUs as it may run on, capped by its cgroup's CPU quota (a pod's CPU limit)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubetune.cpus import cgroup_cpu_quota, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "files, quota",
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu.max": "garbage\n"}, None),
        ({}, None),
    ],
    ids=["v2-unlimited", "v2-two", "v2-one-and-a-half", "v1-unlimited", "v1-half", "v2-unreadable", "no-cgroup"],
)
def test_the_cgroup_quota_is_read_from_v2_or_v1(tmp_path: Path, files: dict[str, str], quota: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == quota


def test_usable_cpus_round_the_quota_up_and_never_exceed_the_affinity_mask(tmp_path: Path) -> None:
    assert usable_cpus(tmp_path) == AFFINITY  # no quota
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert usable_cpus(tmp_path) == 1  # half a CPU still runs one thread
    (tmp_path / "cpu.max").write_text(f"{(AFFINITY + 8) * 100000} 100000\n")
    assert usable_cpus(tmp_path) == AFFINITY
