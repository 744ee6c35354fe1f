"""The operator drives a FineTuneRun through its stage Jobs: real kopf against the Kubernetes emulator, the stage
Jobs run as local processes (the tiny stage program, through the real job runtime), SeaweedFS as the store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from kubetune.api.types import STAGES
from kubetune.operator.rbac import allows
from kubetune.planner import MAX_ATTEMPTS
from kubetune.sources import SOURCES
from kubetune.store import content_digest, read_manifest
from tests.fixtures.s3 import S3Server
from tests.integration.operator_harness import OperatorBed, operator_bed
from tests.kube.emulator import KubeEmulator

RUN_STAGES = tuple(s for s in STAGES if s != "publish")  # the runs here publish nothing (spec.publish is empty)

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.kube"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

K8S_VERSION = "1.33"  # podFailurePolicy and Job suspend are GA from 1.31 on
GROUPS = {"finetuneruns": "kubetune.dev", "finetuneruns/status": "kubetune.dev", "jobs": "batch"}


@pytest.fixture
def bed(kube: KubeEmulator, tmp_path: Path, s3_bucket: str, s3_server: S3Server) -> Iterator[OperatorBed]:
    # A long timer: progress from one stage to the next must come from the Job watch, not from polling.
    with operator_bed(kube, tmp_path / "executor", s3_bucket, s3_server.endpoint, reconcile_interval=60.0) as bed:
        yield bed


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def _prefix(bed: OperatorBed, block: dict[str, Any]) -> str:
    """The stage's store prefix, from the URI of its first output."""
    first = block["outputs"][0]
    return str(first["uri"]).removeprefix(f"{bed.store_uri}/").removesuffix(f"/{first['name']}")


def _reasons(bed: OperatorBed, run: str) -> list[str]:
    return [event["reason"] for event in bed.events(run)]


