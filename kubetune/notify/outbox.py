"""Which transitions are notified, and the outbox (`status.notifications`) that makes each one go out at most once.

A status write that makes a transition also records its notifications, one entry per webhook, as `Pending`: the
transition and its entries land in one patch, so none is lost between them. The sender claims an entry (`Sending`)
before its first request and ends it `Delivered` or `Failed`. A sender that starts (an operator restart) sends the
`Pending` entries and never the `Sending` ones, which an earlier sender may have delivered: it marks them
`Unconfirmed`. The outbox is a map by entry id, so a merge patch of one entry leaves the others alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from kubetune.api.notify import NotificationStatus, NotifyEvent, NotifySpec
from kubetune.notify.message import Notification

# Entries kept: every unfinished one, and the newest finished ones up to this many in all.
MAX_ENTRIES = 64
FINISHED = ("Delivered", "Failed", "Unconfirmed")
# The run-phase transitions (`Transition.stage` None) that are notified.
_RUN_EVENTS: dict[str, NotifyEvent] = {"Running": "RunStarted", "Succeeded": "RunSucceeded", "Failed": "RunFailed"}
GATE_FAILED_PREFIX = "gate failed"  # the evaluate job's reason when the gate, not the job, failed


class TransitionLike(Protocol):
    """What the status computation says changed (kubetune.operator.status.Transition)."""

    @property
    def reason(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def stage(self) -> str | None: ...


def notified_events(transitions: Iterable[TransitionLike]) -> list[tuple[NotifyEvent, str | None, str]]:
    """(event, stage, message) for each transition that is notified."""
    found: list[tuple[NotifyEvent, str | None, str]] = []
    for transition in transitions:
        if transition.stage is None:
            event = _RUN_EVENTS.get(transition.reason)
            if event is not None:
                found.append((event, None, transition.message))
        elif transition.reason == "StageSucceeded":
            found.append(("StageSucceeded", transition.stage, transition.message))
        elif transition.reason == "StageFailed":
            gate = transition.stage == "evaluate" and GATE_FAILED_PREFIX in transition.message
            found.append(("GateFailed" if gate else "StageFailed", transition.stage, transition.message))
    return found


def record(spec: NotifySpec, transitions: Iterable[TransitionLike], outbox: Mapping[str, Any] | None, *,
           uid: str, generation: int, now: str) -> dict[str, Any] | None:
    """The outbox with the entries of `transitions` added (None while it is empty). RunStarted is sent once per
    spec generation: a run that waits for admission again between stages is not started again."""
    entries: dict[str, Any] = dict(outbox or {})
    for event, stage, message in notified_events(transitions):
        if event == "RunStarted" and any(e.get("event") == "RunStarted" and e.get("generation") == generation
                                         for e in entries.values()):
            continue
        transition = transition_id(uid, generation, event, stage, now)
        for index, webhook in enumerate(spec.webhooks):
            if event in webhook.events:
                entries[f"{transition}.{index}"] = NotificationStatus(
                    event=event, stage=stage, webhook=index, generation=generation, time=now,
                    message=message[:4096]).to_manifest()
    return _pruned(entries) or None


def transition_id(uid: str, generation: int, event: str, stage: str | None, now: str) -> str:
    digest = hashlib.sha256(f"{uid}\n{generation}\n{event}\n{stage}\n{now}".encode()).hexdigest()[:10]
    return f"g{generation}-{event}-{stage or 'run'}-{digest}"


def entry_transition(entry_id: str) -> str:
    """The transition an entry (`<transition>.<webhook>`) notifies: the receivers' idempotency key."""
    return entry_id.rsplit(".", 1)[0]


def _pruned(entries: dict[str, Any]) -> dict[str, Any]:
    finished = sorted((e.get("time", ""), key) for key, e in entries.items() if e.get("state") in FINISHED)
    excess = len(entries) - MAX_ENTRIES
    for _, key in finished[:max(0, excess)]:
        del entries[key]
    return entries


def notification(entry_id: str, entry: Mapping[str, Any], run: Mapping[str, Any],
                 status: Mapping[str, Any], gate: Any = None) -> Notification:
    """What the entry's webhook is told: the entry's transition, with the stage's outputs (a stage that succeeded)
    or the run's artifacts (a run that succeeded) from `status`, and the gate's failed prompt (`gate`)."""
    meta = run.get("metadata") or {}
    stage = entry.get("stage")
    block: Mapping[str, Any] = ((status.get("stages") or {}).get(stage) or {}) if stage else {}
    event = entry["event"]
    artifacts: tuple[Mapping[str, Any], ...] = ()
    if event == "StageSucceeded":
        artifacts = tuple(block.get("outputs") or ())
    elif event == "RunSucceeded":
        artifacts = tuple(status.get("artifacts") or ())
    return Notification(
        id=f"{meta.get('uid', '')}/{entry_transition(entry_id)}", event=event, run=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")), uid=str(meta.get("uid", "")),
        generation=int(entry.get("generation") or 0), time=str(entry.get("time", "")),
        phase=str(status.get("phase") or ""), message=str(entry.get("message", "")), stage=stage,
        stage_phase=block.get("phase") if stage else None,
        output_digest=block.get("outputDigest") if event == "StageSucceeded" else None,
        artifacts=artifacts, gate=gate if event == "GateFailed" else None,
    )
