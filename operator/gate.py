"""A limit on reconciles in flight, letting the urgent ones (a stage Job changed phase) in first.

Without a limit, a burst of new runs starts hundreds of reconciles at once and their API calls queue in front of
the few that would start a run's next stage; with one, waiting reconciles are let in by urgency, then in order of
arrival (the work queue of controller-runtime, with two priorities). A waiter that becomes urgent while it waits
(a run's timer reconcile, and then its Job finishes) moves to the urgent line: the run's reconciles are serial, so
its hand-off waits for that waiter, and it used to wait behind every normal reconcile of a burst of new runs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

URGENT, NORMAL = 0, 1


class PriorityGate:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._free = capacity
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._normal: dict[Hashable, asyncio.Future[None]] = {}  # waiters in the normal line, by key

    @asynccontextmanager
    async def slot(self, *, urgent: bool, key: Hashable = None) -> AsyncIterator[None]:
        """Hold one of the gate's places for the duration; `key` names the waiter for `hurry`."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (URGENT if urgent else NORMAL, next(self._arrivals), turn))
            if not urgent and key is not None:
                self._normal[key] = turn
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release()  # handed the place just as the waiter was cancelled: pass it on
                raise
            finally:
                if key is not None and self._normal.get(key) is turn:
                    del self._normal[key]
        try:
            yield
        finally:
            self._release()

    def hurry(self, key: Hashable) -> None:
        """Move the normal waiter `key` (if any) to the end of the urgent line."""
        turn = self._normal.pop(key, None)
        if turn is not None and not turn.done():
            # Its normal entry stays in the heap; whichever entry comes first hands the place, the other is skipped.
            heapq.heappush(self._waiting, (URGENT, next(self._arrivals), turn))

    def waiting(self) -> int:
        return len({id(turn) for _, _, turn in self._waiting if not turn.done()})

    def _release(self) -> None:
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():  # a cancelled waiter's future is done: skip it
                turn.set_result(None)  # the place goes straight to the next waiter
                return
        self._free += 1
