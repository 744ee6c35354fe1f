"""The planner: given a run's spec and what was observed, what to do next. Pure: no I/O, no clock.

Both executors (the operator and `kubetune run`) loop: observe → plan → act. Ordering, caching, resume, retry and
"never two Jobs for one stage" live here and are tested without any server.

Keys need the sources resolved to content first (sources.py). Without them the plan is to resolve: in-process
(`Resolve`, the local executor) or, when the executor names where a resolution is kept (`Observed.resolve`), by
looking it up and else running the `sources` Job, with the same retry rules as a stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from kubetune.api.types import STAGES, FineTuneRunSpec
from kubetune.sources import SOURCES, Sources
from kubetune.stages import StageRef, enabled_stages, stage_ref

# Jobs started for one stage and input key before the run fails. Each Job has its own pod retries (backoffLimit);
# this covers Jobs that failed as a whole (deadline exceeded, node lost beyond the pod budget).
MAX_ATTEMPTS = 3
JOB_NAME_MAX = 63

JobPhase = Literal["Queued", "Running", "Suspended", "Succeeded", "Failed"]


@dataclass(frozen=True)
class Output:
    """A published stage output (its manifest exists)."""

    key: str
    digest: str


@dataclass(frozen=True)
class JobState:
    """A stage Job as observed (Kubernetes Job or local process)."""

    name: str
    stage: str
    key: str
    attempt: int
    phase: JobPhase
    config_error: bool = False  # exited with the "bad input" code: retrying cannot help
    message: str = ""


@dataclass(frozen=True)
class Observed:
    outputs: Mapping[str, Output] = field(default_factory=dict)  # by stage key
    looked_up: frozenset[str] = frozenset()  # stage keys (and the resolution key) looked for, found or not
    jobs: tuple[JobState, ...] = ()  # stage Jobs, and the `sources` Jobs
    sources: Sources | None = None  # what the stages read, resolved to content
    resolve: StageRef | None = None  # where a resolution by Job is kept; None: the executor resolves in-process


@dataclass(frozen=True)
class Resolve:
    """Resolve the sources in-process and report them in `Observed.sources`."""

    stage: str = SOURCES


@dataclass(frozen=True)
class Lookup:
    """Read the manifest at `ref.prefix` and report it (or its absence) in Observed (for the `sources` step: the
    resolved sources it holds)."""

    stage: str
    ref: StageRef


@dataclass(frozen=True)
class CreateJob:
    stage: str
    ref: StageRef
    attempt: int
    name: str


@dataclass(frozen=True)
class Wait:
    stage: str
    job: str
    reason: str


@dataclass(frozen=True)
class SuspendJob:
    stage: str
    job: str


@dataclass(frozen=True)
class ResumeJob:
    stage: str
    job: str


@dataclass(frozen=True)
class Idle:
    """Suspended with nothing running."""

    stage: str


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Fail:
    stage: str
    reason: str


Action = Resolve | Lookup | CreateJob | Wait | SuspendJob | ResumeJob | Idle | Done | Fail

StagePhase = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "Cached", "Failed"]


@dataclass(frozen=True)
class StageView:
    phase: StagePhase
    ref: StageRef | None = None
    job: JobState | None = None
    attempts: int = 0
    message: str = ""


@dataclass(frozen=True)
class Plan:
    action: Action
    stages: Mapping[str, StageView]
    sources: StageView = StageView("Pending")  # the resolution step

    @property
    def current_stage(self) -> str | None:
        return getattr(self.action, "stage", None)


def job_name(run: str, stage: str, key: str, attempt: int) -> str:
    """Deterministic: the same run, stage, key and attempt always name the same Job (creation is idempotent)."""
    name = f"{run}-{stage}-{key[:8]}"
    if attempt > 1:
        name += f"-{attempt}"
    assert len(name) <= JOB_NAME_MAX, name
    return name


def plan(namespace: str, run: str, spec: FineTuneRunSpec, observed: Observed) -> Plan:
    resolving, resolution = _resolution(run, spec, observed)
    if resolving is not None:
        return Plan(resolving, {stage: StageView("Pending") for stage in STAGES}, resolution)
    sources = observed.sources
    assert sources is not None  # _resolution asks for them until they are known
    enabled = enabled_stages(spec)
    views: dict[str, StageView] = {}
    digests: dict[str, str] = {}
    action: Action | None = None
    for stage in enabled:
        if action is not None:
            views[stage] = StageView("Pending")
            continue
        ref = stage_ref(namespace, run, spec, stage, digests, sources)
        jobs = sorted((j for j in observed.jobs if j.stage == stage), key=lambda j: j.attempt)
        ours = [j for j in jobs if j.key == ref.key]
        output = observed.outputs.get(ref.key)
        if output is not None:
            digests[stage] = output.digest
            # Made by a Job of ours, not reused: one that succeeded, or one that published and is still finishing
            # (a Job completes some moments after its job wrote the manifest, and the run may settle in between).
            produced = any(j.phase in ("Succeeded", "Running") for j in ours)
            views[stage] = StageView("Succeeded" if produced else "Cached", ref, ours[-1] if ours else None, len(ours))
            continue
        if ref.key not in observed.looked_up:
            action = Lookup(stage, ref)
            views[stage] = StageView("Pending", ref)
            continue
        action, views[stage] = _next_for_stage(run, stage, ref, jobs, ours, spec.suspend)
    for stage in STAGES:
        views.setdefault(stage, StageView("Pending"))
    return Plan(action or Done(), views, resolution)


def _resolution(run: str, spec: FineTuneRunSpec, observed: Observed) -> tuple[Action | None, StageView]:
    """The resolution step: what to do while the sources are not known (None once they are), and its view."""
    ref = observed.resolve
    if ref is None:
        return (None, StageView("Succeeded")) if observed.sources is not None else (Resolve(), StageView("Pending"))
    jobs = sorted((j for j in observed.jobs if j.stage == SOURCES), key=lambda j: j.attempt)
    ours = [j for j in jobs if j.key == ref.key]
    if observed.sources is not None:
        produced = any(j.phase in ("Succeeded", "Running") for j in ours)
        return None, StageView("Succeeded" if produced else "Cached", ref, ours[-1] if ours else None, len(ours))
    if ref.key not in observed.looked_up:
        return Lookup(SOURCES, ref), StageView("Pending", ref)
    return _next_for_stage(run, SOURCES, ref, jobs, ours, spec.suspend)


def _next_for_stage(
    run: str, stage: str, ref: StageRef, jobs: list[JobState], ours: list[JobState], suspend: bool
) -> tuple[Action, StageView]:
    active = [j for j in jobs if j.phase in ("Queued", "Running", "Suspended")]
    # A Job for an older key (the spec was edited while it ran) finishes first: never two Jobs for one stage.
    stale = [j for j in active if j.key != ref.key]
    if stale:
        job = stale[-1]
        if suspend and job.phase != "Suspended":
            return SuspendJob(stage, job.name), StageView("Running", ref, job, len(ours))
        return Wait(stage, job.name, "a Job for the previous spec is still running"), StageView(
            job.phase, ref, job, len(ours), "waiting for the Job of the previous spec"
        )
    latest = ours[-1] if ours else None
    if latest is not None and latest.phase in ("Queued", "Running", "Suspended"):
        if suspend and latest.phase != "Suspended":
            return SuspendJob(stage, latest.name), StageView("Suspended", ref, latest, len(ours))
        if not suspend and latest.phase == "Suspended":
            return ResumeJob(stage, latest.name), StageView("Running", ref, latest, len(ours))
        phase: StagePhase = "Suspended" if latest.phase == "Suspended" else latest.phase
        return Wait(stage, latest.name, latest.phase), StageView(phase, ref, latest, len(ours), latest.message)
    if latest is not None and latest.phase == "Succeeded":
        reason = f"Job {latest.name} succeeded but published no output"
        return Fail(stage, reason), StageView("Failed", ref, latest, len(ours), reason)
    if latest is not None and latest.phase == "Failed" and (latest.config_error or latest.attempt >= MAX_ATTEMPTS):
        reason = latest.message or f"Job {latest.name} failed"
        return Fail(stage, reason), StageView("Failed", ref, latest, len(ours), reason)
    if suspend:
        return Idle(stage), StageView("Suspended", ref, latest, len(ours), "run suspended")
    attempt = latest.attempt + 1 if latest is not None else 1
    name = job_name(run, stage, ref.key, attempt)
    return CreateJob(stage, ref, attempt, name), StageView("Pending", ref, latest, len(ours))
