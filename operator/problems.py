"""Why a run cannot move on by itself, from what the operator observed. Pure.

Each problem becomes the run's `Stalled` condition (reason and message), its message, a Warning Event when it starts
and a metric (status.py, metrics.py). Three kinds:

- the store cannot be read (unreachable endpoint, missing or refused credentials, no such bucket): nothing about the
  stages can be known, the run keeps its last status and says why;
- a stage Job's pods cannot be created (the Job's `FailedCreate` Events: a missing ServiceAccount, an unknown
  PriorityClass, a quota) or do not start (the pod's `PodScheduled=False` reason `Unschedulable`, a container waiting
  on its image or a missing Secret). The Job controller writes no condition for these: the Job stays active forever;
- a Job of the previous spec still occupies the stage after a spec edit (reconcile.py replaces it after a grace
  period, or at once when the run asks with an annotation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.operator.labels import DOMAIN
from kubetune.store.errors import (
    BucketNotFoundError,
    StoreAccessDeniedError,
    StoreConfigError,
    StoreCredentialsError,
    StoreError,
)

# Run annotation: "true" replaces a Job of the previous spec at once instead of after the grace period.
REPLACE_SUPERSEDED = f"{DOMAIN}/replace-superseded-jobs"

STORE_UNAVAILABLE = "StoreUnavailable"
STORE_ACCESS_DENIED = "StoreAccessDenied"
STORE_NOT_FOUND = "StoreNotFound"
STORE_MISCONFIGURED = "StoreMisconfigured"
PODS_NOT_CREATED = "PodsNotCreated"
UNSCHEDULABLE = "Unschedulable"
CONTAINER_CANNOT_START = "ContainerCannotStart"
SUPERSEDED_JOB_BLOCKING = "SupersededJobBlocking"
STORE_REASONS = (STORE_UNAVAILABLE, STORE_ACCESS_DENIED, STORE_NOT_FOUND, STORE_MISCONFIGURED)
STALL_REASONS = (*STORE_REASONS, PODS_NOT_CREATED, UNSCHEDULABLE, CONTAINER_CANNOT_START, SUPERSEDED_JOB_BLOCKING)

# A container waiting for one of these does not start without a change outside the pod (kubelet reasons).
STUCK_CONTAINER_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                           "CreateContainerConfigError", "CreateContainerError")
# The store's typed errors by reason; anything else (botocore's own, should one slip through) by the words of its
# class names and S3 error code, in this order.
_TYPED: tuple[tuple[type[StoreError], str], ...] = (
    (StoreCredentialsError, STORE_ACCESS_DENIED), (StoreAccessDeniedError, STORE_ACCESS_DENIED),
    (BucketNotFoundError, STORE_NOT_FOUND), (StoreConfigError, STORE_MISCONFIGURED),
)
_HINTS = (
    (STORE_ACCESS_DENIED, ("AccessDenied", "Forbidden", "Credential", "Signature", "InvalidAccessKeyId",
                           "ExpiredToken", "Unauthorized")),
    (STORE_NOT_FOUND, ("NoSuchBucket",)),
    (STORE_MISCONFIGURED, ("InvalidEndpoint", "InvalidBucketName", "InvalidRegion")),
)
MAX_MESSAGE = 1000  # of a quoted pod or Event message: a condition message is read in `kubectl describe`


@dataclass(frozen=True)
class Problem:
    reason: str  # CamelCase, one of the constants above
    message: str
    stage: str | None = None  # the stage it holds up; None for the whole run (the store)

    @property
    def is_store(self) -> bool:
        return self.reason in STORE_REASONS


def store_problem(error: BaseException, store_uri: str) -> Problem:
    """The store's error (kubetune.store's typed errors, or botocore's where one slips through) as a problem."""
    text = " ".join(str(error).split()) or type(error).__name__
    words = (" ".join(cls.__name__ for cls in type(error).__mro__) + " " + _error_code(error)).lower()
    reason = next((reason for kind, reason in _TYPED if isinstance(error, kind)), None) or next(
        (reason for reason, hints in _HINTS if any(hint.lower() in words for hint in hints)), STORE_UNAVAILABLE)
    if not isinstance(error, StoreError) and store_uri not in text:
        text = f"{store_uri}: {type(error).__name__}: {text}"
    return Problem(reason, _clip(f"the store cannot be read: {text}"))


def _error_code(error: BaseException) -> str:
    """The S3 error code of a botocore ClientError (or of the error it was raised from)."""
    for candidate in (error, error.__cause__):
        response = getattr(candidate, "response", None)
        if isinstance(response, Mapping):
            return str((response.get("Error") or {}).get("Code") or "")
    return ""


def pod_problem(stage: str, job_name: str, pods: Sequence[Mapping[str, Any]],
                events: Sequence[Mapping[str, Any]]) -> Problem | None:
    """Why a stage Job's pods are not running, from its pods (those not finished) and its Events; None if nothing
    says they cannot start (they may just be pulling an image or waiting for their node)."""
    for pod in pods:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        name = meta.get("name", "")
        for condition in status.get("conditions") or []:
            if (condition.get("type"), condition.get("status"), condition.get("reason")) == (
                    "PodScheduled", "False", "Unschedulable"):
                return Problem(UNSCHEDULABLE, _clip(
                    f"stage {stage}: pod {name} of Job {job_name} cannot be scheduled: {condition.get('message', '')}"),
                    stage)
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_CONTAINER_REASONS:
                detail = ": ".join(part for part in (waiting.get("reason"), waiting.get("message")) if part)
                return Problem(CONTAINER_CANNOT_START, _clip(
                    f"stage {stage}: container {container.get('name', '')} of pod {name} cannot start: {detail}"),
                    stage)
    failed = max((e for e in events if e.get("reason") == "FailedCreate"), key=_event_time, default=None)
    created = max((e for e in events if e.get("reason") == "SuccessfulCreate"), key=_event_time, default=None)
    # The Job controller retries with a growing delay and records each outcome (repeats update one Event): a failure
    # no later than the last pod it created is over (Event times have one-second resolution).
    if failed is None or (created is not None and _event_time(created) >= _event_time(failed)):
        return None
    return Problem(PODS_NOT_CREATED, _clip(
        f"stage {stage}: Job {job_name} cannot create its pods: {failed.get('message', '')}"), stage)


def superseded_problem(stage: str, job_name: str, phase: str, replace_at: str) -> Problem:
    return Problem(SUPERSEDED_JOB_BLOCKING, (
        f"stage {stage}: Job {job_name} of the previous spec is still {phase.lower()}; it is replaced at {replace_at}, "
        f'or at once when the run is annotated {REPLACE_SUPERSEDED}="true"'), stage)


def _event_time(event: Mapping[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"
