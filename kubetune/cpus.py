"""How many CPUs this process may keep busy: its affinity mask, capped by its cgroup's CPU quota.

A pod with `resources.limits.cpu: 2` on a 64-core node sees 64 CPUs in `os.cpu_count()` (and torch's and OpenMP's
defaults follow it), but the kernel throttles it to two CPUs' worth of time per period: 64 threads then spend most
of a step waiting at barriers for descheduled peers. The quota is read from cgroup v2 (`cpu.max`) or v1
(`cpu.cfs_quota_us` / `cpu.cfs_period_us`) of the process's own cgroup, which a container sees at the root.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPUs' worth of time per period the cgroup may use, or None when unlimited or unknown."""
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")
        if quota.strip() != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on, at most its cgroup quota rounded up; at least 1."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(root)
    return max(1, min(available, math.ceil(quota)) if quota else available)
