"""Why a run cannot move on by itself (problems.py), and how that shows in its status: the `Stalled` and
`StoreReachable` conditions, the message, and one Event when a problem starts or ends (status.py)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from kubetune.api.run_status import FineTuneRunStatus
from kubetune.operator.problems import (
    MAX_MESSAGE,
    Problem,
    pod_problem,
    store_problem,
    superseded_problem,
)
from kubetune.operator.status import store_problem_status
from kubetune.store.errors import (
    BucketNotFoundError,
    StoreAccessDeniedError,
    StoreConfigError,
    StoreCredentialsError,
    StoreUnreachableError,
)
from tests.unit.test_operator_status import T0, T1, T2, Scenario

Obj = dict[str, Any]
JOB = "demo-train-0123abcd"
UNSCHEDULABLE = ("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 "
                 "nodes are available: 3 Preemption is not helpful for scheduling.")
NO_SA = (f'Error creating: pods "{JOB}-" is forbidden: error looking up service account ns/kubetune-job: '
         'serviceaccount "kubetune-job" not found')


def pod(phase: str = "Pending", conditions: list[Obj] | None = None, waiting: Obj | None = None, **meta: Any) -> Obj:
    status: Obj = {"phase": phase, "conditions": conditions or []}
    if waiting is not None:
        status["containerStatuses"] = [{"name": "train", "state": {"waiting": waiting}}]
    return {"metadata": {"name": f"{JOB}-x7k2p", **meta}, "status": status}


def event(reason: str, message: str, last: str) -> Obj:
    return {"reason": reason, "message": message, "lastTimestamp": last, "type": "Normal"}


# --- pods and Events --------------------------------------------------------------------------------------------


def test_an_unschedulable_pod_is_reported_with_the_schedulers_message() -> None:
    found = pod_problem("train", JOB, [pod(conditions=[{"type": "PodScheduled", "status": "False",
                                                         "reason": "Unschedulable", "message": UNSCHEDULABLE}])], [])
    assert found == Problem("Unschedulable", f"stage train: pod {JOB}-x7k2p of Job {JOB} cannot be scheduled: "
                                             f"{UNSCHEDULABLE}", "train")


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"])
def test_a_container_that_cannot_start_is_reported_with_the_kubelets_reason(reason: str) -> None:
    found = pod_problem("train", JOB, [pod(waiting={"reason": reason, "message": "secret \"s3\" not found"})], [])
    assert found is not None and found.reason == "ContainerCannotStart"
    assert found.message == f'stage train: container train of pod {JOB}-x7k2p cannot start: {reason}: secret "s3" ' \
                            'not found'


def test_pods_that_are_just_starting_are_no_problem() -> None:
    creating = pod(waiting={"reason": "ContainerCreating"})
    scheduled = pod(conditions=[{"type": "PodScheduled", "status": "True"}])
    assert pod_problem("train", JOB, [creating, scheduled], [event("SuccessfulCreate", "Created pod", T0)]) is None


def test_finished_or_deleted_pods_say_nothing_about_the_job_now() -> None:
    stuck = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": UNSCHEDULABLE}]
    assert pod_problem("train", JOB, [pod("Failed", stuck), pod(conditions=stuck, deletionTimestamp=T1)], []) is None


def test_a_failed_creation_is_reported_with_the_job_controllers_message() -> None:
    found = pod_problem("dataset", JOB, [], [event("FailedCreate", NO_SA, T1)])
    assert found == Problem("PodsNotCreated", f"stage dataset: Job {JOB} cannot create its pods: {NO_SA}", "dataset")


def test_a_failed_creation_followed_by_a_created_pod_is_over() -> None:
    assert pod_problem("dataset", JOB, [], [event("FailedCreate", NO_SA, T0), event("SuccessfulCreate", "x", T1)]) \
        is None
    again = pod_problem("dataset", JOB, [], [event("SuccessfulCreate", "x", T0), event("FailedCreate", NO_SA, T1)])
    assert again is not None and again.reason == "PodsNotCreated"


def test_quoted_messages_are_clipped_to_one_readable_line() -> None:
    found = pod_problem("dataset", JOB, [], [event("FailedCreate", "quota\nexceeded " + "x" * 5000, T0)])
    assert found is not None and len(found.message) == MAX_MESSAGE and "\n" not in found.message


# --- the store --------------------------------------------------------------------------------------------------


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "ListObjectsV2")


@pytest.mark.parametrize(("error", "reason"), [
    (EndpointConnectionError(endpoint_url="http://minio:9000"), "StoreUnavailable"),
    (NoCredentialsError(), "StoreAccessDenied"),
    (client_error("AccessDenied"), "StoreAccessDenied"),
    (client_error("SignatureDoesNotMatch"), "StoreAccessDenied"),
    (client_error("NoSuchBucket"), "StoreNotFound"),
    (client_error("InternalError"), "StoreUnavailable"),
    (StoreCredentialsError("s3://b/runs", "http://minio:9000", "no credentials", "set them"), "StoreAccessDenied"),
    (StoreAccessDeniedError("s3://b/runs", None, "access denied", "check the keys"), "StoreAccessDenied"),
    (BucketNotFoundError("s3://b/runs", None, "no such bucket", "create it"), "StoreNotFound"),
    (StoreUnreachableError("s3://b/runs", "http://minio:9000", "unreachable", "is it up?"), "StoreUnavailable"),
    (StoreConfigError("s3://b/runs: endpoint ftp://x is not http(s)"), "StoreMisconfigured"),
    (OSError(13, "Permission denied"), "StoreUnavailable"),
])
def test_store_errors_get_a_reason_by_kind(error: BaseException, reason: str) -> None:
    found = store_problem(error, "s3://b/runs")
    assert found.reason == reason and found.is_store and found.stage is None
    assert found.message.startswith("the store cannot be read: ") and "\n" not in found.message
    assert "s3://b/runs" in found.message  # the store's own errors name it; others are prefixed with it


def test_a_store_error_keeps_the_last_status_and_says_why_once() -> None:
    running, _ = Scenario(1, ("Running",)).status(now=T0)
    problem = store_problem(EndpointConnectionError(endpoint_url="http://minio:9000"), "s3://b/runs")
    down = store_problem_status(running, 3, T1, problem)
    FineTuneRunStatus.model_validate(down.status)
    assert down.status["stages"] == running["stages"] and down.status["phase"] == "Running"
    assert down.status["message"] == problem.message
    conditions = {c["type"]: (c["status"], c["reason"]) for c in down.status["conditions"]}
    assert conditions["StoreReachable"] == ("False", "StoreUnavailable")
    assert conditions["Stalled"] == ("True", "StoreUnavailable")
    assert [(t.type, t.reason) for t in down.transitions] == [("Warning", "StoreUnavailable")]
    again = store_problem_status(down.status, 3, T2, problem)
    assert again.status == down.status and again.transitions == ()  # no Event, no write per retry


def test_a_store_error_after_a_spec_edit_leaves_the_run_pending() -> None:
    done, _ = Scenario(5).status(now=T0, generation=3)
    down = store_problem_status(done, 4, T1, store_problem(NoCredentialsError(), "s3://b/runs"))
    assert (down.status["phase"], down.status["observedGeneration"]) == ("Pending", 4)


def test_the_store_answering_again_clears_the_conditions_with_one_event() -> None:
    running, _ = Scenario(1, ("Running",)).status(now=T0)
    down = store_problem_status(running, 3, T1, store_problem(NoCredentialsError(), "s3://b/runs"))
    back, transitions = Scenario(1, ("Running",)).status(down.status, now=T2)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in back["conditions"]}
    assert conditions["StoreReachable"] == ("True", "StoreReachable")
    assert conditions["Stalled"] == ("False", "NotStalled")
    assert "message" not in back
    assert transitions == [("Normal", "StoreReachable", "the store answers again")]


# --- stalled stages ---------------------------------------------------------------------------------------------


def test_a_stalled_stage_keeps_its_phase_and_carries_the_reason_in_message_conditions_and_one_event() -> None:
    scenario = Scenario(1, ("Running",))
    problem = Problem("PodsNotCreated", f"stage train: Job {JOB} cannot create its pods: {NO_SA}", "train")
    before, _ = scenario.status(now=T0)
    stuck, transitions = scenario.status(before, now=T1, problem=problem)
    assert (stuck["phase"], stuck["stages"]["train"]["phase"]) == ("Running", "Running")
    assert stuck["message"] == stuck["stages"]["train"]["message"] == problem.message
    conditions = {c["type"]: (c["status"], c["reason"], c["message"]) for c in stuck["conditions"]}
    assert conditions["Stalled"] == ("True", "PodsNotCreated", problem.message)
    assert conditions["Progressing"] == ("True", "StageRunning", problem.message)
    assert transitions == [("Warning", "PodsNotCreated", problem.message)]
    still, transitions = scenario.status(stuck, now=T2, problem=problem)
    assert still == stuck and transitions == []
    moving, transitions = scenario.status(still, now=T2)
    assert {c["type"]: c["status"] for c in moving["conditions"]}["Stalled"] == "False"
    assert "message" not in moving["stages"]["train"]
    assert transitions == [("Normal", "PodsCreated", "the pods of stage train are created now")]


def test_a_new_reason_is_a_new_event() -> None:
    scenario = Scenario(0, ("Running",))
    first = Problem("Unschedulable", "stage dataset: pod x cannot be scheduled: ...", "dataset")
    blocking = superseded_problem("dataset", JOB, "Running", T2)
    unschedulable, _ = scenario.status(now=T0, problem=first)
    _, transitions = scenario.status(unschedulable, now=T1, problem=blocking)
    assert transitions == [("Warning", "SupersededJobBlocking", blocking.message)]
    assert blocking.message == (f"stage dataset: Job {JOB} of the previous spec is still running; it is replaced at "
                                f'{T2}, or at once when the run is annotated kubetune.dev/replace-superseded-jobs="true"')


def test_the_final_event_reads_as_a_sentence() -> None:
    before, _ = Scenario(4, ("Running",)).status()
    _, transitions = Scenario(5, ran=("evaluate",)).status(before)
    assert ("Normal", "Succeeded", "FineTuneRun succeeded: 5 stages done, 4 of them reused") in transitions
    _, transitions = Scenario(5, ran=("dataset", "train", "merge", "convert", "evaluate")).status(before)
    assert ("Normal", "Succeeded", "FineTuneRun succeeded: 5 stages done") in transitions
