"""A reconcile's outcome on its run, written once per pass: the status patched only where it changed (a merge patch
of the difference), the Events of what changed and of what the pass did, the notifications the change calls for, and
the run's metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubetune.api.types import NotifySpec
from kubetune.operator.cache import ObjectCache
from kubetune.operator.events import EventRecorder
from kubetune.operator.kube import KubeApi, Obj
from kubetune.operator.mergepatch import merge_patch
from kubetune.operator.metrics import Metrics
from kubetune.operator.notify import Notifier
from kubetune.operator.problems import Problem
from kubetune.operator.status import StatusInputs, StatusUpdate, Transition, compute_status, store_problem_status


class StatusWriter:
    def __init__(self, kube: KubeApi, cache: ObjectCache, metrics: Metrics, events: EventRecorder,
                 notifier: Notifier, clock: Callable[[], str]) -> None:
        self.kube = kube
        self.cache = cache
        self.metrics = metrics
        self.events = events
        self.notifier = notifier
        self.clock = clock

    async def write(self, body: Obj, inputs: StatusInputs, notify: NotifySpec | None,
                    notes: Sequence[Transition]) -> tuple[str, bool]:
        """The status `inputs` compute, with `notes` (what the pass did) among its Events. Returns the run's phase
        and whether the status was patched."""
        update = compute_status(inputs)
        self.notifier.record(body, notify, inputs.previous, update, inputs.now)
        written = await self._patch(body, inputs.previous, update)
        if written is not None:
            self.notifier.take_up(written)
        self.events.record(body, [*notes, *update.transitions], inputs.now)
        self.metrics.transitions(update.transitions, update.status.get("stages") or {})
        stalled: dict[str, Any] = next(
            (c for c in update.status.get("conditions") or [] if c.get("type") == "Stalled"), {})
        phase = self._phase(body, update, stalled.get("reason") if stalled.get("status") == "True" else None)
        return phase, written is not None

    async def write_store_problem(self, body: Obj, previous: Mapping[str, Any], problem: Problem) -> str:
        """The status while the run's store cannot be read (status.py: `store_problem_status`); the run's phase."""
        now = self.clock()
        update = store_problem_status(previous, int(body["metadata"].get("generation") or 0), now, problem)
        await self._patch(body, previous, update)
        self.events.record(body, update.transitions, now)
        self.metrics.transitions(update.transitions, {})
        return self._phase(body, update, problem.reason, progress=False)

    async def _patch(self, body: Obj, previous: Mapping[str, Any], update: StatusUpdate) -> Obj | None:
        if not update.changed(previous):
            return None
        meta = body["metadata"]
        written = await self.kube.patch_run_status(meta["namespace"], meta["name"],
                                                   merge_patch(dict(previous), update.status))
        self.cache.observe_run("MODIFIED", written)
        return written

    def _phase(self, body: Obj, update: StatusUpdate, stalled: str | None, *, progress: bool = True) -> str:
        meta = body["metadata"]
        phase = str(update.status["phase"])
        self.metrics.run_stalled(meta["namespace"], meta["name"], stalled)
        self.metrics.run_phase(meta["namespace"], meta["name"], phase)
        if progress:
            self.metrics.run_progress(meta["namespace"], meta["name"], update.status.get("progress"))
        return phase
