"""Sending a run's notifications (`spec.notify`) off the reconcile path, each transition at most once per webhook.

A reconcile that writes a transition records its notifications as `Pending` entries of `status.notifications` in
the same status patch (kubetune.notify.outbox), then hands them here and goes on. Each entry is sent in the
background, in order within its run, a few runs at a time, the HTTP requests in a pool of their own threads, so a
slow or dead receiver holds up nothing but its own notifications:

1. claim: patch the entry to `Sending` (if that fails, nothing is sent now; the entry stays `Pending`);
2. read the URL from the Secret (`get` on that one Secret: the operator's only read of a secret value, kept in
   memory for the request and never logged);
3. POST with retries (kubetune.notify.deliver), then patch the entry to `Delivered` or `Failed`; a failure also
   posts a Warning Event `NotificationFailed` (without the URL) and counts in `kubetune_notifications_total`.

An operator that starts sends the `Pending` entries it finds and never the `Sending` ones: an operator that stopped
mid-send may have delivered them, so they become `Unconfirmed`. Hence at most once per transition and webhook,
across restarts; what can be lost is only what was in flight when an operator stopped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import threading
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError

from kubetune.api.notify import NotifySpec, WebhookSpec
from kubetune.api.types import StorageSpec
from kubetune.notify import outbox
from kubetune.notify.deliver import DEFAULT_POLICY, Outcome, RetryPolicy, WebhookUrlError, check_url, post
from kubetune.notify.message import GateFailure, read_gate_failure
from kubetune.operator.kube import ApiError, KubeApi, Obj
from kubetune.operator.metrics import Metrics
from kubetune.operator.runstore import NoStoreConfigured, resolve_store
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.status import StatusUpdate
from kubetune.stages import stage_prefix
from kubetune.store import open_store

log = logging.getLogger("kubetune.operator")

# Runs whose notifications are being sent at once, and the threads their requests take.
NOTIFY_CONCURRENCY = 4
# Entries taken up but not finished, across runs: beyond it new ones wait (Pending) for a later reconcile.
MAX_QUEUED = 256
SECRET_READ_ATTEMPTS = 3


class Notifier:
    def __init__(self, kube: KubeApi, metrics: Metrics, settings: OperatorSettings, clock: Callable[[], str], *,
                 policy: RetryPolicy = DEFAULT_POLICY, concurrency: int = NOTIFY_CONCURRENCY,
                 max_queued: int = MAX_QUEUED) -> None:
        self.kube = kube
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.policy = policy
        self.max_queued = max_queued
        self._slots = asyncio.Semaphore(concurrency)
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kubetune-notify")
        self._stop = threading.Event()
        self._known: set[tuple[str, str, str]] = set()  # (run uid, namespace/name, entry id) taken up here
        self._queued = 0
        self._tails: dict[tuple[str, str], asyncio.Task[None]] = {}

    # --- on the reconcile path (no I/O) ---------------------------------------------------------------------

    def record(self, body: Obj, spec: NotifySpec | None, previous: Mapping[str, Any], update: StatusUpdate,
               now: str) -> None:
        """Put the outbox, with the entries of `update`'s transitions, into `update.status` before it is written
        (a status computed afresh would drop it)."""
        entries = previous.get("notifications")
        if spec is not None and spec.webhooks:
            meta = body["metadata"]
            entries = outbox.record(spec, update.transitions, entries, uid=str(meta.get("uid", "")),
                                    generation=int(meta.get("generation") or 0), now=now)
        if entries:
            update.status["notifications"] = entries

    def take_up(self, body: Obj) -> None:
        """Queue the run's `Pending` entries not taken up yet; mark the `Sending` ones an earlier operator left."""
        entries: Mapping[str, Any] = (body.get("status") or {}).get("notifications") or {}
        meta = body["metadata"]
        run = (meta["namespace"], meta["name"])
        for entry_id, entry in entries.items():
            known = (str(meta.get("uid", "")), "/".join(run), entry_id)
            state = entry.get("state")
            if known in self._known or state not in ("Pending", "Sending"):
                continue
            if state == "Pending" and self._queued >= self.max_queued:
                log.warning("%s/%s: %d notifications queued; %s waits for a later reconcile", *run, self._queued,
                            entry_id)
                continue
            self._known.add(known)
            self._queued += 1
            self._chain(run, functools.partial(self._send, body, entry_id, entry) if state == "Pending"
                        else functools.partial(self._abandoned, body, entry_id))

    async def close(self, timeout: float) -> None:
        """On shutdown: let the sends in flight finish for up to `timeout` seconds, with no more retries."""
        self._stop.set()
        pending = list(self._tails.values())
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        self._threads.shutdown(wait=False, cancel_futures=True)

    # --- in the background ------------------------------------------------------------------------------------

    def _chain(self, run: tuple[str, str], work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `work` after the run's work queued before (made only when its turn comes: never left unawaited)."""
        task = asyncio.create_task(self._after(self._tails.get(run), work))
        self._tails[run] = task
        task.add_done_callback(lambda done: self._tails.pop(run, None) if self._tails.get(run) is done else None)

    async def _after(self, before: asyncio.Task[None] | None, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if before is not None:
            await asyncio.wait([before])
        try:
            async with self._slots:
                await work()
        except Exception:  # one notification's trouble must not stop the next one's
            log.exception("sending a notification failed")
        finally:
            self._queued -= 1

    async def _send(self, body: Obj, entry_id: str, entry: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        run = f"{meta['namespace']}/{meta['name']}"
        try:
            await self._patch(body, entry_id, {"state": "Sending"})
        except ApiError as error:
            self._known.discard((str(meta.get("uid", "")), run, entry_id))  # not claimed: a later pass tries again
            log.warning("%s: could not claim notification %s (%s); it waits for a later reconcile", run, entry_id,
                        error)
            return
        webhook = _webhook(body, int(entry.get("webhook") or 0))
        if webhook is None:
            gone = "the webhook is no longer in spec.notify.webhooks"
            await self._finish(body, entry_id, entry, Outcome(False, 0, error=gone))
            return
        try:
            url = await self._url(meta["namespace"], webhook)
        except _UrlError as error:
            await self._finish(body, entry_id, entry, Outcome(False, 0, error=str(error)))
            return
        gate = await self._gate(body) if entry.get("event") == "GateFailed" else None
        message = outbox.notification(entry_id, entry, body, body.get("status") or {}, gate)
        result = await asyncio.get_running_loop().run_in_executor(self._threads, lambda: post(
            url, message.body(webhook.format), timeout=webhook.timeout_seconds, idempotency_key=message.id,
            policy=self.policy, stop=self._stop))
        await self._finish(body, entry_id, entry, result)

    async def _abandoned(self, body: Obj, entry_id: str) -> None:
        meta = body["metadata"]
        log.warning("%s/%s: notification %s was being sent when an operator stopped; not sent again",
                    meta["namespace"], meta["name"], entry_id)
        try:
            await self._patch(body, entry_id, {"state": "Unconfirmed",
                                               "error": "an operator stopped while sending it; not sent again"})
        except ApiError as error:
            log.warning("%s/%s: could not mark notification %s Unconfirmed: %s", meta["namespace"], meta["name"],
                        entry_id, error)

    async def _finish(self, body: Obj, entry_id: str, entry: Mapping[str, Any], result: Outcome) -> None:
        meta = body["metadata"]
        event = str(entry.get("event"))
        self.metrics.notifications.labels(event, "delivered" if result.delivered else "failed").inc()
        change: dict[str, Any] = {"state": "Delivered" if result.delivered else "Failed", "attempts": result.attempts}
        if result.error:
            change["error"] = result.error[:1024]
        try:
            await self._patch(body, entry_id, change)
        except ApiError as error:
            log.warning("%s/%s: could not record notification %s as %s: %s", meta["namespace"], meta["name"],
                        entry_id, change["state"], error)
        if not result.delivered:
            text = f"{event} to webhook {entry.get('webhook')} not delivered: {result.error}"
            log.warning("%s/%s: %s", meta["namespace"], meta["name"], text)
            try:
                await self.kube.post_event(body, "Warning", "NotificationFailed", text, self.clock())
            except ApiError as error:
                log.warning("dropped Event NotificationFailed for %s/%s: %s", meta["namespace"], meta["name"], error)

    async def _patch(self, body: Obj, entry_id: str, change: dict[str, Any]) -> None:
        meta = body["metadata"]
        await self.kube.patch_run_status(meta["namespace"], meta["name"], {"notifications": {entry_id: change}})

    async def _url(self, namespace: str, webhook: WebhookSpec) -> str:
        ref = webhook.url_secret
        where = f"Secret {namespace}/{ref.name} key {ref.key!r}"
        path = f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(ref.name)}"
        secret: Obj = {}
        for attempt in range(1, SECRET_READ_ATTEMPTS + 1):
            try:
                secret = await self.kube.call("GET", path)
                break
            except ApiError as error:
                if error.status == 404:
                    raise _UrlError(f"{where}: no such Secret") from None
                if error.status == 403:
                    raise _UrlError(f"{where}: the operator may not read it (RBAC get secrets: chart value notify.enabled)") from None
                if attempt == SECRET_READ_ATTEMPTS:
                    raise _UrlError(f"{where}: cannot be read: {error}") from None
            await asyncio.sleep(self.policy.base_delay * attempt)
        encoded = (secret.get("data") or {}).get(ref.key)
        if not encoded:
            raise _UrlError(f"{where}: no such key in the Secret")
        try:
            url = base64.b64decode(encoded, validate=True).decode("utf-8").strip()
            check_url(url)
        except (binascii.Error, UnicodeDecodeError, WebhookUrlError):
            raise _UrlError(f"{where}: the value is not an http(s) URL") from None
        return url

    async def _gate(self, body: Obj) -> GateFailure | None:
        """The gate's failed prompt, from the results the evaluate job left in the store."""
        key = (((body.get("status") or {}).get("stages") or {}).get("evaluate") or {}).get("inputKey")
        spec = body.get("spec") or {}
        if not key:
            return None
        try:
            config = resolve_store(StorageSpec.model_validate(spec.get("storage") or {}), self.settings)
        except (ValidationError, NoStoreConfigured):
            return None
        meta = body["metadata"]
        prefix = stage_prefix(meta["namespace"], meta["name"], "evaluate", key)
        prompts = (spec.get("evaluate") or {}).get("prompts") or []

        def read() -> GateFailure | None:
            store = open_store(config.uri, endpoint=config.endpoint, region=config.region,
                               path_style=config.path_style)
            return read_gate_failure(store, prefix, prompts)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, read)
        except Exception:  # the notification goes out with the job's one-line reason instead
            log.debug("reading the gate's results failed", exc_info=True)
            return None


class _UrlError(Exception):
    """The webhook's URL cannot be had: the notification fails at once (the message names the Secret, not the URL)."""


def _webhook(body: Obj, index: int) -> WebhookSpec | None:
    try:
        spec = NotifySpec.model_validate((body.get("spec") or {}).get("notify") or {})
    except ValidationError:
        return None
    return spec.webhooks[index] if index < len(spec.webhooks) else None
