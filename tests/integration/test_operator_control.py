"""Controlling a run while it goes: suspend and resume, spec edits (GitOps), an operator restart mid-stage, Kueue.
Real kopf against the Kubernetes emulator; the stage Jobs run as local processes; SeaweedFS is the store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.types import STAGES
from tests.fixtures.s3 import S3Server
from tests.integration.operator_harness import Obj, OperatorBed, eventually, operator_bed
from tests.kube.emulator import KubeEmulator

RUN_STAGES = tuple(s for s in STAGES if s != "publish")  # the runs here publish nothing (spec.publish is empty)

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.kube"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# About 8 s of "training", in steps the job checkpoints on SIGTERM.
SLOW_TRAIN = {"TINY_STEPS": "80", "TINY_STEP_SECONDS": "0.1"}


@pytest.fixture
def bed(kube: KubeEmulator, tmp_path: Path, s3_bucket: str, s3_server: S3Server) -> Iterator[OperatorBed]:
    with operator_bed(kube, tmp_path / "executor", s3_bucket, s3_server.endpoint) as bed:
        yield bed


def _stage_jobs(bed: OperatorBed, run: str, stage: str) -> list[Obj]:
    return [job for job in bed.jobs(run) if job["metadata"]["labels"]["kubetune.dev/stage"] == stage]


def _train_step(run: Obj) -> int:
    return int(((run.get("status") or {}).get("progress") or {}).get("step") or 0)


def _training_started(run: Obj) -> bool:
    status = run.get("status") or {}
    return status.get("currentStage") == "train" and status.get("phase") == "Running" and _train_step(run) >= 2


def test_suspend_stops_the_running_stage_with_a_checkpoint_and_resume_continues_it(bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("pausable", placeholders=SLOW_TRAIN)
        bed.wait_run("pausable", _training_started)
        bed.edit_spec("pausable", lambda spec: spec.update(suspend=True))
        suspended = bed.wait_phase("pausable", "Suspended", timeout=30)
        [train_job] = _stage_jobs(bed, "pausable", "train")
        bed.kube.wait_for("jobs", train_job["metadata"]["name"], lambda job: any(
            c["type"] == "Suspended" and c["status"] == "True" for c in (job or {}).get("status", {}).get(
                "conditions", [])), timeout=30)
        assert suspended["status"]["stages"]["train"]["phase"] == "Suspended"
        assert suspended["status"]["conditions"][1]["type"] == "Progressing"
        assert suspended["status"]["conditions"][1]["status"] == "False"

        eventually(lambda: bed.executor.attempts(train_job["metadata"]["name"])[-1].exit_code is not None)
        stopped = bed.executor.attempts(train_job["metadata"]["name"])[-1]
        assert stopped.reason == "Suspended" and stopped.exit_code == 143  # the job saved and exited on SIGTERM
        prefix = train_job["metadata"]["annotations"]["kubetune.dev/prefix"]
        saved = json.loads(bed.store().get_bytes(f"{prefix}/checkpoints/state.json"))["step"]
        assert 2 <= saved < 80

        bed.edit_spec("pausable", lambda spec: spec.update(suspend=False))
        done = bed.wait_phase("pausable", "Succeeded", timeout=90)

    assert [job["metadata"]["name"] for job in _stage_jobs(bed, "pausable", "train")] == [
        train_job["metadata"]["name"]]  # resumed, not replaced
    runs = bed.executor.attempts(train_job["metadata"]["name"])
    assert [a.reason for a in runs] == ["Suspended", "Completed"]
    assert done["status"]["stages"]["train"]["attempts"] == 1
    reasons = [event["reason"] for event in bed.events("pausable")]
    assert {"JobSuspended", "JobResumed", "Suspended"} <= set(reasons)


def test_a_spec_edit_reruns_only_the_stages_whose_inputs_changed(bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("edited")
        first = bed.wait_phase("edited", "Succeeded", timeout=90)
        bed.edit_spec("edited", lambda spec: spec["export"].update(types=["q8_0", "bf16"]))
        second = bed.wait_run("edited", lambda run: run["status"].get("observedGeneration") == 2
                              and run["status"]["phase"] == "Succeeded", timeout=90)

    before, after = first["status"]["stages"], second["status"]["stages"]
    for stage in ("dataset", "train", "merge"):
        assert after[stage] == before[stage], stage
    for stage in ("convert", "evaluate"):
        assert after[stage]["inputKey"] != before[stage]["inputKey"]
        assert after[stage]["jobName"] != before[stage]["jobName"]
    assert sorted(a["name"] for a in second["status"]["artifacts"]) == [
        "model-bf16.gguf", "model-q8_0.gguf", "report.json"]
    assert sorted(len(_stage_jobs(bed, "edited", stage)) for stage in RUN_STAGES) == [1, 1, 1, 2, 2]


def test_an_edit_while_a_stage_runs_is_applied_after_it_never_two_jobs_for_one_stage(bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("busy", placeholders={"TINY_STEPS": "30", "TINY_STEP_SECONDS": "0.1"})
        bed.wait_run("busy", _training_started)
        bed.edit_spec("busy", lambda spec: spec["training"].update(learningRate=1e-4))
        waiting = bed.wait_run("busy", lambda run: run["status"].get("observedGeneration") == 2, timeout=30)
        assert len(_stage_jobs(bed, "busy", "train")) == 1
        assert "previous spec" in waiting["status"]["stages"]["train"]["message"]
        done = bed.wait_run("busy", lambda run: run["status"].get("observedGeneration") == 2
                            and run["status"]["phase"] == "Succeeded", timeout=90)

    old, new = sorted(_stage_jobs(bed, "busy", "train"), key=lambda job: job["metadata"]["creationTimestamp"])
    assert _time(new["metadata"]["creationTimestamp"]) >= _time(old["status"]["completionTime"])
    assert done["status"]["stages"]["train"]["jobName"] == new["metadata"]["name"]
    assert len(_stage_jobs(bed, "busy", "dataset")) == 1


def test_an_operator_restarted_mid_stage_creates_no_duplicate_job_and_the_run_completes(bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("survivor", placeholders={"TINY_STEPS": "40", "TINY_STEP_SECONDS": "0.1"})
        bed.wait_run("survivor", _training_started)
    # The operator is gone (its in-memory state with it) while the train Job keeps running.
    during = _train_step(bed.kube.get("ftr", "survivor"))
    with bed.operator():
        done = bed.wait_phase("survivor", "Succeeded", timeout=90)

    assert _train_step(done) == 40 > during
    for stage in RUN_STAGES:
        jobs = _stage_jobs(bed, "survivor", stage)
        assert len(jobs) == 1, stage
        assert len(bed.executor.attempts(jobs[0]["metadata"]["name"])) == 1, stage
        assert done["status"]["stages"][stage]["attempts"] == 1


def test_with_a_kueue_queue_jobs_are_created_suspended_and_the_run_is_queued_until_admitted(bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("queued", resources={"defaults": {"queueName": "cpu-queue"}})
        queued = bed.wait_phase("queued", "Queued", timeout=30)
        [sources] = bed.jobs("queued")  # resolving the sources comes first, through the run's queue like every Job
        assert sources["metadata"]["labels"]["kubetune.dev/stage"] == "sources"
        assert sources["spec"]["suspend"] is True and queued["status"]["sources"]["phase"] == "Queued"
        bed.kube.patch("jobs", sources["metadata"]["name"], {"spec": {"suspend": False}})
        queued = bed.wait_run("queued", lambda run: run["status"]["stages"]["dataset"]["phase"] == "Queued", timeout=30)
        [job] = [j for j in bed.jobs("queued") if j["metadata"]["labels"]["kubetune.dev/stage"] == "dataset"]
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "cpu-queue"
        assert queued["status"]["progressText"] == "dataset queued"
        admitted = 0
        while admitted < len(RUN_STAGES):  # play Kueue: admit each stage's Job as it is queued
            pending = [j for j in bed.jobs("queued") if j["spec"]["suspend"]]
            for waiting in pending:
                bed.kube.patch("jobs", waiting["metadata"]["name"], {"spec": {"suspend": False}})
                admitted += 1
            if admitted < len(RUN_STAGES):
                eventually(lambda: any(j["spec"]["suspend"] for j in bed.jobs("queued")), what="the next queued Job")
        done = bed.wait_phase("queued", "Succeeded", timeout=60)
    reasons = [event["reason"] for event in bed.events("queued")]
    assert reasons.count("StageQueued") == len(RUN_STAGES)
    assert done["status"]["phase"] == "Succeeded"


def _time(stamp: Any) -> datetime:
    return datetime.fromisoformat(str(stamp))


def test_api_errors_and_broken_watches_delay_the_run_but_never_duplicate_a_job(bed: OperatorBed) -> None:
    faults = bed.kube.faults
    # A first Job creation and a first status write that surely fail, whatever the random draws of the rules after them
    # make of however many requests the operator happens to send.
    faults.inject("server_error", times=1, verbs={"create"}, resources={"jobs"})
    faults.inject("throttle", times=1, verbs={"patch"}, resources={"finetuneruns/status"})
    faults.inject("server_error", probability=0.3, verbs={"create"}, resources={"jobs", "configmaps"})
    faults.inject("throttle", probability=0.2, verbs={"patch", "list"}, resources={"finetuneruns", "jobs"})
    faults.inject("watch_drop", probability=0.3, after_seconds=0.5)
    with bed.operator():
        bed.create_run("bumpy")
        done = bed.wait_phase("bumpy", "Succeeded", timeout=120)
    injected = faults.injected_counts()
    assert any(kind == "server_error" for kind, _, _ in injected), injected
    assert any(kind == "throttle" for kind, _, _ in injected), injected
    for stage in RUN_STAGES:
        assert len(_stage_jobs(bed, "bumpy", stage)) == 1, stage
        assert done["status"]["stages"][stage]["phase"] == "Succeeded"
