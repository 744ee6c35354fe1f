"""Posting a run's Events off the reconcile path, as client-go's event recorder does.

Events are a record for people (`kubectl describe ftr`), never something the next stage waits for: a reconcile hands
them over and goes on, and they are posted in the background, in order within each run, on a few connections of
their own, so that under load they queue behind the Job creations and status writes instead of in front of them.
A post that fails transiently is tried again a few times; one that still fails is logged and dropped (a lost Event
changes nothing the operator does). Stopping the operator waits a little for the Events still queued.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from kubetune.operator.kube import ApiError, KubeApi, Obj
from kubetune.operator.status import Transition

log = logging.getLogger("kubetune.operator")

# Events in flight at once, across all runs.
EVENT_CONCURRENCY = 4
EVENT_ATTEMPTS = 3
RETRY_DELAY_S = 0.5


def _transient(error: ApiError) -> bool:
    return error.status in (0, 409, 429) or error.status >= 500


class EventRecorder:
    def __init__(self, kube: KubeApi, *, concurrency: int = EVENT_CONCURRENCY) -> None:
        self.kube = kube
        self._slots = asyncio.Semaphore(concurrency)
        self._tails: dict[tuple[str, str], asyncio.Task[None]] = {}  # each run's last queued batch

    def record(self, run: Obj, transitions: Sequence[Transition], now: str) -> None:
        """Queue `transitions` as Events of `run` (after the ones queued for it before)."""
        if not transitions:
            return
        key = (run["metadata"]["namespace"], run["metadata"]["name"])
        task = asyncio.create_task(self._post_after(self._tails.get(key), run, list(transitions), now))
        self._tails[key] = task
        task.add_done_callback(lambda done: self._tails.pop(key, None) if self._tails.get(key) is done else None)

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the queued Events (on shutdown)."""
        pending = list(self._tails.values())
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def _post_after(self, before: asyncio.Task[None] | None, run: Obj, transitions: list[Transition],
                          now: str) -> None:
        if before is not None:
            await asyncio.wait([before])  # its failures are its own
        for transition in transitions:
            await self._post(run, transition, now)

    async def _post(self, run: Obj, transition: Transition, now: str) -> None:
        for attempt in range(1, EVENT_ATTEMPTS + 1):
            try:
                async with self._slots:
                    await self.kube.post_event(run, transition.type, transition.reason, transition.message, now)
                return
            except ApiError as error:
                if not _transient(error) or attempt == EVENT_ATTEMPTS:
                    log.warning("dropped Event %s for %s/%s: %s", transition.reason, run["metadata"]["namespace"],
                                run["metadata"]["name"], error)
                    return
            await asyncio.sleep(RETRY_DELAY_S * attempt)
