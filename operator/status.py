"""The FineTuneRun status (ARCHITECTURE.md §6) from a plan and what was observed, and the transitions since the
previous status (each becomes a Kubernetes Event). Pure: the clock comes in as `now`.

Conditions keep their lastTransitionTime while their status value holds, so recomputing an unchanged run gives an
identical status and nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from kubetune.api import run_status as rs
from kubetune.api import types as t
from kubetune.operator.observe import ObservedJob
from kubetune.operator.problems import Problem
from kubetune.planner import CreateJob, Done, Fail, Idle, Lookup, Plan, ResumeJob, StageView, SuspendJob, Wait
from kubetune.sources import SOURCES, ResolvedSource, Sources
from kubetune.stages import enabled_stages
from kubetune.store import LINEAGE_NAME, Manifest, ManifestFile, content_digest

MAX_STAGE_OUTPUTS = 20
# The files that say what a stage produced, listed first when a stage has many (checkpoints, tokenizer files…).
MAIN_SUFFIXES = (".gguf", ".safetensors", ".jsonl", ".png", ".json", ".md")
ACTIVE_PHASES = ("Pending", "Queued", "Running")
# status.conditions[].message's maxLength (run_status.Condition): a longer reason (an API server's refusal quotes the
# values it refused) is cut, or the status could never be written and the run would stay as it was.
CONDITION_MESSAGE_MAX = 32768
TRAINING_FIELDS = {
    "step": "step", "totalSteps": "total_steps", "epoch": "epoch", "loss": "loss", "learningRate": "learning_rate",
    "tokensPerSecond": "tokens_per_second", "etaSeconds": "eta_seconds", "lastCheckpoint": "last_checkpoint",
    "evalLoss": "eval_loss", "baseEvalLoss": "base_eval_loss",
}

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Transition:
    """Something that changed since the previous status: one Kubernetes Event."""

    type: EventType
    reason: str
    message: str
    stage: str | None = None  # the stage it is about; None for the run as a whole


@dataclass(frozen=True)
class StatusInputs:
    spec: t.FineTuneRunSpec
    generation: int
    plan: Plan
    now: str  # RFC 3339
    store_uri: str = ""  # root of the run's store, for artifact URIs
    jobs: Mapping[str, ObservedJob] = field(default_factory=dict)  # by Job name
    manifests: Mapping[str, Manifest] = field(default_factory=dict)  # by stage, outputs that exist
    training: Mapping[str, Any] | None = None  # the train stage's progress.json
    sources: Sources | None = None  # what the stages read, once resolved
    refresh: str = ""  # the run's kubetune.dev/refresh annotation
    previous: Mapping[str, Any] = field(default_factory=dict)  # the run's .status as it is now
    problem: Problem | None = None  # what holds the run up (problems.py), if anything


@dataclass(frozen=True)
class StatusUpdate:
    status: dict[str, Any]
    transitions: tuple[Transition, ...]

    def changed(self, previous: Mapping[str, Any]) -> bool:
        return self.status != dict(previous)


def compute_status(inputs: StatusInputs) -> StatusUpdate:
    previous = inputs.previous
    phase, stage, message = _run_phase(inputs.plan, inputs.spec)
    problem = inputs.problem if phase not in ("Failed", "Succeeded") else None
    if problem is not None:
        message = problem.message
    stages = {name: _stage_status(inputs, name, problem) for name in t.STAGES}
    training = _training(inputs.training, previous.get("progress"))
    status = rs.FineTuneRunStatus(
        phase=phase,
        observed_generation=inputs.generation,
        current_stage=stage,
        progress_text=_progress_text(phase, stage, stages, training),
        conditions=_conditions(phase, stage, message, inputs, problem),
        sources=_sources_status(inputs),
        stages=rs.StagesStatus(**stages),
        progress=training,
        artifacts=_artifacts(inputs),
        message=message,
    ).to_manifest()
    return StatusUpdate(status, tuple(_transitions(previous, status)))


def store_problem_status(previous: Mapping[str, Any], generation: int, now: str, problem: Problem) -> StatusUpdate:
    """The status while the store cannot be read: nothing can be known about the stages, so their blocks stay as
    they were; the phase too, unless the spec changed since (then the run is Pending its first look at the store)."""
    phase: rs.RunPhase = previous.get("phase") or "Pending"
    if previous.get("observedGeneration") != generation:
        phase = "Pending"
    stage = previous.get("currentStage")
    inputs = StatusInputs(spec=t.FineTuneRunSpec(), generation=generation, plan=Plan(Done(), {}), now=now,
                          previous=previous, problem=problem)
    status = {
        **previous,
        "phase": phase,
        "observedGeneration": generation,
        "conditions": [c.to_manifest() for c in _conditions(phase, stage, problem.message, inputs, problem)],
        "message": problem.message,
    }
    if phase != previous.get("phase"):
        status["progressText"] = f"{stage} {phase.lower()}" if stage else phase.lower()
    return StatusUpdate(status, tuple(_transitions(previous, status)))


def failed_plan(plan: Plan, stage: str, reason: str) -> Plan:
    """The plan as it must read when acting on it failed for a reason no retry can fix."""
    view = plan.stages.get(stage) or StageView("Pending")
    return Plan(Fail(stage, reason), {**plan.stages, stage: StageView("Failed", view.ref, view.job, view.attempts,
                                                                      reason)})


# --- run -------------------------------------------------------------------------------------------------------


def _run_phase(plan: Plan, spec: t.FineTuneRunSpec) -> tuple[rs.RunPhase, t.Stage | None, str | None]:
    action = plan.action
    enabled = enabled_stages(spec)
    if isinstance(action, Done):
        return "Succeeded", cast(t.Stage, enabled[-1]), None
    if action.stage == SOURCES:
        return _resolution_phase(plan)
    stage = cast(t.Stage, action.stage)
    if isinstance(action, Fail):
        return "Failed", stage, f"stage {stage} failed: {action.reason}"
    if isinstance(action, (Idle, SuspendJob)):
        return "Suspended", stage, "suspended (spec.suspend: true)"
    if isinstance(action, Wait):
        view = plan.stages[stage]
        job_phase = view.job.phase if view.job is not None else "Running"
        if spec.suspend and job_phase == "Suspended":
            return "Suspended", stage, "suspended (spec.suspend: true)"
        stale = view.job is not None and view.ref is not None and view.job.key != view.ref.key
        message = (view.message or None) if stale else None
        if job_phase == "Queued":
            return "Queued", stage, message
        return "Running", stage, message
    if isinstance(action, ResumeJob):
        return "Running", stage, None
    assert isinstance(action, (CreateJob, Lookup))
    started = any(v.phase not in ("Pending",) for v in plan.stages.values())
    return ("Running" if started else "Pending"), stage, None


def _resolution_phase(plan: Plan) -> tuple[rs.RunPhase, None, str]:
    """While the sources are resolved no stage is current: the stages' keys are not known yet."""
    action, job = plan.action, plan.sources.job
    if isinstance(action, Fail):
        return "Failed", None, f"resolving the sources failed: {action.reason}"
    if isinstance(action, (Idle, SuspendJob)):
        return "Suspended", None, "suspended (spec.suspend: true)"
    if isinstance(action, Wait):
        return ("Queued" if job is not None and job.phase == "Queued" else "Running"), None, "resolving the sources"
    return "Pending", None, "resolving the sources"


