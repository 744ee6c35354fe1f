"""Every state in which a run cannot move on by itself shows on the run: a store that cannot be read, stage pods that
cannot be created or scheduled, a Job of the previous spec holding its stage. Each is the run's `Stalled` condition
with a reason and message, one Warning Event (not one per retry), a metric, and goes away by itself once the cause
is fixed. Real kopf against the Kubernetes emulator, whose Job executor refuses and schedules pods as a real cluster
does (tests/kube/scheduling.py), and SeaweedFS behind a fault-injecting proxy as the store."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.types import STAGES
from kubetune.operator.problems import REPLACE_SUPERSEDED
from tests.fixtures.s3 import FAKE_SECRET_KEY, FaultPlan, FaultProxy
from tests.integration.operator_harness import OperatorBed, eventually, operator_bed
from tests.kube.emulator import KubeEmulator

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.kube"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
Obj = dict[str, Any]


@pytest.fixture
def bed(kube: KubeEmulator, tmp_path: Path, s3_bucket: str, fault_proxy: FaultProxy) -> Iterator[OperatorBed]:
    with operator_bed(kube, tmp_path / "executor", s3_bucket, fault_proxy.endpoint) as bed:
        yield bed


def conditions(run: Obj) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in (run.get("status") or {}).get("conditions")
            or []}


def stalled(bed: OperatorBed, name: str, reason: str, timeout: float = 60.0) -> Obj:
    return bed.wait_run(name, lambda run: conditions(run).get("Stalled", ("", "", ""))[:2] == ("True", reason),
                        timeout)


def warnings(bed: OperatorBed, name: str, reason: str) -> list[Obj]:
    return [e for e in bed.events(name) if e["reason"] == reason and e["type"] == "Warning"]


def sample(bed: OperatorBed, metric: str, **labels: str) -> float:
    return bed.metrics.registry.get_sample_value(metric, labels) or 0.0


def test_an_unreachable_store_is_a_condition_an_event_and_a_metric_and_the_run_goes_on_once_it_answers(
        bed: OperatorBed, fault_proxy: FaultProxy, caplog: pytest.LogCaptureFixture) -> None:
    fault_proxy.set_plan(FaultPlan(reset_rate=1.0))  # every connection to the store is cut
    with caplog.at_level(logging.INFO), bed.operator():
        bed.create_run("cut")
        run = stalled(bed, "cut", "StoreUnavailable")
        assert run["status"]["phase"] == "Pending"
        status, reason, message = conditions(run)["StoreReachable"]
        assert (status, reason) == ("False", "StoreUnavailable")
        assert message == run["status"]["message"] and message.startswith("the store cannot be read: ")
        eventually(lambda: sample(bed, "kubetune_store_errors_total", reason="StoreUnavailable") >= 2, 60,
                   "two failed reconciles")
        assert len(warnings(bed, "cut", "StoreUnavailable")) == 1  # one Event for the outage, not one per retry
        assert sample(bed, "kubetune_runs_stalled", reason="StoreUnavailable") == 1
        fault_proxy.set_plan(FaultPlan())
        done = bed.wait_phase("cut", "Succeeded", timeout=90)

    assert conditions(done)["Stalled"][:2] == ("False", "NotStalled")
    assert conditions(done)["StoreReachable"][:2] == ("True", "StoreReachable")
    reasons = [e["reason"] for e in bed.events("cut")]
    assert reasons.count("StoreUnavailable") == 1 and reasons.count("StoreReachable") == 1
    assert sample(bed, "kubetune_runs_stalled", reason="StoreUnavailable") == 0
    assert sample(bed, "kubetune_run_stalls_total", reason="StoreUnavailable") == 1
    records = [r for r in caplog.records if r.name == "kubetune.operator" and "cut" in r.getMessage()]
    assert [r.levelname for r in records if "cannot be read" in r.getMessage()] == ["WARNING"]
    assert [r for r in records if "answers again" in r.getMessage()]
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a store that cannot be read"


def test_refused_store_credentials_are_shown_as_access_denied_until_they_are_fixed(
        bed: OperatorBed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")  # the operator's own credentials
    with bed.operator():
        bed.create_run("denied")
        run = stalled(bed, "denied", "StoreAccessDenied")
        assert conditions(run)["StoreReachable"][:2] == ("False", "StoreAccessDenied")
        eventually(lambda: len(warnings(bed, "denied", "StoreAccessDenied")) == 1, 10, "the Warning Event")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET_KEY)  # fixed: a new store client reads it
        bed.wait_phase("denied", "Succeeded", timeout=90)


def test_a_missing_job_service_account_shows_the_job_controllers_reason_until_it_exists(
        kube: KubeEmulator, tmp_path: Path, s3_bucket: str, fault_proxy: FaultProxy) -> None:
    with operator_bed(kube, tmp_path / "executor", s3_bucket, fault_proxy.endpoint,
                      job_service_account="finetune-jobs") as bed, bed.operator():
        bed.create_run("nosa")
        run = stalled(bed, "nosa", "PodsNotCreated")
        [job] = [j["metadata"]["name"] for j in bed.jobs("nosa")]  # the first Job: nothing after it can start
        stage = bed.kube.get("jobs", job)["metadata"]["labels"]["kubetune.dev/stage"]
        expected = (f'stage {stage}: Job {job} cannot create its pods: Error creating: pods "{job}-" is forbidden: '
                    'error looking up service account default/finetune-jobs: serviceaccount "finetune-jobs" not found')
        assert (run["status"]["message"], run["status"]["phase"]) == (expected, "Running")
        assert conditions(run)["Progressing"][2] == expected
        eventually(lambda: [e["message"] for e in warnings(bed, "nosa", "PodsNotCreated")] == [expected], 10,
                   "the Warning Event")
        assert sample(bed, "kubetune_runs_stalled", reason="PodsNotCreated") == 1
        kube.create({"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": "finetune-jobs", "namespace": "default"}})
        done = bed.wait_phase("nosa", "Succeeded", timeout=90)

    assert conditions(done)["Stalled"][:2] == ("False", "NotStalled")
    assert [e["reason"] for e in bed.events("nosa")].count("PodsCreated") == 1
    assert sample(bed, "kubetune_runs_stalled", reason="PodsNotCreated") == 0
    calls = {call for call in kube.faults.request_counts() if call[1] in ("pods", "events")}
    assert calls <= {("list", "pods"), ("list", "events"), ("create", "events")}  # within the operator's RBAC


def test_an_unknown_priority_class_shows_the_admission_error_until_the_class_exists(bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("noclass", resources={"defaults": {"priorityClassName": "fine-tuning"}})
        run = stalled(bed, "noclass", "PodsNotCreated")
        assert run["status"]["message"].endswith(
            'is forbidden: no PriorityClass with name fine-tuning was found')
        bed.executor.priority_classes.add("fine-tuning")
        bed.wait_phase("noclass", "Succeeded", timeout=90)


def test_an_unschedulable_stage_pod_shows_the_schedulers_message_until_a_node_fits(bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("nonode", resources={"train": {"nodeSelector": {"pool": "gpu"}}})
        run = stalled(bed, "nonode", "Unschedulable")
        assert run["status"]["currentStage"] == "train"
        assert run["status"]["message"].endswith(
            "cannot be scheduled: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
            "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.")
        assert run["status"]["stages"]["dataset"]["phase"] == "Succeeded"
        bed.executor.nodes["gpu-1"] = {"kubernetes.io/hostname": "gpu-1", "pool": "gpu"}
        bed.wait_phase("nonode", "Succeeded", timeout=90)

    assert [e["reason"] for e in bed.events("nonode")].count("PodsScheduled") == 1
    assert len(warnings(bed, "nonode", "Unschedulable")) == 1  # the run is over: its Events were posted


def _rename_and_unpin(spec: Obj) -> None:
    spec["dataset"]["placeholders"]["NAME"] = "Orion"  # a new dataset key
    spec["resources"]["dataset"] = None  # merge patch: removes the nodeSelector


def test_a_job_of_the_previous_spec_that_cannot_finish_is_replaced_after_the_grace_period(
        kube: KubeEmulator, tmp_path: Path, s3_bucket: str, fault_proxy: FaultProxy) -> None:
    with operator_bed(kube, tmp_path / "executor", s3_bucket, fault_proxy.endpoint,
                      superseded_job_grace=4.0) as bed, bed.operator():
        bed.create_run("edited", resources={"dataset": {"nodeSelector": {"pool": "nowhere"}}})
        old = stalled(bed, "edited", "Unschedulable")["status"]["stages"]["dataset"]["jobName"]
        bed.edit_spec("edited", _rename_and_unpin)
        run = stalled(bed, "edited", "SupersededJobBlocking")
        message = run["status"]["message"]
        assert message.startswith(f"stage dataset: Job {old} of the previous spec is still running; it is replaced "
                                  "at ") and REPLACE_SUPERSEDED in message
        assert kube.find("jobs", old) is not None
        done = bed.wait_phase("edited", "Succeeded", timeout=90)

    assert kube.find("jobs", old) is None and kube.find("configmaps", f"{old}-run") is None
    assert done["status"]["stages"]["dataset"]["jobName"] != old
    replaced = [e for e in bed.events("edited") if e["reason"] == "SupersededJobReplaced"]
    assert len(replaced) == 1 and "grace period of 4 s is over" in replaced[0]["message"]
    assert sample(bed, "kubetune_superseded_jobs_replaced_total", stage="dataset", trigger="grace") == 1


def test_the_run_annotation_replaces_a_job_of_the_previous_spec_at_once(bed: OperatorBed) -> None:
    assert bed.settings.superseded_job_grace == 600  # the default: without the annotation, ten minutes
    with bed.operator():
        bed.create_run("asked", resources={"dataset": {"nodeSelector": {"pool": "nowhere"}}})
        old = stalled(bed, "asked", "Unschedulable")["status"]["stages"]["dataset"]["jobName"]
        bed.edit_spec("asked", _rename_and_unpin)
        stalled(bed, "asked", "SupersededJobBlocking")
        bed.kube.patch("ftr", "asked", {"metadata": {"annotations": {REPLACE_SUPERSEDED: "true"}}})
        bed.wait_phase("asked", "Succeeded", timeout=90)

    assert bed.kube.find("jobs", old) is None and bed.kube.find("configmaps", f"{old}-run") is None
    assert sample(bed, "kubetune_superseded_jobs_replaced_total", stage="dataset", trigger="annotation") == 1


def test_stage_jobs_limit_scratch_and_the_final_event_reads_naturally(bed: OperatorBed) -> None:
    with bed.operator():
        bed.create_run("plain", resources={"train": {"scratchSize": "3Gi"}})
        bed.wait_phase("plain", "Succeeded", timeout=90)

    limits = {job["metadata"]["labels"]["kubetune.dev/stage"]: next(
        v["emptyDir"]["sizeLimit"] for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "scratch")
        for job in bed.jobs("plain") if job["metadata"]["labels"]["kubetune.dev/stage"] in STAGES}
    assert limits == {"dataset": "10Gi", "train": "3Gi", "merge": "100Gi", "convert": "150Gi", "evaluate": "50Gi"}
    [final] = [e for e in bed.events("plain") if e["reason"] == "Succeeded"]
    assert final["message"] == "FineTuneRun succeeded: 5 stages done"
