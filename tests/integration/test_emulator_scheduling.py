"""The Job executor stops a pod before it runs where a real cluster would (tests/kube/scheduling.py): admission
refuses pods whose ServiceAccount or PriorityClass does not exist (the Job gets the Job controller's FailedCreate
Event and no pod), and the scheduler leaves a pod Pending and Unschedulable while no node matches its nodeSelector.
Each goes on once the missing piece exists."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.kube.emulator import KubeEmulator
from tests.kube.executor import JobExecutor, instant_command
from tests.kube.samples import job

pytest_plugins = ["tests.fixtures.kube"]
pytestmark = pytest.mark.integration
Obj = dict[str, Any]


def pod_spec_job(name: str, **pod_spec: Any) -> Obj:
    manifest = job(name, instant_command())
    manifest["spec"]["template"]["spec"].update(pod_spec)
    return manifest


def completed(obj: Obj | None) -> bool:
    return any(c["type"] == "Complete" and c["status"] == "True"
               for c in ((obj or {}).get("status") or {}).get("conditions") or [])


def job_events(kube: KubeEmulator, name: str, reason: str) -> list[Obj]:
    return [e for e in kube.events("default", involved_name=name) if e["reason"] == reason]


def test_a_missing_service_account_gives_no_pod_and_the_job_controllers_failed_create_event(
        kube: KubeEmulator, job_executor: JobExecutor) -> None:
    kube.create(pod_spec_job("nosa", serviceAccountName="runner"))
    kube.wait_for("events", "", lambda _: len(job_events(kube, "nosa", "FailedCreate")) == 1, timeout=10)
    kube.wait_for("events", "", lambda _: (job_events(kube, "nosa", "FailedCreate")[0].get("count") or 0) >= 2,
                  timeout=10)  # repeats count up on the one Event
    [event] = job_events(kube, "nosa", "FailedCreate")
    assert (event["type"], event["involvedObject"]["kind"], event["source"]["component"]) == (
        "Warning", "Job", "job-controller")
    assert event["message"] == ('Error creating: pods "nosa-" is forbidden: error looking up service account '
                                'default/runner: serviceaccount "runner" not found')
    assert kube.list("pods", "default") == [] and job_executor.attempts("nosa") == []
    assert not (kube.get("jobs", "nosa").get("status") or {}).get("active")

    kube.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner", "namespace": "default"}})
    kube.wait_for("jobs", "nosa", completed, timeout=20)
    [created] = job_events(kube, "nosa", "SuccessfulCreate")
    assert created["message"] == f"Created pod: {job_executor.attempts('nosa')[0].pod_name}"


def test_the_default_service_account_always_exists(kube: KubeEmulator, job_executor: JobExecutor) -> None:
    kube.create(pod_spec_job("plain"))
    kube.wait_for("jobs", "plain", completed, timeout=20)
    assert job_events(kube, "plain", "FailedCreate") == []


def test_an_unknown_priority_class_gives_no_pod_until_it_exists(kube: KubeEmulator,
                                                                job_executor: JobExecutor) -> None:
    kube.create(pod_spec_job("urgent", priorityClassName="batch-high"))
    kube.wait_for("events", "", lambda _: bool(job_events(kube, "urgent", "FailedCreate")), timeout=10)
    assert job_events(kube, "urgent", "FailedCreate")[0]["message"] == (
        'Error creating: pods "urgent-" is forbidden: no PriorityClass with name batch-high was found')
    job_executor.priority_classes.add("batch-high")
    kube.wait_for("jobs", "urgent", completed, timeout=20)


def test_a_system_priority_class_always_exists(kube: KubeEmulator, job_executor: JobExecutor) -> None:
    kube.create(pod_spec_job("system", priorityClassName="system-cluster-critical"))
    kube.wait_for("jobs", "system", completed, timeout=20)


def test_a_pod_no_node_fits_stays_pending_and_unschedulable_until_one_does(kube: KubeEmulator,
                                                                          job_executor: JobExecutor) -> None:
    kube.create(pod_spec_job("gpu", nodeSelector={"pool": "gpu"}))

    def unschedulable(_: object) -> bool:
        pods = kube.list("pods", "default", label_selector="batch.kubernetes.io/job-name=gpu")
        return any(c.get("reason") == "Unschedulable" for p in pods for c in (p.get("status") or {}).get(
            "conditions") or [])

    kube.wait_for("jobs", "gpu", unschedulable, timeout=10)
    [pod] = kube.list("pods", "default", label_selector="batch.kubernetes.io/job-name=gpu")
    [condition] = pod["status"]["conditions"]
    message = ("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: 0/1 nodes "
               "are available: 1 Preemption is not helpful for scheduling.")
    assert (pod["status"]["phase"], condition["type"], condition["status"], condition["message"]) == (
        "Pending", "PodScheduled", "False", message)
    assert "nodeName" not in pod["spec"]
    job_uid = kube.get("jobs", "gpu")["metadata"]["uid"]
    assert pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] == job_uid
    assert kube.get("jobs", "gpu")["status"]["active"] == 1 and not kube.get("jobs", "gpu")["status"]["ready"]
    # The scheduler posts its Event apart from the pod's condition (as kube-scheduler does): wait for it.
    deadline = time.monotonic() + 10
    while not (scheduling := [e for e in kube.events("default", involved_name=pod["metadata"]["name"])
                              if e["reason"] == "FailedScheduling"]):
        assert time.monotonic() < deadline, "no FailedScheduling Event"
        time.sleep(0.05)
    assert [(e["type"], e["message"]) for e in scheduling] == [("Warning", message)]

    job_executor.nodes["gpu-1"] = {"kubernetes.io/hostname": "gpu-1", "pool": "gpu"}
    kube.wait_for("jobs", "gpu", completed, timeout=20)
    assert kube.get("pods", pod["metadata"]["name"])["spec"]["nodeName"] == "gpu-1"