def _sources_status(inputs: StatusInputs) -> rs.SourcesStatus | None:
    view, resolved = inputs.plan.sources, inputs.sources
    if view.ref is None and resolved is None:
        return None

    def block(source: ResolvedSource | None) -> rs.ResolvedSourceStatus | None:
        return None if source is None else rs.ResolvedSourceStatus(uri=source.uri, digest=source.digest,
                                                                  revision=source.revision)

    return rs.SourcesStatus(
        phase=view.phase,
        job_name=view.job.name if view.job is not None else None,
        input_key=view.ref.key if view.ref is not None else None,
        observed_generation=inputs.generation,
        refresh=inputs.refresh or None,
        dataset=block(resolved.dataset if resolved is not None else None),
        template=block(resolved.template if resolved is not None else None),
        base_model=block(resolved.base_model if resolved is not None else None),
        message=view.message or None,
    )


def _progress_text(phase: str, stage: str | None, stages: Mapping[str, rs.StageStatus],
                   training: rs.TrainingProgress | None) -> str:
    if phase == "Succeeded":
        done = sum(1 for s in stages.values() if s.phase in ("Succeeded", "Cached"))
        return f"done ({done} stages)"
    if stage is None:
        return phase.lower()
    if phase == "Running" and stage == "train" and training is not None and training.percent is not None:
        return f"train {training.step}/{training.total_steps} ({training.percent}%)"
    return f"{stage} {phase.lower()}"