def test_a_run_goes_from_created_to_succeeded_through_every_stage(bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("tiny")
        run = bed.wait_phase("tiny", "Succeeded", timeout=90)

    status = run["status"]
    assert status["observedGeneration"] == run["metadata"]["generation"]
    assert status["progressText"] == "done (5 stages)"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True", "Progressing": "False", "Failed": "False", "Stalled": "False", "StoreReachable": "True"}
    store = bed.store()
    for stage in RUN_STAGES:
        block = status["stages"][stage]
        assert block["phase"] == "Succeeded", (stage, block)
        assert block["attempts"] == 1
        assert block["jobName"] == f"tiny-{stage}-{block['inputKey'][:8]}"
        manifest = read_manifest(store, _prefix(bed, block))
        assert manifest is not None and manifest.input_key == block["inputKey"]
        assert block["outputDigest"] == content_digest(manifest)
        assert [(o["name"], o["size"], o["sha256"]) for o in block["outputs"]] == [
            (f.path, f.size, f.sha256) for f in manifest.files]
        assert _time(block["startTime"]) <= _time(block["completionTime"])
    assert sorted(a["name"] for a in status["artifacts"]) == ["model-f16.gguf", "model-q8_0.gguf", "report.json"]
    assert all(a["uri"].startswith(f"{bed.store_uri}/default/tiny/") for a in status["artifacts"])
    assert status["progress"] == {"step": 3, "totalSteps": 3, "epoch": 1.0, "loss": 0.6667,
                                  "tokensPerSecond": 100.0, "etaSeconds": 0, "percent": 100}

    reasons = _reasons(bed, "tiny")
    assert reasons.count("JobCreated") == 6  # the sources Job, then one per stage
    assert {f"Stage{phase}" for phase in ("Running", "Succeeded")} <= set(reasons)
    assert reasons.count("StageSucceeded") == 5 and reasons[-1] == "Succeeded"

    order = (SOURCES, *RUN_STAGES)  # the sources Job, then one Job per stage
    jobs = sorted(bed.jobs("tiny"), key=lambda job: order.index(job["metadata"]["labels"]["kubetune.dev/stage"]))
    assert [job["metadata"]["labels"]["kubetune.dev/stage"] for job in jobs] == list(order)
    for before, after in pairwise(jobs):
        # Driven by the Job watch (the timer is 60 s): the next Job follows its predecessor's end at once.
        gap = (_time(after["metadata"]["creationTimestamp"]) - _time(before["status"]["completionTime"]))
        assert gap.total_seconds() <= 2, (before["metadata"]["name"], after["metadata"]["name"], gap)
    metrics = bed.metrics.registry
    assert metrics.get_sample_value("kubetune_job_creations_total", {"stage": "train"}) == 1
    assert metrics.get_sample_value("kubetune_runs", {"phase": "Succeeded"}) == 1
    assert metrics.get_sample_value("kubetune_stage_duration_seconds_count", {"stage": "convert"}) == 1


def test_every_object_the_operator_creates_validates_against_the_kubernetes_schemas(bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("tiny")
        bed.wait_phase("tiny", "Succeeded", timeout=90)
    created = [*bed.jobs("tiny"),
               *bed.kube.list("configmaps", "default", label_selector="kubetune.dev/run=tiny"),
               *bed.events("tiny")]
    assert {obj["kind"] for obj in created} == {"Job", "ConfigMap", "Event"}
    for obj in created:
        assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True) == K8S_VERSION, obj["metadata"]["name"]
    for config_map in created:
        if config_map["kind"] == "ConfigMap":
            assert "testing-secret-key" not in config_map["data"]["run.json"]  # secrets stay references


def test_the_operator_only_makes_the_calls_its_rbac_rules_allow(bed: OperatorBed) -> None:
    bed.kube.faults.reset_counters()
    with bed.operator():
        bed.create_run("tiny", storage={"keepOnDelete": False})
        bed.wait_phase("tiny", "Succeeded", timeout=90)
        bed.kube.delete("ftr", "tiny")
        bed.kube.wait_for("ftr", "tiny", lambda obj: obj is None, timeout=30)
    calls = {call for call in bed.kube.faults.request_counts() if call[1] != "discovery"}
    assert ("create", "jobs") in calls and ("patch", "finetuneruns/status") in calls
    denied = [(verb, resource) for verb, resource in calls
              if not allows(verb, GROUPS.get(resource, ""), resource)]
    assert denied == []


def test_a_failing_stage_ends_the_run_failed_with_the_jobs_reason_and_earlier_outputs_stay(bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("broken", placeholders={"TINY_FAIL": "convert:config"})
        run = bed.wait_phase("broken", "Failed", timeout=90)

    status = run["status"]
    convert = status["stages"]["convert"]
    assert convert["phase"] == "Failed"
    assert convert["attempts"] == 1  # a configuration error is never retried
    assert "fail as a configuration error" in convert["message"]
    assert "fail as a configuration error" in status["message"]
    assert {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}["Failed"] == ("True", "StageFailed")
    assert status["stages"]["evaluate"]["phase"] == "Pending"
    store = bed.store()
    for stage in ("dataset", "train", "merge"):
        block = status["stages"][stage]
        assert block["phase"] == "Succeeded"
        manifest = read_manifest(store, _prefix(bed, block))
        assert manifest is not None and content_digest(manifest) == block["outputDigest"]
    failed = [e for e in bed.events("broken") if e["type"] == "Warning"]
    assert [e["reason"] for e in failed] == ["StageFailed", "Failed"]
    assert len([job for job in bed.jobs("broken") if job["metadata"]["labels"]["kubetune.dev/stage"] == "convert"]) == 1


def test_a_crashing_stage_is_retried_with_new_jobs_then_fails_the_run(bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("crashy", placeholders={"TINY_FAIL": "merge:crash"}, resources={"merge": {"backoffLimit": 0}})
        run = bed.wait_phase("crashy", "Failed", timeout=90)

    merge = run["status"]["stages"]["merge"]
    assert merge["attempts"] == MAX_ATTEMPTS
    assert "asks this stage to crash" in merge["message"]
    names = sorted(job["metadata"]["name"] for job in bed.jobs("crashy")
                   if job["metadata"]["labels"]["kubetune.dev/stage"] == "merge")
    key8 = merge["inputKey"][:8]
    assert names == sorted([f"crashy-merge-{key8}", f"crashy-merge-{key8}-2", f"crashy-merge-{key8}-3"])
    assert bed.metrics.registry.get_sample_value("kubetune_job_retries_total", {"stage": "merge"}) == 2


@pytest.mark.parametrize(("keep", "left"), [(True, True), (False, False)], ids=["kept-by-default", "keepOnDelete-false"])
def test_deleting_a_run_removes_its_jobs_and_config_maps_and_its_artifacts_only_when_asked(
    bed: OperatorBed, keep: bool, left: bool
) -> None:
    with bed.operator():
        bed.create_run("gone", storage={"keepOnDelete": keep})
        bed.wait_phase("gone", "Succeeded", timeout=90)
        bed.kube.delete("ftr", "gone")
        bed.kube.wait_for("ftr", "gone", lambda obj: obj is None, timeout=30)
    assert bed.jobs("gone") == []
    assert bed.kube.list("configmaps", "default", label_selector="kubetune.dev/run=gone") == []
    assert bool(bed.store().list("default/gone")) is left
