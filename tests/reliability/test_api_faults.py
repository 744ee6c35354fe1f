"""About one request in ten to the Kubernetes API fails — 409 Conflict, 429 with Retry-After, 500, watch streams
answering 410 Gone or cut mid-stream — and every FineTuneRun still converges to Succeeded, with no duplicate Job.

The operator is `python -m kubetune.operator` in a subprocess; a fault-free batch of runs measured first, in the same
test, is the baseline for requests per run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.store import open_store
from tests.kube.emulator import KubeEmulator
from tests.kube.executor import JobExecutor
from tests.kube.faults import FaultPlan
from tests.reliability.bed import (
    INSTANT_COMMAND,
    JOBS_PER_RUN,
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

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

RUNS = 20
SEED = 7
UPDATES = {"patch", "update", "delete"}
READS_AND_CREATES = {"get", "list", "create"}


def inject_ten_percent(faults: FaultPlan) -> None:
    """About 10% of every kind of request fails; each verb gets the faults a real server gives it."""
    faults.reseed(SEED)
    # Rules are tried in order and the first that draws true strikes: 0.034 + 0.966·0.034 + … ≈ 10% per request.
    faults.inject("conflict", probability=0.034, verbs=UPDATES)
    faults.inject("throttle", probability=0.035, verbs=UPDATES | READS_AND_CREATES, retry_after=1)
    faults.inject("server_error", probability=0.036, verbs=UPDATES)
    faults.inject("server_error", probability=0.054, verbs=READS_AND_CREATES)
    # An operator holds one long watch stream per resource kind, so a 10% draw would mostly strike nothing: instead
    # the first four watch connections of the batch (the opening ones and their reconnections) break after 2 s of
    # events, two by 410 Gone and two cut mid-stream.
    faults.inject("watch_gone", times=2, after_seconds=2.0)
    faults.inject("watch_drop", times=2, after_seconds=2.0)


def run_batch(kube: KubeEmulator, operator: OperatorProcess, store_uri: str,
              prefix: str) -> tuple[list[dict[str, object]], Counter[str]]:
    """A fresh operator (so its watches are opened under the current faults) drives RUNS new runs to Succeeded;
    returns them and the API requests made meanwhile, by verb."""
    kube.faults.reset_counters()
    operator.start()
    names = [f"{prefix}-{i:02d}" for i in range(RUNS)]
    for name in names:
        kube.create(run_manifest(name, {"uri": store_uri}))
    try:
        runs = wait_all(kube, names, succeeded, timeout=180)
    except TimeoutError as error:
        raise AssertionError(f"{error}\noperator log:\n{operator.log_tail()}") from None
    operator.stop()
    by_verb: Counter[str] = Counter()
    for (verb, _), count in kube.faults.request_counts().items():
        by_verb[verb] += count
    return runs, by_verb


@pytest.fixture
def operator(kube: KubeEmulator, kubeconfig: Path, tmp_path: Path) -> Iterator[OperatorProcess]:
    install_crd(kube)
    process = OperatorProcess(operator_environment(kubeconfig, INSTANT_COMMAND), tmp_path / "operator.log")
    yield process
    process.stop()


def test_every_run_converges_when_a_tenth_of_api_requests_fail(
    kube: KubeEmulator, operator: OperatorProcess, tmp_path: Path
) -> None:
    store_uri = (tmp_path / "store").as_uri()
    with JobExecutor(kube, tmp_path / "executor"):
        baseline_runs, baseline = run_batch(kube, operator, store_uri, "calm")
        inject_ten_percent(kube.faults)
        faulted_runs, faulted = run_batch(kube, operator, store_uri, "bumpy")
        injected = kube.faults.injected_counts()
        kube.faults.clear()
        jobs = stage_jobs(kube)

    by_kind: Counter[str] = Counter()
    for (kind, _, _), count in injected.items():
        by_kind[kind] += count
    watches = faulted["watch"]
    broken = by_kind["watch_gone"] + by_kind["watch_drop"]
    total, failed = sum(faulted.values()) - watches, sum(by_kind.values()) - broken
    retried = operator.log_path.read_text(errors="replace").count("failed, the timer tries again")
    print(f"\n[api-faults] {RUNS} runs per batch; API requests per run: {sum(baseline.values()) / RUNS:.1f} without "
          f"faults, {sum(faulted.values()) / RUNS:.1f} with faults ({sum(faulted.values()) / sum(baseline.values()):.2f}x);"
          f" {failed} of {total} non-watch requests failed ({failed / total:.1%}), {broken} of {watches} watch "
          f"connections broken; injected {dict(by_kind)}; reconciles failed and retried by the timer {retried}; "
          f"requests by verb with faults {dict(faulted)}")
    assert {"conflict", "throttle", "server_error"} <= set(by_kind), by_kind
    assert by_kind["watch_gone"] == by_kind["watch_drop"] == 2, by_kind
    assert 0.06 <= failed / total <= 0.14
    assert duplicate_jobs(jobs) == {}
    assert len(jobs) == 2 * RUNS * JOBS_PER_RUN
    store = open_store(store_uri)
    assert [p for run in [*baseline_runs, *faulted_runs] for p in output_problems(store, run, jobs)] == []
