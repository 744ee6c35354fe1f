"""A run's page data from its status document, its store and its events: the part both sources share.

Reads only what the stages publish: manifests (which files exist, with sizes and digests), the train stage's
`metrics.csv` (or, while it trains, its latest checkpoint's `trainer_state.json` and `progress.json`), and the
evaluate stage's `results.json`. Anything unreadable becomes a problem line on the page, never an error page.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from kubetune.api.types import STAGES
from kubetune.stages import KEY_PREFIX_LENGTH
from kubetune.store import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ObjectNotFoundError,
    Store,
    StoreError,
    join_key,
    read_manifest,
)
from kubetune.store.verify import output_problem
from kubetune.webview.model import (
    EventRow,
    FetchedFile,
    FileRow,
    GateReport,
    LossHistory,
    LossPoint,
    NotFound,
    PromptAnswer,
    RunPage,
    RunSummary,
    StageRow,
)

LIVE_FIELDS = ("step", "totalSteps", "epoch", "loss", "tokensPerSecond", "etaSeconds")
CHECKPOINTS = "checkpoints"  # the train stage's checkpoint folder under its prefix (jobs/checkpoints.py)
Obj = Mapping[str, Any]


def mapping(value: Any) -> Obj:
    """`value` where it is an object, else an empty one: a status edited by hand (or cut short) shows what it still
    holds instead of failing the page."""
    return value if isinstance(value, Mapping) else {}


def _count(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else 0


def summary(document: Obj) -> RunSummary:
    meta, status = mapping(document.get("metadata")), mapping(document.get("status"))
    return RunSummary(
        namespace=str(meta.get("namespace") or "default"), name=str(meta.get("name") or ""),
        phase=str(status.get("phase") or ""), current_stage=str(status.get("currentStage") or ""),
        progress_text=str(status.get("progressText") or ""), created=str(meta.get("creationTimestamp") or ""),
    )


def stage_rows(status: Obj) -> tuple[StageRow, ...]:
    blocks = mapping(status.get("stages"))
    rows = []
    for stage in STAGES:
        block = blocks.get(stage)
        if not isinstance(block, dict):
            continue
        rows.append(StageRow(
            name=stage, phase=str(block.get("phase") or ""), job=str(block.get("jobName") or ""),
            attempts=_count(block.get("attempts")), started=str(block.get("startTime") or ""),
            finished=str(block.get("completionTime") or ""), message=str(block.get("message") or ""),
        ))
    return tuple(rows)


def output_folder(namespace: str, name: str, stage: str, block: Obj) -> str | None:
    """The store folder of a stage that published: from its outputs' URIs (`…/<ns>/<run>/<stage>/<folder>/<file>`)."""
    head = f"/{namespace}/{name}/{stage}/"
    outputs = block.get("outputs")
    for output in outputs if isinstance(outputs, list) else []:
        uri = str(output.get("uri") or "") if isinstance(output, dict) else ""
        at = uri.rfind(head)
        if at >= 0:
            folder = uri[at + len(head):].split("/", 1)[0]
            if folder and folder not in (".", ".."):
                return f"{namespace}/{name}/{stage}/{folder}"
    return None


def event_rows(events: Sequence[Obj]) -> tuple[EventRow, ...]:
    rows = [EventRow(time=str(e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or ""),
                     type=str(e.get("type") or ""), reason=str(e.get("reason") or ""),
                     message=str(e.get("message") or "")) for e in events]
    return tuple(sorted(rows, key=lambda row: row.time))


