"""Reconciles that read the run and its Jobs from the cache (operator/cache.py), driven by hand against the emulator
with instant stage Jobs: a cache behind the API server never doubles a Job or loses a hand-off (a stage is done when
its output is published, whatever the cache says of its Job), and what the cache does not know is read for real."""

from __future__ import annotations

import asyncio
from pathlib import Path

import kubernetes
import pytest

from kubetune.operator.kube import KubeApi
from kubetune.operator.metrics import Metrics
from kubetune.operator.reconcile import Reconciler
from kubetune.operator.settings import OperatorSettings
from tests.kube.emulator import KubeEmulator
from tests.kube.executor import JobExecutor
from tests.reliability.bed import INSTANT_COMMAND, RUN_LABEL, STAGE_LABEL, install_crd, run_manifest

pytestmark = pytest.mark.integration

KEY = ("default", "demo")


def reconciler(kube: KubeEmulator) -> Reconciler:
    settings = OperatorSettings(job_image="kubetune-job:test", job_command=INSTANT_COMMAND)
    return Reconciler(settings, KubeApi(kubernetes.client.Configuration(host=kube.url)), Metrics())


def stages(kube: KubeEmulator) -> list[str]:
    return sorted(job["metadata"]["labels"][STAGE_LABEL] for job in kube.list("jobs", "default", f"{RUN_LABEL}=demo"))


async def completed(kube: KubeEmulator, stage: str) -> dict[str, object]:
    """The stage's Job once the executor has completed it."""
    for _ in range(200):
        for job in kube.list("jobs", "default", f"{RUN_LABEL}=demo"):
            conditions = (job.get("status") or {}).get("conditions") or []
            if job["metadata"]["labels"][STAGE_LABEL] == stage and any(c["type"] == "Complete" for c in conditions):
                return job
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the {stage} Job did not complete")


def reads(kube: KubeEmulator) -> int:
    counts = kube.faults.request_counts()
    return counts[("get", "finetuneruns")] + counts[("list", "jobs")]


def test_passes_after_the_first_read_come_from_memory_and_a_late_event_doubles_nothing(
        kube: KubeEmulator, tmp_path: Path) -> None:
    install_crd(kube)
    kube.create(run_manifest("demo", {"uri": (tmp_path / "store").as_uri()}))
    operator = reconciler(kube)

    async def scenario() -> None:
        await operator.request(*KEY)  # first sight: a real read, then the sources Job
        assert stages(kube) == ["sources"] and reads(kube) == 2
        await completed(kube, "sources")
        await operator.request(*KEY)  # the resolution is published: the dataset Job, with no read
        assert stages(kube) == ["dataset", "sources"] and reads(kube) == 2
        dataset = await completed(kube, "dataset")
        executor.stop()  # no later stage runs: the Jobs below stay as created
        kube.faults.reset_counters()
        # The watch has not brought the completion: the cache says Running, but the stage's output is published,
        # and the store, not the Job, says a stage is done. The hand-off needs no read of the API server.
        await operator.request(*KEY)
        assert stages(kube) == ["dataset", "sources", "train"] and reads(kube) == 0
        operator.cache.observe_job("MODIFIED", dataset)  # the late event, and the pass it requests
        await operator.request(*KEY, urgent=True)
        assert stages(kube) == ["dataset", "sources", "train"] and reads(kube) == 0
        assert kube.faults.request_counts()[("create", "jobs")] == 1
        await operator.kube.close()

    with JobExecutor(kube, tmp_path / "executor") as executor:
        asyncio.run(scenario())


def test_a_job_the_cache_missed_is_read_for_real_and_not_created_twice(kube: KubeEmulator, tmp_path: Path) -> None:
    install_crd(kube)
    kube.create(run_manifest("demo", {"uri": (tmp_path / "store").as_uri()}))

    async def scenario() -> None:
        first = reconciler(kube)
        await first.request(*KEY)
        sources = await completed(kube, "sources")
        first.cache.observe_job("MODIFIED", sources)
        await first.request(*KEY, urgent=True)
        dataset = await completed(kube, "dataset")
        executor.stop()  # no later stage runs: the Jobs below stay as created
        first.cache.observe_job("MODIFIED", dataset)
        await first.request(*KEY, urgent=True)
        assert stages(kube) == ["dataset", "sources", "train"]
        # A cache that holds the completed sources and dataset Jobs but missed the train Job (as if its events were
        # lost).
        stale = reconciler(kube)
        stale.cache.track(KEY)
        stale.cache.fill(KEY, kube.get("finetuneruns", "demo"), [sources, dataset], None)
        kube.faults.reset_counters()
        await stale.request(*KEY, urgent=True)
        counts = kube.faults.request_counts()
        assert counts[("create", "jobs")] == 1  # answered "already exists"
        assert reads(kube) == 2  # so the run was read for real in one more pass
        assert stages(kube) == ["dataset", "sources", "train"]
        view = stale.cache.view(KEY)
        assert view is not None and len(view[1]) == 3
        await first.kube.close()
        await stale.kube.close()

    with JobExecutor(kube, tmp_path / "executor") as executor:
        asyncio.run(scenario())


def test_a_run_created_while_the_operator_watches_is_reconciled_without_reading_it(
        kube: KubeEmulator, tmp_path: Path) -> None:
    install_crd(kube)
    operator = reconciler(kube)

    async def scenario() -> None:
        assert operator.run_event_matters("ADDED", kube.create(run_manifest("demo", {"uri": store_uri})))
        await operator.request(*KEY)
        assert stages(kube) == ["sources"] and reads(kube) == 0
        await operator.kube.close()

    store_uri = (tmp_path / "store").as_uri()
    with JobExecutor(kube, tmp_path / "executor"):
        asyncio.run(scenario())


def test_a_new_run_that_has_a_job_all_the_same_is_read_for_real_and_gets_no_second_one(
        kube: KubeEmulator, tmp_path: Path) -> None:
    install_crd(kube)
    store_uri = (tmp_path / "store").as_uri()
    kube.create(run_manifest("demo", {"uri": store_uri}))

    async def scenario() -> None:
        # Another operator instance (a rolling update) saw the run first and created its first Job.
        first = reconciler(kube)
        await first.request(*KEY)
        late = reconciler(kube)
        assert late.run_event_matters("ADDED", kube.get("finetuneruns", "demo"))
        kube.faults.reset_counters()
        await late.request(*KEY)
        counts = kube.faults.request_counts()
        assert counts[("create", "jobs")] == 1  # answered "already exists"
        assert reads(kube) == 2  # so the run was read for real in one more pass
        assert stages(kube) == ["sources"]
        await first.kube.close()
        await late.kube.close()

    asyncio.run(scenario())
