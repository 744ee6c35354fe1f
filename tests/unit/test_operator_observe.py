"""Kubernetes Jobs as the planner sees them: Queued, Running, Suspended, Succeeded, Failed (and why)."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.operator.observe import latest_attempts, observe_job, observe_jobs

KEY = "c" * 64
Obj = dict[str, Any]


def job(*, suspend: bool = False, held: bool = False, conditions: tuple[Obj, ...] = (), attempt: str = "1",
        status: Obj | None = None, name: str = "demo-train-cccccccc", stage: str = "train") -> Obj:
    annotations = {"kubetune.dev/input-key": KEY, "kubetune.dev/prefix": "ns/demo/train/" + "c" * 16}
    if held:
        annotations["kubetune.dev/suspended"] = "true"
    return {
        "metadata": {"name": name, "labels": {"kubetune.dev/stage": stage, "kubetune.dev/attempt": attempt,
                                              "kubetune.dev/run": "demo"},
                     "annotations": annotations},
        "spec": {"suspend": suspend},
        "status": {**(status or {}), "conditions": list(conditions)},
    }


def condition(kind: str, reason: str = "", message: str = "", status: str = "True") -> Obj:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:10:00Z"}


@pytest.mark.parametrize(("obj", "phase"), [
    (job(suspend=True), "Queued"),  # created suspended for Kueue, not admitted yet
    (job(suspend=True, conditions=(condition("Suspended", "JobSuspended"),)), "Queued"),  # re-queued by Kueue
    (job(suspend=True, held=True), "Suspended"),  # the operator holds it: the run is suspended
    (job(), "Running"),
    (job(status={"startTime": "2026-01-01T00:00:00Z", "active": 1}), "Running"),
    (job(conditions=(condition("Suspended", "JobResumed", status="False"),)), "Running"),
    (job(conditions=(condition("Complete", "CompletionsReached"),)), "Succeeded"),
    (job(conditions=(condition("Failed", "BackoffLimitExceeded"),)), "Failed"),
])
def test_a_jobs_phase_follows_its_suspend_flag_and_conditions(obj: Obj, phase: str) -> None:
    observed = observe_job(obj)
    assert observed is not None and observed.state.phase == phase


def test_the_state_carries_the_full_input_key_stage_and_attempt() -> None:
    observed = observe_job(job(attempt="2", status={"startTime": "2026-01-01T00:00:00Z"}))
    assert observed is not None
    state = observed.state
    assert (state.name, state.stage, state.key, state.attempt) == ("demo-train-cccccccc", "train", KEY, 2)
    assert observed.start_time == "2026-01-01T00:00:00Z" and observed.completion_time is None


def test_a_finished_job_reports_when_it_finished() -> None:
    done = observe_job(job(status={"completionTime": "2026-01-01T00:09:59Z"},
                           conditions=(condition("Complete"),)))
    failed = observe_job(job(conditions=(condition("Failed", "DeadlineExceeded"),)))
    assert done is not None and done.completion_time == "2026-01-01T00:09:59Z"
    assert failed is not None and failed.completion_time == "2026-01-01T00:10:00Z"


FAILJOB = condition("Failed", "PodFailurePolicy",
                    "Container train for pod ns/p failed with exit code 2 matching FailJob rule at index 0")


@pytest.mark.parametrize(("conditions", "progress", "config_error", "message"), [
    ((FAILJOB,), None, True, ("PodFailurePolicy: Container train for pod ns/p failed with exit code 2 matching "
                              "FailJob rule at index 0")),
    ((FAILJOB,), {"phase": "Failed", "exitCode": 2, "message": "dataset has no records"}, True,
     "dataset has no records"),
    ((condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),),
     {"phase": "Failed", "exitCode": 1, "message": "CUDA out of memory"}, False, "CUDA out of memory"),
    ((condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),), None, False,
     "BackoffLimitExceeded: Job has reached the specified backoff limit"),
    # the job's own report says "configuration error" even if the pod failure policy was bypassed
    ((condition("Failed", "BackoffLimitExceeded"),), {"phase": "Failed", "exitCode": 2, "message": "bad adapter"},
     True, "bad adapter"),
    # a checkpointed stop (exit 143) is not the reason a Job ran out of time
    ((condition("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"),),
     {"phase": "Stopped", "exitCode": 143, "message": "stopped by signal"}, False,
     "DeadlineExceeded: Job was active longer than specified deadline"),
])
def test_a_failed_jobs_reason_comes_from_its_own_report_else_from_the_job_condition(
    conditions: tuple[Obj, ...], progress: Obj | None, config_error: bool, message: str
) -> None:
    observed = observe_job(job(conditions=conditions), progress)
    assert observed is not None
    assert (observed.state.config_error, observed.state.message) == (config_error, message)


@pytest.mark.parametrize("obj", [
    {"metadata": {"name": "x", "labels": {}}},
    job(attempt="x"),
    job(attempt="0"),
    {**job(), "metadata": {**job()["metadata"], "annotations": {}}},
])
def test_jobs_that_are_not_kubetune_stage_jobs_are_ignored(obj: Obj) -> None:
    assert observe_job(obj) is None
    assert observe_jobs([obj]) == []


def test_progress_reports_are_matched_to_jobs_by_name() -> None:
    first = job(conditions=(condition("Failed", "BackoffLimitExceeded"),))
    other = job(name="demo-merge-cccccccc", stage="merge", conditions=(condition("Failed"),))
    found = observe_jobs([first, other], {"demo-merge-cccccccc": {"phase": "Failed", "message": "merge broke"}})
    assert [(o.state.stage, o.state.message) for o in found] == [("train", "BackoffLimitExceeded"),
                                                                  ("merge", "merge broke")]


def test_latest_attempts_keeps_the_highest_attempt_of_each_stage() -> None:
    jobs = [job(attempt="1", name="t1"), job(attempt="3", name="t3"), job(attempt="2", name="t2"),
            job(attempt="1", name="m1", stage="merge")]
    assert sorted(j["metadata"]["name"] for j in latest_attempts(jobs)) == ["m1", "t3"]