class RunReader:
    """The page data of one run whose stage outputs live in `store` (None: no store could be opened)."""

    def __init__(self, document: Obj, store: Store | None, problems: list[str] | None = None) -> None:
        self.summary = summary(document)
        self.status = mapping(document.get("status"))
        self.store = store
        self.problems = list(problems or [])
        self._prefixes: dict[str, str | None] = {}
        self._checked: set[str] = set()  # stages whose published files were checked against their manifest

    def prefix(self, stage: str) -> str | None:
        if stage not in self._prefixes:
            block = mapping(self.status.get("stages")).get(stage)
            found = None
            if isinstance(block, dict):
                found = (output_folder(self.summary.namespace, self.summary.name, stage, block)
                         or self._working_folder(stage, block))
            self._prefixes[stage] = found
        return self._prefixes[stage]

    def _working_folder(self, stage: str, block: Obj) -> str | None:
        """A stage that has not published: its folder is named by its input key, except train's, whose name leaves
        out extraEpochs (stages.prefix_key) and cannot be told from the status; that one is the folder whose
        progress.json was written last."""
        key, store = block.get("inputKey"), self.store
        if not isinstance(key, str) or not key or store is None:
            return None
        root = f"{self.summary.namespace}/{self.summary.name}/{stage}"
        listed = self._read(f"{stage} outputs", lambda: store.list(root)) or []
        folders = {info.key[len(root) + 1:].split("/", 1)[0] for info in listed}
        if key[:KEY_PREFIX_LENGTH] in folders:
            return f"{root}/{key[:KEY_PREFIX_LENGTH]}"
        written = {}
        for folder in folders:
            progress = self._json(f"{root}/{folder}/progress.json")
            if isinstance(progress, dict):
                written[folder] = str(progress.get("updatedAt") or "")
        return f"{root}/{max(written, key=lambda f: written[f])}" if written else None

    def page(self, events: Sequence[Obj]) -> RunPage:
        manifests = {stage: m for stage in STAGES if (m := self._manifest(stage)) is not None}
        status_training = self.status.get("progress")
        training = dict(status_training) if isinstance(status_training, dict) else {}
        if "train" not in manifests:
            # Training now: its progress.json is newer than any status (`kubetune run` writes one per stage).
            training.update({k: v for k, v in self._progress().items() if k in LIVE_FIELDS})
        return RunPage(
            summary=self.summary, message=str(self.status.get("message") or ""), stages=stage_rows(self.status),
            training=training,
            loss=self._loss(manifests.get("train")), events=event_rows(events), gate=self._gate(),
            files=tuple(FileRow(stage, f.path, f.size, f.sha256) for stage, m in manifests.items() for f in m.files),
            problems=tuple(self.problems),
        )

    def download(self, stage: str, path: str) -> FetchedFile:
        """Only a file the stage's manifest lists: a request names a manifest entry, never a store key."""
        manifest = self._manifest(stage) if stage in STAGES else None
        entry = next((f for f in manifest.files if f.path == path), None) if manifest is not None else None
        prefix = self.prefix(stage)
        if entry is None or prefix is None or self.store is None:
            raise NotFound(f"{stage}/{path} is not a published file of {self.summary.namespace}/{self.summary.name}")
        key = join_key(prefix, entry.path)
        return FetchedFile(FileRow(stage, entry.path, entry.size, entry.sha256), self.store.read_chunks(key),
                           self.store.uri_for(key))

    # --- what the stages published ------------------------------------------------------------------------------

    def _read(self, what: str, read: Any) -> Any:
        try:
            return read()
        except (StoreError, ManifestError, OSError, ValueError, TypeError, KeyError) as error:
            self.problems.append(f"{what}: {error}")
            return None

    def _manifest(self, stage: str) -> Manifest | None:
        prefix = self.prefix(stage)
        if prefix is None or self.store is None:
            return None
        store = self.store
        found: Manifest | None = self._read(f"{stage} manifest", lambda: read_manifest(store, prefix))
        if stage not in self._checked:
            # A file deleted or cut short since it was published, or the whole output: said once.
            self._checked.add(stage)
            if found is not None:
                problem = self._read(f"{stage} output", lambda: output_problem(store, prefix, found, sizes_only=True))
            elif output_folder(self.summary.namespace, self.summary.name, stage,
                               mapping(mapping(self.status.get("stages")).get(stage))):
                problem = f"{store.uri_for(join_key(prefix, MANIFEST_NAME))}: missing, though the run published it"
            else:
                problem = None  # not published yet
            if problem:
                self.problems.append(problem)
        return found

    def _json(self, key: str) -> Any:
        store = self.store
        if store is None:
            return None
        try:
            raw = store.get_bytes(key)
        except ObjectNotFoundError:
            return None  # not written yet
        except StoreError as error:
            self.problems.append(f"{key}: {error}")
            return None
        return self._read(key, lambda: json.loads(raw))

    def _loss(self, train: Manifest | None) -> LossHistory:
        prefix = self.prefix("train")
        if prefix is None or self.store is None:
            return LossHistory()
        store = self.store
        rows: list[dict[str, Any]] = []
        if train is not None and any(f.path == "metrics.csv" for f in train.files):
            text = self._read("metrics.csv", lambda: store.get_bytes(join_key(prefix, "metrics.csv")).decode())
            rows = list(csv.DictReader(io.StringIO(text))) if text else []
        else:
            rows = self._checkpoint_metrics(prefix)
            progress = self._progress()
            if "step" in progress:
                rows.append({"step": progress.get("step"), "loss": progress.get("loss"),
                             "eval_loss": progress.get("evalLoss")})
        return LossHistory(train=_points(rows, "loss"), eval=_points(rows, "eval_loss"))

    def _progress(self) -> dict[str, Any]:
        prefix = self.prefix("train")
        found = self._json(join_key(prefix, "progress.json")) if prefix is not None else None
        return found if isinstance(found, dict) else {}

    def _checkpoint_metrics(self, prefix: str) -> list[dict[str, Any]]:
        """Training in progress: the metrics saved in its latest published checkpoint."""
        store, root = self.store, join_key(prefix, CHECKPOINTS)
        assert store is not None
        listed = self._read("checkpoints", lambda: store.list(root)) or []
        names = sorted({info.key[len(root) + 1:].split("/", 1)[0] for info in listed
                        if info.key.endswith("/manifest.json")})
        state = self._json(join_key(root, f"{names[-1]}/trainer_state.json")) if names else None
        if not isinstance(state, dict):
            return []
        # The training rows, then the held-out losses (one per checkpoint): each column makes its own line.
        return [row for name in ("metrics", "eval_losses") if isinstance(state.get(name), list)
                for row in state[name] if isinstance(row, dict)]

    def _gate(self) -> tuple[GateReport, ...]:
        prefix = self.prefix("evaluate")
        # A failed gate keeps results.json beside the (absent) manifest; a passed one publishes it.
        reports = self._json(join_key(prefix, "results.json")) if prefix is not None else None
        if not isinstance(reports, list):
            return ()
        parsed = self._read("results.json", lambda: tuple(_gate_report(r) for r in reports))
        return parsed or ()


def _points(rows: list[dict[str, Any]], column: str) -> tuple[LossPoint, ...]:
    points: list[LossPoint] = []
    for row in rows:
        try:
            step, loss = float(row["step"]), float(row[column])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(step) and math.isfinite(loss) and (not points or step > points[-1].step):
            points.append(LossPoint(step, loss))
    return tuple(points)


def _optional_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _gate_report(report: Any) -> GateReport:
    prompts = tuple(PromptAnswer(str(p["prompt"]), str(p["answer"]), bool(p["passed"]), str(p.get("reason") or ""))
                    for p in report["prompts"])
    return GateReport(file=str(report["file"]), pass_rate=float(report["passRate"]),
                      top1_agreement=_optional_float(report.get("top1Agreement")),
                      mean_kl=_optional_float(report.get("meanKl")), prompts=prompts)