def _conditions(phase: rs.RunPhase, stage: str | None, message: str | None, inputs: StatusInputs,
                problem: Problem | None) -> list[rs.Condition]:
    doing = f"stage {stage} is {phase.lower()}" if stage else f"the run is {phase.lower()}"
    values = {
        "Ready": ("True", "Succeeded", "every stage has its output") if phase == "Succeeded"
        else ("False", phase, message or doing),
        "Progressing": ("True", f"Stage{phase}", message or doing) if phase in ACTIVE_PHASES
        else ("False", phase, message or "every stage has its output"),
        "Failed": ("True", "StageFailed", message or doing) if phase == "Failed" else ("False", phase, ""),
        # kstatus' abnormal-true condition: the run cannot move on without a change from outside (see problems.py).
        "Stalled": ("True", problem.reason, problem.message) if problem is not None else ("False", "NotStalled", ""),
        "StoreReachable": ("False", problem.reason, problem.message) if problem is not None and problem.is_store
        else ("True", "StoreReachable", "the store answers") if inputs.store_uri or problem is not None
        else ("Unknown", "NotRead", "the store was not read"),
    }
    previous = {c.get("type"): c for c in inputs.previous.get("conditions") or [] if isinstance(c, dict)}
    conditions = []
    for kind, (value, reason, text) in values.items():
        before = previous.get(kind) or {}
        since = before.get("lastTransitionTime") if before.get("status") == value else None
        conditions.append(rs.Condition(type=kind, status=value, reason=reason, message=text[:CONDITION_MESSAGE_MAX],
                                      last_transition_time=since or inputs.now,
                                      observed_generation=inputs.generation))
    return conditions


# --- stages ----------------------------------------------------------------------------------------------------


def _stage_status(inputs: StatusInputs, stage: str, problem: Problem | None) -> rs.StageStatus:
    if stage == "evaluate" and not inputs.spec.evaluate.enabled:
        return rs.StageStatus(phase="Skipped", message="evaluate.enabled is false")
    if stage == "publish" and not inputs.spec.publish.requested:
        return rs.StageStatus(phase="Skipped", message="spec.publish asks for nothing")
    view = inputs.plan.stages[stage]
    if view.ref is None:
        return rs.StageStatus(phase=view.phase)
    before = (inputs.previous.get("stages") or {}).get(stage) or {}
    same_key = before.get("inputKey") == view.ref.key
    kept = before if same_key else {}
    job = inputs.jobs.get(view.job.name) if view.job is not None else None
    manifest = inputs.manifests.get(stage)
    phase = view.phase
    if phase == "Cached" and kept.get("phase") == "Succeeded":
        phase = "Succeeded"  # its Job was cleaned up (ttlSecondsAfterFinished); it still ran for this key
    finished = job.completion_time if job is not None else None
    if finished is None and manifest is not None:
        finished = kept.get("completionTime") or manifest.created_at
    return rs.StageStatus(
        phase=phase,
        job_name=view.job.name if view.job is not None else kept.get("jobName"),
        attempts=max(view.attempts, int(kept.get("attempts") or 0)),
        start_time=(job.start_time if job is not None else None) or kept.get("startTime"),
        completion_time=finished if phase in ("Succeeded", "Cached", "Failed") else None,
        input_key=view.ref.key,
        output_digest=content_digest(manifest) if manifest is not None else None,
        outputs=_outputs(inputs.store_uri, view.ref.prefix, manifest) if manifest is not None else [],
        message=problem.message if problem is not None and problem.stage == stage
        else view.message or ("output reused: same inputs as an earlier run" if phase == "Cached" else None),
    )


def _outputs(store_uri: str, prefix: str, manifest: Manifest) -> list[rs.Artifact]:
    def rank(entry: ManifestFile) -> tuple[int, int, str]:
        suffix = next((i for i, s in enumerate(MAIN_SUFFIXES) if entry.path.endswith(s)), len(MAIN_SUFFIXES))
        return (entry.path.count("/"), suffix, entry.path)

    chosen = sorted(manifest.files, key=rank)[:MAX_STAGE_OUTPUTS]
    return [_artifact(store_uri, prefix, entry) for entry in sorted(chosen, key=lambda e: e.path)]


def _artifact(store_uri: str, prefix: str, entry: ManifestFile) -> rs.Artifact:
    root = store_uri.rstrip("/")
    if "://" not in root:
        root = f"file://{root}"
    return rs.Artifact(name=entry.path, uri=f"{root}/{prefix}/{entry.path}", size=entry.size, sha256=entry.sha256)


def _artifacts(inputs: StatusInputs) -> list[rs.Artifact]:
    """The run's deliverables: the GGUF files, and the gate's report once it passed (not lineage.json: provenance)."""
    found: list[rs.Artifact] = []
    for stage, wanted in (("convert", (".gguf",)), ("evaluate", (".json", ".md", ".txt")),
                          ("publish", ("Modelfile", "oci-artifact.json"))):
        manifest, view = inputs.manifests.get(stage), inputs.plan.stages[stage]
        if manifest is None or view.ref is None:
            continue
        found.extend(_artifact(inputs.store_uri, view.ref.prefix, entry)
                     for entry in manifest.files
                     if entry.path.endswith(wanted) and "/" not in entry.path and entry.path != LINEAGE_NAME)
    return found


