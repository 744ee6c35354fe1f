"""The operator SIGKILLed at random (seeded) moments and restarted while it drives many FineTuneRuns: no Job is ever
created twice for one stage and input key, no run is lost, every run ends Succeeded with outputs that verify.

`python -m kubetune.operator` runs as a real subprocess against the Kubernetes emulator (KUBECONFIG), the Job
executor runs the stage Jobs as local processes. 100 runs use the instant stage program (tests/reliability/
instant_stage.py, the job contract on a file:// store); tests/reliability/test_real_stages.py covers real stages.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.store import open_store
from tests.kube.emulator import KubeEmulator
from tests.kube.executor import JobExecutor
from tests.reliability.bed import (
    INSTANT_COMMAND,
    JOBS_PER_RUN,
    KillSchedule,
    OperatorProcess,
    duplicate_jobs,
    install_crd,
    operator_environment,
    output_problems,
    run_manifest,
    stage_jobs,
    succeeded,
    wait_all,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

RUNS = 100
SEED = 20251125
MAX_KILLS = 12
# The runs may all finish before the schedule is through (a quiet machine is fast): at least this many kills must
# have landed by then.
MIN_KILLS = 5
KILL_AFTER_S = (0.5, 3.0)  # uptime before each SIGKILL, drawn per incarnation: during startup, mid-burst, anywhere


@pytest.fixture
def operator(kube: KubeEmulator, kubeconfig: Path, tmp_path: Path) -> Iterator[OperatorProcess]:
    install_crd(kube)
    process = OperatorProcess(operator_environment(kubeconfig, INSTANT_COMMAND), tmp_path / "operator.log")
    yield process
    process.stop()


def test_a_hundred_runs_survive_random_operator_sigkills_without_duplicate_or_lost_jobs(
    kube: KubeEmulator, operator: OperatorProcess, tmp_path: Path
) -> None:
    store_uri = (tmp_path / "store").as_uri()
    names = [f"crash-{i:03d}" for i in range(RUNS)]
    started = time.monotonic()
    with JobExecutor(kube, tmp_path / "executor") as executor:
        operator.start()
        for name in names:
            kube.create(run_manifest(name, {"uri": store_uri}))
        schedule = KillSchedule(kube, operator, random.Random(SEED), MAX_KILLS, KILL_AFTER_S)
        try:
            runs = wait_all(kube, names, succeeded, timeout=300, while_waiting=schedule)
        except TimeoutError as error:
            raise AssertionError(f"{error}\noperator log:\n{operator.log_tail()}") from None
        elapsed = time.monotonic() - started
        jobs = stage_jobs(kube)
        attempts = Counter(len(executor.attempts(job["metadata"]["name"])) for job in jobs)

    store = open_store(store_uri)
    problems = [problem for run in runs for problem in output_problems(store, run, jobs)]
    print(f"\n[crash] {RUNS} runs, {operator.kills} SIGKILLs after uptimes {schedule.rounded_uptimes()} s, "
          f"stage Jobs existing at each kill {schedule.jobs_at_kill}; {len(jobs)} Jobs, pods per Job {dict(attempts)}; "
          f"all Succeeded in {elapsed:.0f} s")
    assert MIN_KILLS <= operator.kills <= MAX_KILLS
    assert any(0 < count < RUNS * JOBS_PER_RUN for count in schedule.jobs_at_kill), (
        "the kills must land while Jobs are created")
    assert duplicate_jobs(jobs) == {}
    assert len(jobs) == RUNS * JOBS_PER_RUN
    assert all(job["metadata"]["labels"]["kubetune.dev/attempt"] == "1" for job in jobs)
    assert attempts == {1: len(jobs)}  # no stage ran twice, not even inside its Job
    assert problems == []
