"""The reconcile timer: one task that looks at every active run each interval, for what no event announces (training
progress in the store), as a safety net for missed events, and to retry a reconcile that failed.

It replaces a kopf timer per run. Those cost a handler invocation per run and interval, settled runs included (~10% of
the event loop with 500 runs), and kopf puts a finalizer on every object a timer watches, so as to stop the timer
before the object goes: a PATCH per run, and one more event to process. Here a deleted run just leaves the list.
Which runs are due, and whether a due run has anything new, the reconciler decides (`Reconciler.timer_due`,
`Reconciler.unchanged_since_last_pass`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any

from kubetune.operator.cache import RunKey, run_key
from kubetune.operator.reconcile import Reconciler, is_settled


class RunTimer:
    def __init__(self, reconciler: Reconciler, interval: float) -> None:
        self.reconciler = reconciler
        self.interval = interval
        self._runs: dict[RunKey, tuple[int, Mapping[str, Any]]] = {}  # every run seen: its generation and status
        self._ticking: set[RunKey] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # the loop and the ticks (asyncio keeps only weak references)

    def observe(self, event_type: str | None, run: Mapping[str, Any]) -> None:
        """A watch event of a run: keep its latest generation and status; a run deleted or being deleted leaves."""
        meta = run.get("metadata") or {}
        key = run_key(run)
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            self._runs.pop(key, None)
        else:
            self._runs[key] = (int(meta.get("generation") or 0), run.get("status") or {})

    def due(self) -> list[RunKey]:
        """The active runs to look at now (not while the previous tick of one is still at it)."""
        return [key for key, (generation, status) in self._runs.items()
                if key not in self._ticking and not is_settled(status, generation)
                and self.reconciler.timer_due(*key, status)]

    async def tick(self, namespace: str, name: str) -> None:
        """Reconcile the run if anything is new since its last reconcile (or it is time to read it for real)."""
        key = (namespace, name)
        self._ticking.add(key)
        try:
            fresh = self.reconciler.resync_due(namespace, name)
            if fresh or not await self.reconciler.unchanged_since_last_pass(namespace, name):
                await self.reconciler.request_logged(namespace, name, fresh=fresh)
        finally:
            self._ticking.discard(key)

    def start(self) -> None:
        self._spawn(self._loop())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for key in self.due():
                self._spawn(self.tick(*key))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
