"""The reconcile timer (operator/timer.py) against the emulator, driven by hand, with a train stage that stays
Running (the Job executor is stopped once the dataset Job completed): a tick with nothing new since the run's last
reconcile reads the store's progress.json and nothing else, no API request and no reconcile; new progress, or a Job
that changed, gets a reconcile that mirrors it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import kubernetes
import pytest

from kubetune.operator.kube import KubeApi
from kubetune.operator.metrics import Metrics
from kubetune.operator.reconcile import Reconciler
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.timer import RunTimer
from kubetune.store import open_store
from tests.integration.test_operator_cached_reads import KEY, completed
from tests.kube.emulator import KubeEmulator
from tests.kube.executor import JobExecutor
from tests.reliability.bed import INSTANT_COMMAND, PREFIX_ANNOTATION, RUN_LABEL, STAGE_LABEL, install_crd, run_manifest

pytestmark = pytest.mark.integration


def reconciles(operator: Reconciler) -> float:
    return operator.metrics.registry.get_sample_value("kubetune_reconciles_total", {"outcome": "ok"}) or 0.0


def train_job(kube: KubeEmulator) -> dict[str, object]:
    [job] = [job for job in kube.list("jobs", "default", f"{RUN_LABEL}=demo")
             if job["metadata"]["labels"][STAGE_LABEL] == "train"]
    return job


def test_a_tick_with_nothing_new_makes_no_request_and_new_progress_is_mirrored(
        kube: KubeEmulator, tmp_path: Path) -> None:
    install_crd(kube)
    store_uri = (tmp_path / "store").as_uri()
    kube.create(run_manifest("demo", {"uri": store_uri}))
    settings = OperatorSettings(job_image="kubetune-job:test", job_command=INSTANT_COMMAND)
    operator = Reconciler(settings, KubeApi(kubernetes.client.Configuration(host=kube.url)), Metrics())
    timer = RunTimer(operator, settings.reconcile_interval)

    async def scenario() -> None:
        await operator.request(*KEY)  # the sources Job first
        operator.cache.observe_job("MODIFIED", await completed(kube, "sources"))
        await operator.request(*KEY, urgent=True)  # then the dataset Job
        operator.cache.observe_job("MODIFIED", await completed(kube, "dataset"))
        executor.stop()  # the train Job stays Running
        await operator.request(*KEY, urgent=True)  # creates the train Job and writes the status: train Running
        # Its pod is up, as the stopped executor would have made it: a train stage in progress, nothing to look into.
        operator.cache.observe_job("MODIFIED", kube.patch_status(
            "jobs.batch", str(train_job(kube)["metadata"]["name"]), {"active": 1, "ready": 1}))  # type: ignore[index]
        await operator.request(*KEY)  # the same inputs again: changes nothing
        timer.observe("MODIFIED", kube.get("finetuneruns", "demo"))
        assert timer.due() == [KEY]  # a running train stage is looked at every tick

        await operator.events.drain(timeout=10)  # the Events of the passes above, posted in the background
        kube.faults.reset_counters()
        before = reconciles(operator)
        await timer.tick(*KEY)
        assert kube.faults.request_counts() == {} and reconciles(operator) == before

        progress = {"stage": "train", "phase": "Running", "step": 2, "totalSteps": 10, "loss": 1.5}
        prefix = train_job(kube)["metadata"]["annotations"][PREFIX_ANNOTATION]  # type: ignore[index]
        open_store(store_uri).put_bytes(f"{prefix}/progress.json", json.dumps(progress).encode())
        await timer.tick(*KEY)
        assert reconciles(operator) == before + 1
        counts = kube.faults.request_counts()
        assert counts[("patch", "finetuneruns/status")] == 1 and counts[("get", "finetuneruns")] == 0
        assert kube.get("finetuneruns", "demo")["status"]["progress"]["step"] == 2

        await operator.request(*KEY)  # the next pass finds nothing new: the ticks after it are quiet again
        assert await operator.unchanged_since_last_pass(*KEY)
        job = train_job(kube)
        job["metadata"]["resourceVersion"] = str(int(job["metadata"]["resourceVersion"]) + 1000)  # type: ignore[index]
        operator.cache.observe_job("MODIFIED", job)  # e.g. its pod started: the status shows its start time
        assert not await operator.unchanged_since_last_pass(*KEY)
        await operator.kube.close()

    with JobExecutor(kube, tmp_path / "executor") as executor:
        asyncio.run(scenario())
