"""FineTuneRun status: what the operator (or `kubetune run`) observed, written back onto the resource. Like the
spec's types (types.py), the single source of truth for the CRD's status schema; field docstrings become its
descriptions.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from kubetune.api.base import ApiModel, ListMapKeys
from kubetune.api.notify import NotificationStatus
from kubetune.api.types import Stage

RunPhase = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "Failed"]
StagePhase = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "Cached", "Failed", "Skipped"]


class Condition(ApiModel):
    """A Kubernetes-style condition."""

    type: Annotated[str, Field(max_length=316)]
    """Ready, Progressing, Failed, Stalled (the run cannot go on by itself: reason says why) or StoreReachable."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: Annotated[str, Field(max_length=1024)]
    """CamelCase reason."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable detail."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""
    observed_generation: Annotated[int, Field(ge=0)] = 0
    """The spec generation this condition was computed from."""


class Artifact(ApiModel):
    """A file a stage produced."""

    name: str
    """Path of the file within the stage output."""
    uri: str
    """Full store URI of the file."""
    size: Annotated[int, Field(ge=0)]
    """Bytes."""
    sha256: str
    """Content digest."""


class TrainingProgress(ApiModel):
    """Live training progress mirrored from the train job's progress.json."""

    step: int | None = None
    """Optimizer steps done."""
    total_steps: int | None = None
    """Optimizer steps planned."""
    epoch: float | None = None
    """Epochs done (fractional)."""
    loss: float | None = None
    """Latest training loss."""
    eval_loss: float | None = None
    """Latest held-out loss on the eval split (at the newest checkpoint)."""
    base_eval_loss: float | None = None
    """The base model's held-out loss, measured before training."""
    learning_rate: float | None = None
    """Current learning rate."""
    tokens_per_second: float | None = None
    """Real (non-padding) tokens per second."""
    eta_seconds: int | None = None
    """Estimated seconds left."""
    last_checkpoint: str | None = None
    """Newest complete checkpoint."""
    percent: int | None = None
    """step / totalSteps in percent."""


class StageStatus(ApiModel):
    """What one stage did."""

    phase: StagePhase = "Pending"
    """Pending, Queued, Running, Suspended, Succeeded, Cached (output reused), Failed or Skipped."""
    job_name: str | None = None
    """The stage's Job."""
    attempts: int = 0
    """Jobs started for this stage and input key."""
    start_time: str | None = None
    """When the stage started (RFC 3339)."""
    completion_time: str | None = None
    """When the stage finished (RFC 3339)."""
    input_key: str | None = None
    """Content key of the stage's inputs: same key, same output."""
    output_digest: str | None = None
    """Content digest of the stage's output: sha256 of the stage name and its files' sorted `path size sha256`
    lines (no timestamps), what later stages' keys hash. Identical content has one digest, in any store."""
    outputs: list[Artifact] = Field(default_factory=list)
    """Files the stage published (large stages list their main files)."""
    message: str | None = None
    """Why the stage is in this phase."""


class StagesStatus(ApiModel):
    """One block per stage."""

    dataset: StageStatus | None = None
    """The dataset stage."""
    train: StageStatus | None = None
    """The train stage."""
    merge: StageStatus | None = None
    """The merge stage."""
    convert: StageStatus | None = None
    """The convert stage."""
    evaluate: StageStatus | None = None
    """The evaluate stage."""
    publish: StageStatus | None = None
    """The publish stage."""


class ResolvedSourceStatus(ApiModel):
    """One input of the run, resolved to content."""

    uri: str
    """Where it is read from."""
    digest: str
    """sha256 of its content listing (local files by sha256, store objects by ETag): what the stage keys hash."""
    revision: str | None = None
    """The commit an hf:// revision pointed to when resolved."""


class SourcesStatus(ApiModel):
    """The step before the stages: what they read, resolved to content (set kubetune.dev/refresh to redo it)."""

    phase: StagePhase = "Pending"
    """Pending, Queued, Running, Succeeded, Cached (resolved earlier for the same sources) or Failed."""
    job_name: str | None = None
    """The resolution Job (none when `kubetune run` resolves in-process)."""
    input_key: str | None = None
    """Key of the resolution: the spec's source fields, the run's uid, the job image and kubetune.dev/refresh."""
    observed_generation: int | None = None
    """The spec generation these sources apply to."""
    refresh: str | None = None
    """The run's kubetune.dev/refresh annotation they were resolved under."""
    dataset: ResolvedSourceStatus | None = None
    """The dataset tree (structure file and topics/)."""
    template: ResolvedSourceStatus | None = None
    """The chat template."""
    base_model: ResolvedSourceStatus | None = None
    """The base model."""
    message: str | None = None
    """Why the step is in this phase."""


class FineTuneRunStatus(ApiModel):
    """Observed state, written by the operator (or `kubetune run`)."""

    phase: RunPhase | None = None
    """Pending, Queued, Running, Suspended, Succeeded or Failed."""
    observed_generation: int | None = None
    """The spec generation this status describes."""
    current_stage: Stage | None = None
    """The stage running, queued or last finished."""
    progress_text: str | None = None
    """Short progress for `kubectl get`, e.g. `train 120/400 (30%)`."""
    conditions: Annotated[list[Condition], ListMapKeys("type")] = Field(default_factory=list)
    """Ready, Progressing, Failed, Stalled and StoreReachable conditions, one of each type."""
    sources: SourcesStatus | None = None
    """What the stages read, resolved to content digests."""
    stages: StagesStatus = Field(default_factory=StagesStatus)
    """One block per stage."""
    progress: TrainingProgress | None = None
    """Live training progress."""
    artifacts: list[Artifact] = Field(default_factory=list)
    """The GGUF files and other final artifacts."""
    message: str | None = None
    """Why the run is in this phase."""
    notifications: dict[str, NotificationStatus] | None = None
    """Each transition's notification per webhook, by id: what was sent, so none is sent twice."""