def _training(progress: Mapping[str, Any] | None, previous: Any) -> rs.TrainingProgress | None:
    if not progress:
        return rs.TrainingProgress.model_validate(previous) if isinstance(previous, dict) else None
    fields = {attr: progress[name] for name, attr in TRAINING_FIELDS.items() if progress.get(name) is not None}
    step, total = fields.get("step"), fields.get("total_steps")
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        fields["percent"] = min(100, 100 * step // total)
    if isinstance(fields.get("eta_seconds"), float):
        fields["eta_seconds"] = round(fields["eta_seconds"])
    return rs.TrainingProgress(**fields) if fields else None


# --- transitions -----------------------------------------------------------------------------------------------


def _transitions(previous: Mapping[str, Any], status: Mapping[str, Any]) -> list[Transition]:
    found: list[Transition] = []
    before_stages, stages = previous.get("stages") or {}, status.get("stages") or {}
    for stage in t.STAGES:
        before, now = before_stages.get(stage) or {}, stages.get(stage) or {}
        old, new = before.get("phase", "Pending"), now.get("phase", "Pending")
        if old == new and before.get("inputKey") == now.get("inputKey"):
            continue
        transition = _stage_transition(stage, old, new, now)
        if transition is not None:
            found.append(transition)
    old_phase, phase = previous.get("phase"), status.get("phase")
    if phase != old_phase:
        kind: EventType = "Warning" if phase == "Failed" else "Normal"
        found.append(Transition(kind, str(phase), _run_event_text(status)))
    problem_event = _problem_transition(previous, status)
    if problem_event is not None:
        found.append(problem_event)
    return found


def _run_event_text(status: Mapping[str, Any]) -> str:
    phase, stage = str(status.get("phase")), status.get("currentStage")
    if phase in ("Failed", "Suspended") and status.get("message"):
        return str(status["message"])
    if phase == "Succeeded":
        blocks = [b for b in (status.get("stages") or {}).values() if isinstance(b, dict)]
        done = sum(1 for b in blocks if b.get("phase") in ("Succeeded", "Cached"))
        reused = sum(1 for b in blocks if b.get("phase") == "Cached")
        return f"FineTuneRun succeeded: {done} stages done" + (f", {reused} of them reused" if reused else "")
    doing = {"Pending": "is next", "Queued": "waits for admission", "Running": "is running",
             "Suspended": "is suspended"}.get(phase, phase.lower())
    return f"FineTuneRun {phase.lower()}: stage {stage} {doing}" if stage else f"FineTuneRun {phase.lower()}"


# A problem that went away: the Event that says so (reason, message).
_RESOLVED = {
    "store": ("StoreReachable", "the store answers again"),
    "PodsNotCreated": ("PodsCreated", "the pods of stage {stage} are created now"),
    "Unschedulable": ("PodsScheduled", "the pods of stage {stage} are scheduled now"),
    "ContainerCannotStart": ("ContainerStarted", "the container of stage {stage} started"),
}


def _problem_transition(previous: Mapping[str, Any], status: Mapping[str, Any]) -> Transition | None:
    """One Event when the run becomes stalled or the reason changes, one when it is not stalled any more (not one per
    reconcile while it lasts)."""
    before, now = _condition(previous, "Stalled"), _condition(status, "Stalled")
    if now.get("status") == "True":
        if before.get("status") == "True" and before.get("reason") == now.get("reason"):
            return None
        return Transition("Warning", str(now.get("reason")), str(now.get("message")))
    if before.get("status") != "True":
        return None
    reason = str(before.get("reason"))
    resolved = _RESOLVED.get("store" if reason.startswith("Store") else reason)
    if resolved is None:
        return None
    return Transition("Normal", resolved[0], resolved[1].format(stage=previous.get("currentStage")))


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if isinstance(c, dict) and c.get("type") == kind), {})



def _stage_transition(stage: str, old: str, new: str, now: Mapping[str, Any]) -> Transition | None:
    job = f" (Job {now['jobName']})" if now.get("jobName") else ""
    digest = str(now.get("outputDigest") or "")[:12]
    if new == "Pending":
        return Transition("Normal", "StageOutdated", f"{stage}: inputs changed; it will run again",
                          stage) if old in ("Succeeded", "Cached", "Failed") else None
    messages = {
        "Queued": f"{stage}: waiting for admission{job}",
        "Running": f"{stage}: running{job}",
        "Suspended": f"{stage}: suspended{job}",
        "Succeeded": f"{stage}: output {digest} published{job}",
        "Cached": f"{stage}: output {digest} reused (same inputs)",
        "Failed": f"{stage}: {now.get('message') or 'failed'}{job}",
        "Skipped": f"{stage}: skipped",
    }
    return Transition("Warning" if new == "Failed" else "Normal", f"Stage{new}", messages.get(new, f"{stage}: {new}"),
                      stage)
