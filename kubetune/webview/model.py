"""What the pages show, as plain data, and the interface a source of runs implements (local state or the cluster)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from kubetune.store.errors import IntegrityError


@dataclass(frozen=True)
class RunSummary:
    namespace: str
    name: str
    phase: str
    current_stage: str
    progress_text: str
    created: str


@dataclass(frozen=True)
class StageRow:
    name: str
    phase: str
    job: str
    attempts: int
    started: str
    finished: str
    message: str


@dataclass(frozen=True)
class FileRow:
    """One file of a stage's published output (its manifest's entry)."""

    stage: str
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class EventRow:
    time: str
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class LossPoint:
    step: float
    loss: float


@dataclass(frozen=True)
class LossHistory:
    train: tuple[LossPoint, ...] = ()
    eval: tuple[LossPoint, ...] = ()


@dataclass(frozen=True)
class PromptAnswer:
    prompt: str
    answer: str
    passed: bool
    reason: str


@dataclass(frozen=True)
class GateReport:
    """The evaluate stage's answers for one GGUF file."""

    file: str
    pass_rate: float
    top1_agreement: float | None
    mean_kl: float | None
    prompts: tuple[PromptAnswer, ...]


@dataclass(frozen=True)
class RunPage:
    summary: RunSummary
    message: str = ""
    stages: tuple[StageRow, ...] = ()
    training: dict[str, Any] = field(default_factory=dict)  # status.progress: step, totalSteps, loss, ETA…
    loss: LossHistory = LossHistory()
    files: tuple[FileRow, ...] = ()
    events: tuple[EventRow, ...] = ()
    gate: tuple[GateReport, ...] = ()
    problems: tuple[str, ...] = ()  # what could not be read (the store unreachable…): shown, never a crash

    @property
    def active(self) -> bool:
        return self.summary.phase in ("", "Pending", "Queued", "Running")


class FetchedFile:
    """A published file streamed from the store, checked against its manifest entry as it goes."""

    def __init__(self, row: FileRow, chunks: Iterator[bytes], uri: str) -> None:
        self.row = row
        self.uri = uri
        self._chunks = chunks

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def verified(self) -> Iterator[bytes]:
        """The file's chunks, each held back until the next one arrives: the last goes out only once the size and
        sha256 match, so an object changed in the store ends in a cut-off download, never in wrong bytes whole."""
        digest, size, held = hashlib.sha256(), 0, b""
        for chunk in self._chunks:
            digest.update(chunk)
            size += len(chunk)
            if held:
                yield held
            held = chunk
        if size != self.row.size or digest.hexdigest() != self.row.sha256:
            raise IntegrityError(self.uri, self.row.sha256, digest.hexdigest())
        if held:
            yield held


class NotFound(LookupError):
    """No such run, or no such file in a run's published outputs."""


class RunSource(Protocol):
    """Where the view reads runs from. Every method only reads."""

    def runs(self) -> list[RunSummary]: ...

    def page(self, namespace: str, name: str) -> RunPage:
        """The run's page data; raises NotFound for a run that does not exist."""
        ...

    def download(self, namespace: str, name: str, stage: str, path: str) -> FetchedFile:
        """A file a stage's manifest lists, verified against its sha256; NotFound for anything else."""
        ...
