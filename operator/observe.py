"""Kubernetes Job objects → the planner's `JobState`, plus the times the status shows. Pure.

A Job is Queued while it is suspended without the operator having suspended it (created suspended for Kueue and
not admitted yet, or re-queued by Kueue), Suspended while the operator holds it (the run's spec.suspend), Running
until a Complete or Failed condition, then Succeeded or Failed. A Job the podFailurePolicy failed through its
FailJob rule (exit code 2) is a configuration error: the planner never retries it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.operator import labels
from kubetune.planner import JobPhase, JobState

POD_FAILURE_POLICY = "PodFailurePolicy"
EXIT_CONFIG_ERROR = 2


@dataclass(frozen=True)
class ObservedJob:
    state: JobState
    start_time: str | None = None
    completion_time: str | None = None  # when it succeeded or failed
    uid: str = ""
    created: str | None = None  # metadata.creationTimestamp
    pods_wanted: int = 1  # spec.parallelism
    pods_active: int = 0  # status.active: pods created and not finished (pending or running)
    pods_ready: int = 0  # status.ready: pods running and ready

    @property
    def starting(self) -> bool:
        """Running (not queued, suspended or finished) without all its pods up: the time when pods that cannot be
        created or scheduled show, to the Job's Events and the pods only."""
        return self.state.phase == "Running" and self.pods_ready < self.pods_wanted


def observe_job(job: Mapping[str, Any], progress: Mapping[str, Any] | None = None) -> ObservedJob | None:
    """The Job as the planner sees it; None for a Job that is not a kubetune stage Job.

    `progress` is the stage's progress.json, read for the Job that ran last: a failed job writes its one-line
    reason and exit code there, which is what the status shows (the operator reads no pod logs).
    """
    meta = job.get("metadata") or {}
    job_labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    key = annotations.get(labels.INPUT_KEY)
    stage = job_labels.get(labels.STAGE)
    try:
        attempt = int(job_labels.get(labels.ATTEMPT, ""))
    except ValueError:
        return None
    if not key or not stage or attempt < 1:
        return None
    spec, status = job.get("spec") or {}, job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    phase: JobPhase
    config_error = False
    message = ""
    finished: str | None = None
    if "Complete" in conditions:
        phase = "Succeeded"
        finished = status.get("completionTime") or conditions["Complete"].get("lastTransitionTime")
    elif "Failed" in conditions:
        phase = "Failed"
        failed = conditions["Failed"]
        finished = failed.get("lastTransitionTime")
        reported = _failure_report(progress)
        config_error = failed.get("reason") == POD_FAILURE_POLICY or (
            reported is not None and reported[1] == EXIT_CONFIG_ERROR)
        condition_text = ": ".join(part for part in (failed.get("reason"), failed.get("message")) if part)
        message = reported[0] if reported is not None and reported[0] else condition_text
    elif spec.get("suspend"):
        phase = "Suspended" if annotations.get(labels.SUSPENDED) == "true" else "Queued"
    else:
        phase = "Running"
    state = JobState(name=meta.get("name", ""), stage=stage, key=key, attempt=attempt, phase=phase,
                     config_error=config_error, message=message)
    return ObservedJob(state, start_time=status.get("startTime"), completion_time=finished, uid=str(meta.get("uid", "")),
                       created=meta.get("creationTimestamp"), pods_wanted=_count(spec.get("parallelism"), 1),
                       pods_active=_count(status.get("active"), 0), pods_ready=_count(status.get("ready"), 0))


def _count(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def observe_jobs(
    jobs: Sequence[Mapping[str, Any]], progress: Mapping[str, Mapping[str, Any]] | None = None
) -> list[ObservedJob]:
    """Every stage Job of a run; `progress` maps a Job name to the progress.json that Job left."""
    found = (observe_job(job, (progress or {}).get((job.get("metadata") or {}).get("name", ""))) for job in jobs)
    return [job for job in found if job is not None]


def _failure_report(progress: Mapping[str, Any] | None) -> tuple[str, int | None] | None:
    """(reason, exit code) from a progress.json that says the job failed, else None."""
    if not progress or progress.get("phase") != "Failed":
        return None
    code = progress.get("exitCode")
    return str(progress.get("message") or ""), code if isinstance(code, int) else None


def has_condition(job: Mapping[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def latest_attempts(jobs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The Job with the highest attempt number of each stage."""
    latest: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for job in jobs:
        job_labels = (job.get("metadata") or {}).get("labels") or {}
        stage, attempt = job_labels.get(labels.STAGE), job_labels.get(labels.ATTEMPT, "")
        if stage and attempt.isdigit() and int(attempt) >= latest.get(stage, (0, {}))[0]:
            latest[stage] = (int(attempt), job)
    return [job for _, job in latest.values()]
