"""A limit on reconciles in flight, letting the urgent ones (a stage Job changed phase) in first.

Without a limit, a burst of new runs starts hundreds of reconciles at once and their API calls queue in front of
the few that would start a run's next stage; with one, waiting reconciles are let in by urgency, then in order of
arrival (the work queue of controller-runtime, with two priorities).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

URGENT, NORMAL = 0, 1


class PriorityGate:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._free = capacity
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @asynccontextmanager
    async def slot(self, *, urgent: bool) -> AsyncIterator[None]:
        """Hold one of the gate's places for the duration."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (URGENT if urgent else NORMAL, next(self._arrivals), turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release()  # handed the place just as the waiter was cancelled: pass it on
                raise
        try:
            yield
        finally:
            self._release()

    def waiting(self) -> int:
        return sum(1 for _, _, turn in self._waiting if not turn.done())

    def _release(self) -> None:
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():  # a cancelled waiter's future is done: skip it
                turn.set_result(None)  # the place goes straight to the next waiter
                return
        self._free += 1
