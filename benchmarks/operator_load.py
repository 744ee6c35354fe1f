"""Operator load: many concurrent FineTuneRuns with instant stage Jobs, against the Kubernetes emulator.

    .venv/bin/python benchmarks/operator_load.py              # 100 runs
    .venv/bin/python benchmarks/operator_load.py --runs 500   # the figure in docs/reliability.md

`python -m kubetune.operator` runs as a subprocess (KUBECONFIG → the emulator); the Job executor runs each stage Job
as the instant stage program (tests/reliability/instant_stage.py: the job contract on a file:// store, ~30 ms).
Measured, first for a small baseline batch and then for the loaded batch, on the same operator:

- hand-off latency: from a stage Job's completion (the executor's status write, seen on a watch) to the creation of
  the run's next stage Job (goal: p99 < 2 s);
- operator peak RSS and CPU (psutil, sampled every 0.2 s, on the operator process);
- Kubernetes API requests per run (the emulator's request counters).
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.* (not on sys.path)

from kubetune.api.types import STAGES
from tests.kube.emulator import KubeEmulator
from tests.kube.executor import JobExecutor
from tests.reliability.bed import (
    INSTANT_COMMAND,
    RUN_LABEL,
    STAGE_LABEL,
    OperatorProcess,
    install_crd,
    operator_environment,
    run_manifest,
    succeeded,
    wait_all,
)

GOAL_P99_S = 2.0


class JobTimeline(threading.Thread):
    """Watches Jobs and stamps, with this process's monotonic clock, when each was created and when it completed."""

    def __init__(self, kube: KubeEmulator) -> None:
        super().__init__(name="job-timeline", daemon=True)
        self.kube = kube
        self.created: dict[tuple[str, str], float] = {}  # (run, stage) -> when its Job appeared
        self.completed: dict[tuple[str, str], float] = {}
        self.stopping = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        with self.kube.watch("jobs") as events:
            self.ready.set()
            while not self.stopping.is_set():
                try:
                    event = events.get(timeout=0.2)
                except queue.Empty:
                    continue  # look at the stop flag again
                now = time.monotonic()
                labels = event.obj["metadata"].get("labels") or {}
                if RUN_LABEL not in labels:
                    continue
                key = (labels[RUN_LABEL], labels[STAGE_LABEL])
                self.created.setdefault(key, now)
                conditions = (event.obj.get("status") or {}).get("conditions") or []
                if any(c.get("type") == "Complete" and c.get("status") == "True" for c in conditions):
                    self.completed.setdefault(key, now)

    def handoffs(self, runs: list[str]) -> list[float]:
        """Seconds from each stage Job's completion to the creation of the next stage's Job."""
        return [gap for gaps in self.handoffs_by_stage(runs).values() for gap in gaps]

    def handoffs_by_stage(self, runs: list[str]) -> dict[str, list[float]]:
        """The hand-offs of each pair of stages ("dataset→train": seconds per run)."""
        gaps: dict[str, list[float]] = {f"{before}→{after}": [] for before, after in itertools.pairwise(STAGES)}
        for run in runs:
            for before, after in itertools.pairwise(STAGES):
                if (run, before) in self.completed and (run, after) in self.created:
                    gaps[f"{before}→{after}"].append(self.created[(run, after)] - self.completed[(run, before)])
        return gaps


@dataclass
class ResourceSampler:
    """Peak RSS and CPU seconds of the operator process (re-attached when the pid changes)."""

    operator: OperatorProcess
    peak_rss: int = 0
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (time, operator CPU s, bed CPU s)
    _stop: threading.Event = field(default_factory=threading.Event)

    @contextmanager
    def sampling(self) -> Iterator[None]:
        process = psutil.Process(self.operator.pid)
        thread = threading.Thread(target=self._loop, args=(process, psutil.Process()), daemon=True)
        self.samples, self.peak_rss = [], 0
        self._stop.clear()
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def _loop(self, process: psutil.Process, bed: psutil.Process) -> None:
        while not self._stop.wait(0.2):
            with process.oneshot():
                times = process.cpu_times()
                self.peak_rss = max(self.peak_rss, process.memory_info().rss)
            bed_times = bed.cpu_times()
            self.samples.append((time.monotonic(), times.user + times.system, bed_times.user + bed_times.system))

    def cpu(self) -> tuple[float, float, float]:
        """(operator CPU seconds while sampling, its mean utilisation in cores, the bed's utilisation in cores: the
        emulator, the Job executor and this script, in one Python process)."""
        if len(self.samples) < 2:
            return 0.0, 0.0, 0.0
        (t0, c0, b0), (t1, c1, b1) = self.samples[0], self.samples[-1]
        wall = max(t1 - t0, 1e-9)
        return c1 - c0, (c1 - c0) / wall, (b1 - b0) / wall


