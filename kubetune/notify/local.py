"""Notifications from `kubetune run`: the same events and bodies as the operator's, sent by one background thread
(a slow receiver never holds up a stage) that the run waits for, a bounded time, before it exits.

There is no cluster to read a Secret from, so `urlSecret` {name, key} is looked up, in order, in the environment
variable `KUBETUNE_SECRET_<NAME>_<KEY>` (upper case, every character other than a letter or digit as `_`) and in the
file `$KUBETUNE_SECRETS_DIR/<name>/<key>` (a Secret's layout when mounted as a volume). Every URL is resolved before
the first stage starts: a missing one is a configuration error (exit 2) with nothing run.
"""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from kubetune.api.notify import NotifyEvent, NotifySpec, WebhookSpec, WebhookUrlSecretRef
from kubetune.api.validate import FineTuneRun
from kubetune.notify.deliver import DEFAULT_POLICY, Outcome, RetryPolicy, WebhookUrlError, check_url, post
from kubetune.notify.message import GateFailure, Notification
from kubetune.notify.outbox import TransitionLike, notification, notified_events, transition_id

SECRETS_DIR_ENV = "KUBETUNE_SECRETS_DIR"
# How long `kubetune run` waits at its end for notifications still being sent.
DRAIN_SECONDS = 60.0


class NotifyConfigError(ValueError):
    """A webhook URL that cannot be found or used: one line naming the field, never the URL."""


def secret_env_name(ref: WebhookUrlSecretRef) -> str:
    return "KUBETUNE_SECRET_" + re.sub(r"[^A-Z0-9]", "_", f"{ref.name}_{ref.key}".upper())


def resolve_url(ref: WebhookUrlSecretRef, field: str, environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    name = secret_env_name(ref)
    url = env.get(name)
    folder = env.get(SECRETS_DIR_ENV)
    if url is None and folder:
        path = Path(folder) / ref.name / ref.key
        try:
            url = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            url = None
        except OSError as error:
            raise NotifyConfigError(f"{field}: cannot read {path}: {error.strerror}") from None
    if not url:
        where = f"${SECRETS_DIR_ENV}/{ref.name}/{ref.key}" if folder else f"a file {ref.name}/{ref.key} in ${SECRETS_DIR_ENV}"
        raise NotifyConfigError(f"{field}: no webhook URL for Secret {ref.name!r} key {ref.key!r}: set {name} "
                                f"or put it in {where}")
    try:
        check_url(url)
    except WebhookUrlError as error:
        raise NotifyConfigError(f"{field}: {error} (Secret {ref.name!r} key {ref.key!r})") from None
    return url


@dataclass(frozen=True)
class _Send:
    webhook: int
    hook: WebhookSpec
    url: str
    notification: Notification


class LocalNotifier:
    """Sends each notification to the webhooks that want its event, in order, from one thread."""

    def __init__(self, spec: NotifySpec, *, environ: dict[str, str] | None = None, policy: RetryPolicy = DEFAULT_POLICY,
                 log: TextIO | None = None) -> None:
        self.hooks = [(hook, resolve_url(hook.url_secret, f"spec.notify.webhooks[{index}].urlSecret", environ))
                      for index, hook in enumerate(spec.webhooks)]
        self.policy = policy
        self.log = log or sys.stderr
        self.outcomes: list[tuple[int, str, Outcome]] = []  # (webhook, notification id, outcome)
        self._queue: queue.Queue[_Send | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, notifications: Iterable[Notification]) -> None:
        for told in notifications:
            for index, (hook, url) in enumerate(self.hooks):
                if told.event in hook.events:
                    self._start()
                    self._queue.put(_Send(index, hook, url, told))

    def close(self, timeout: float = DRAIN_SECONDS) -> None:
        """Wait up to `timeout` seconds for what is queued, then give up on the rest (and say so)."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(5)
            print(f"kubetune: notify: gave up on notifications still unsent after {timeout:.0f} s", file=self.log)
        self._thread = None

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="kubetune-notify", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._stop.is_set():
                continue
            started = time.monotonic()
            outcome = post(item.url, item.notification.body(item.hook.format), timeout=item.hook.timeout_seconds,
                           idempotency_key=item.notification.id, policy=self.policy, stop=self._stop)
            self.outcomes.append((item.webhook, item.notification.id, outcome))
            if not outcome.delivered:
                print(f"kubetune: notify: {item.notification.event} to webhook {item.webhook} failed after "
                      f"{time.monotonic() - started:.1f} s: {outcome.error}", file=self.log)


class RunNotices:
    """One `kubetune run` of one FineTuneRun, told to its webhooks. Nothing is sent for an invocation that runs no
    stage (a finished manifest run again is a no-op), so each run of the command that does work says RunStarted
    once, before its first stage, and ends with RunSucceeded or RunFailed."""

    def __init__(self, run: FineTuneRun, notifier: LocalNotifier) -> None:
        self.run = run
        self.notifier = notifier
        self.started = False
        self._uid = run.uid or f"local-{run.namespace}-{run.name}-{uuid.uuid4().hex[:12]}"
        self._sequence = 0

    @classmethod
    def of(cls, run: FineTuneRun, *, environ: dict[str, str] | None = None,
           policy: RetryPolicy = DEFAULT_POLICY) -> RunNotices | None:
        """None for a run with no webhooks; NotifyConfigError when a URL cannot be found."""
        if not run.spec.notify.webhooks:
            return None
        return cls(run, LocalNotifier(run.spec.notify, environ=environ, policy=policy))

    def stage_starting(self, stage: str, status: Mapping[str, Any], now: str) -> None:
        if not self.started:
            self.started = True
            self._send("RunStarted", None, f"FineTuneRun running: stage {stage} starts", status, now)

    def transitions(self, transitions: Iterable[TransitionLike], status: Mapping[str, Any], now: str,
                    gate: Callable[[], GateFailure | None]) -> None:
        if not self.started:
            return
        for event, stage, message in notified_events(transitions):
            if event != "RunStarted":
                self._send(event, stage, message, status, now, gate() if event == "GateFailed" else None)

    def close(self) -> None:
        self.notifier.close()

    def _send(self, event: NotifyEvent, stage: str | None, message: str, status: Mapping[str, Any], now: str,
              gate: GateFailure | None = None) -> None:
        self._sequence += 1
        entry_id = f"{transition_id(self._uid, self._sequence, event, stage, now)}.0"
        entry = {"event": event, "stage": stage, "generation": max(self.run.generation, 1), "time": now,
                 "message": message}
        run = {"metadata": {"name": self.run.name, "namespace": self.run.namespace, "uid": self._uid}}
        self.notifier.send([notification(entry_id, entry, run, status, gate)])
