"""What a notification says: one document per transition, and the two bodies it is sent as (plain JSON, Slack).

The JSON body is a stable, versioned document (`schema`, `version`): receivers may rely on every field listed in
README's Notifications section; new fields may be added within a version, none removed or changed in meaning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.notify import NotifyEvent
from kubetune.store import Store, StoreError

SCHEMA = "kubetune.dev/notification"
VERSION = 1
# A gate's answer or a failure's message can be long; a chat message should not be.
MAX_TEXT = 2000
# The evaluate job keeps the gate's full results beside its (unpublished) output when the gate fails.
GATE_RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class GateFailure:
    """The first prompt the fine-tuned GGUF answered unacceptably."""

    file: str
    prompt: str
    answer: str
    reason: str  # the expectation it missed, e.g. "answer lacks 'Nova'"
    expect_contains: tuple[str, ...] = ()
    expect_not_contains: tuple[str, ...] = ()


@dataclass(frozen=True)
class Notification:
    """One transition of one run, as every webhook is told about it."""

    id: str  # unique per transition (and the receivers' idempotency key)
    event: NotifyEvent
    run: str
    namespace: str
    uid: str
    generation: int
    time: str  # RFC 3339
    phase: str  # the run's phase after the transition
    message: str
    stage: str | None = None
    stage_phase: str | None = None
    output_digest: str | None = None
    artifacts: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)  # name, uri, size, sha256
    gate: GateFailure | None = None

    def document(self) -> dict[str, Any]:
        """The plain JSON body."""
        body: dict[str, Any] = {
            "schema": SCHEMA, "version": VERSION, "id": self.id, "event": self.event, "time": self.time,
            "run": {"name": self.run, "namespace": self.namespace, "uid": self.uid, "generation": self.generation},
            "phase": self.phase, "stage": self.stage, "stagePhase": self.stage_phase, "message": self.message,
            "outputDigest": self.output_digest,
            "artifacts": [{k: a.get(k) for k in ("name", "uri", "size", "sha256")} for a in self.artifacts],
            "gate": None,
        }
        if self.gate is not None:
            body["gate"] = {"file": self.gate.file, "prompt": self.gate.prompt, "answer": self.gate.answer,
                            "reason": self.gate.reason, "expectContains": list(self.gate.expect_contains),
                            "expectNotContains": list(self.gate.expect_not_contains)}
        return body

    def title(self) -> str:
        what = {
            "RunStarted": "started", "RunSucceeded": "succeeded", "RunFailed": "failed",
            "StageSucceeded": f"stage {self.stage} succeeded", "StageFailed": f"stage {self.stage} failed",
            "GateFailed": "failed the evaluate gate",
        }[self.event]
        return f"FineTuneRun {self.namespace}/{self.run} {what}"

    def slack(self) -> dict[str, Any]:
        """A Slack incoming-webhook body: `text` for notifications and clients without blocks, `blocks` for the
        rest. Run text is escaped (`&`, `<`, `>`), so a model's answer cannot mention people or inject links."""
        icon = ":x:" if self.event.endswith("Failed") else ":white_check_mark:" if "Succeeded" in self.event \
            else ":arrow_forward:"
        text = f"{icon} {_escape(self.title())}: {_escape(_clip(self.message))}"
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": _clip(self.title(), 150)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _escape(_clip(self.message)) or "—"}},
        ]
        facts = [f"*Phase:* {_escape(self.phase)}"] + ([f"*Stage:* {_escape(self.stage)}"] if self.stage else [])
        if self.output_digest:
            facts.append(f"*Output digest:* `{self.output_digest[:16]}`")
        blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": fact} for fact in facts]})
        if self.gate is not None:
            expectation = self.gate.reason + "".join(
                f"\n• must contain {_escape(json.dumps(e, ensure_ascii=False))}" for e in self.gate.expect_contains
            ) + "".join(
                f"\n• must not contain {_escape(json.dumps(e, ensure_ascii=False))}"
                for e in self.gate.expect_not_contains
            )
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": (
                f"*Prompt* ({_escape(self.gate.file)}):\n{_quote(self.gate.prompt)}\n*Answer:*\n"
                f"{_quote(self.gate.answer)}\n*Expected:* {_escape(expectation)}")}})
        if self.artifacts:
            lines = [f"• `{_escape(str(a.get('name')))}` {a.get('size')} B, sha256 `{str(a.get('sha256'))[:16]}`"
                     for a in self.artifacts[:10]]
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*Artifacts:*\n" + "\n".join(lines)}})
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"{_escape(self.event)} · {_escape(self.time)} · id {_escape(self.id)}"}]})
        return {"text": text, "blocks": blocks}

    def body(self, fmt: str) -> bytes:
        payload = self.slack() if fmt == "slack" else self.document()
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def gate_failure(results: Sequence[Mapping[str, Any]], prompts: Sequence[Mapping[str, Any]]) -> GateFailure | None:
    """The first failed prompt of the evaluate job's `results.json` (one report per GGUF), with the expectations
    the spec gave it (`prompts`: spec.evaluate.prompts, camelCase)."""
    for report in results:
        for answered in report.get("prompts") or ():
            if answered.get("passed") is False:
                spec = next((p for p in prompts if p.get("prompt") == answered.get("prompt")), {})
                return GateFailure(
                    file=str(report.get("file", "")), prompt=str(answered.get("prompt", "")),
                    answer=_clip(str(answered.get("answer", ""))), reason=str(answered.get("reason", "")),
                    expect_contains=tuple(spec.get("expectContains") or ()),
                    expect_not_contains=tuple(spec.get("expectNotContains") or ()),
                )
    return None


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in _escape(_clip(text)).splitlines() or [""])


def read_gate_failure(store: Store, evaluate_prefix: str, prompts: Sequence[Mapping[str, Any]]) -> GateFailure | None:
    """The failed prompt from the results the evaluate job left at `evaluate_prefix`; None if they cannot be read
    (the notification then carries the job's one-line reason alone)."""
    try:
        results = json.loads(store.get_bytes(f"{evaluate_prefix}/{GATE_RESULTS_FILE}"))
    except (StoreError, OSError, ValueError):
        return None
    return gate_failure(results, prompts) if isinstance(results, list) else None