@dataclass(frozen=True)
class BatchResult:
    runs: int
    wall_s: float
    p50_s: float
    p99_s: float
    max_s: float
    requests_per_run: float
    cpu_s: float
    cpu_cores: float
    peak_rss_mib: float
    bed_cores: float


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run_batch(kube: KubeEmulator, operator: OperatorProcess, timeline: JobTimeline, store_uri: str, prefix: str,
              count: int) -> BatchResult:
    sampler = ResourceSampler(operator)
    names = [f"{prefix}-{i:04d}" for i in range(count)]
    kube.faults.reset_counters()
    started = time.monotonic()
    with sampler.sampling():
        for name in names:
            kube.create(run_manifest(name, {"uri": store_uri}))
        wait_all(kube, names, succeeded, timeout=120 + 2.0 * count, poll_s=1.0)
    wall = time.monotonic() - started
    gaps = timeline.handoffs(names)
    assert len(gaps) == count * (len(STAGES) - 1), f"{len(gaps)} hand-offs seen for {count} runs"
    print(f"[{prefix}] hand-offs p50/p99 s: " + ", ".join(
        f"{pair} {statistics.median(values):.2f}/{percentile(values, 0.99):.2f}"
        for pair, values in timeline.handoffs_by_stage(names).items()), flush=True)
    counts = kube.faults.request_counts()
    requests = sum(counts.values())
    print(f"[{prefix}] requests per run: " + ", ".join(
        f"{verb} {resource} {n / count:.1f}" for (verb, resource), n in counts.most_common()), flush=True)
    cpu_s, cores, bed_cores = sampler.cpu()
    return BatchResult(count, wall, statistics.median(gaps), percentile(gaps, 0.99), max(gaps), requests / count,
                       cpu_s, cores, sampler.peak_rss / 2**20, bed_cores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100, help="concurrent FineTuneRuns in the loaded batch")
    parser.add_argument("--baseline-runs", type=int, default=5, help="runs in the baseline batch (measured first)")
    parser.add_argument("--reconcile-interval", default="3", help="KUBETUNE_RECONCILE_INTERVAL for the operator")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="kubetune-load-") as temp, KubeEmulator() as kube:
        root = Path(temp)
        install_crd(kube)
        kubeconfig = kube.write_kubeconfig(root / "kubeconfig")
        store_uri = (root / "store").as_uri()
        env = operator_environment(kubeconfig, INSTANT_COMMAND, KUBETUNE_RECONCILE_INTERVAL=args.reconcile_interval)
        operator = OperatorProcess(env, root / "operator.log")
        timeline = JobTimeline(kube)
        timeline.start()
        timeline.ready.wait(10)
        with JobExecutor(kube, root / "executor", idle_pods=True):
            operator.start()
            try:
                baseline = run_batch(kube, operator, timeline, store_uri, "base", args.baseline_runs)
                loaded = run_batch(kube, operator, timeline, store_uri, "load", args.runs)
            except (TimeoutError, AssertionError) as error:
                print(f"failed: {error}\n{operator.log_tail()}", file=sys.stderr)
                return 1
            finally:
                operator.stop()
                timeline.stopping.set()
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'batch':<10}{'runs':>6}{'wall s':>9}{'p50 s':>8}{'p99 s':>8}{'max s':>8}{'req/run':>9}"
          f"{'op CPU s':>10}{'op cores':>10}{'op RSS MiB':>12}{'bed cores':>11}")
    for label, result in (("baseline", baseline), ("loaded", loaded)):
        print(f"{label:<10}{result.runs:>6}{result.wall_s:>9.1f}{result.p50_s:>8.3f}{result.p99_s:>8.3f}"
              f"{result.max_s:>8.3f}{result.requests_per_run:>9.1f}{result.cpu_s:>10.1f}{result.cpu_cores:>10.2f}"
              f"{result.peak_rss_mib:>12.1f}{result.bed_cores:>11.2f}")
    print(f"loaded/baseline: p50 {loaded.p50_s / baseline.p50_s:.2f}x, p99 {loaded.p99_s / baseline.p99_s:.2f}x, "
          f"requests per run {loaded.requests_per_run / baseline.requests_per_run:.2f}x, operator CPU seconds per "
          f"run {(loaded.cpu_s / loaded.runs) / max(baseline.cpu_s / baseline.runs, 1e-9):.2f}x")
    print(f"hand-off p99 {loaded.p99_s:.3f} s vs goal {GOAL_P99_S} s: {loaded.p99_s / GOAL_P99_S:.2f}x of the goal "
          f"({'met' if loaded.p99_s < GOAL_P99_S else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
