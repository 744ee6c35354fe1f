"""Which run events reconcile the run (a run new to the operator, a new generation: nothing else does, the reconcile
being level-based), and which runs the timer looks at (active ones, not while a reconcile of them waits or runs)."""

from __future__ import annotations

import asyncio
from typing import Any

from kubetune.operator.kube import ApiError
from kubetune.operator.timer import RunTimer
from tests.unit.test_operator_job_events import reconciler

KEY = ("default", "demo")


def run(generation: int = 1, uid: str = "uid-1", **status: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "default", "name": "demo", "uid": uid, "generation": generation,
                         "labels": {"team": "a"}}, "status": status}


def test_a_new_run_and_a_spec_change_reconcile_status_writes_and_label_edits_do_not() -> None:
    watcher = reconciler()
    assert watcher.run_event_matters("ADDED", run())
    assert not watcher.run_event_matters("MODIFIED", run(phase="Running"))  # its status, written by the reconcile
    relabelled = run()
    relabelled["metadata"]["labels"] = {"team": "b"}
    assert not watcher.run_event_matters("MODIFIED", relabelled)
    assert not watcher.run_event_matters(None, run())  # a relist of what was seen
    assert watcher.run_event_matters("MODIFIED", run(generation=2))  # the spec changed
    assert not watcher.run_event_matters("DELETED", run(generation=2))
    assert watcher.run_event_matters(None, run(generation=2))  # listed again after its deletion: new
    assert watcher.run_event_matters("ADDED", run(uid="uid-2"))  # deleted and created again under the same name


def test_the_operator_starting_reconciles_every_listed_run_once() -> None:
    watcher = reconciler()
    listed = [run(), {**run(), "metadata": {**run()["metadata"], "name": "other", "uid": "uid-9"}}]
    assert [watcher.run_event_matters(None, body) for body in listed] == [True, True]
    assert [watcher.run_event_matters(None, body) for body in listed] == [False, False]


def test_the_timer_looks_at_active_runs_only() -> None:
    timer = RunTimer(reconciler(), interval=3.0)
    timer.observe("ADDED", run())  # never reconciled in this process: due
    assert timer.due() == [KEY]
    timer.observe("MODIFIED", run(phase="Succeeded", observedGeneration=1))
    assert timer.due() == []  # settled for its generation
    timer.observe("MODIFIED", run(generation=2, phase="Succeeded", observedGeneration=1))
    assert timer.due() == [KEY]  # its spec changed since
    deleting = run(generation=2)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    timer.observe("MODIFIED", deleting)
    assert timer.due() == []
    timer.observe("ADDED", run(uid="uid-2"))
    timer.observe("DELETED", run(uid="uid-2"))
    assert timer.due() == []


def test_a_run_whose_reconcile_waits_or_runs_is_not_due() -> None:
    operator = reconciler()
    timer = RunTimer(operator, interval=3.0)
    timer.observe("MODIFIED", run(phase="Running", currentStage="train"))

    async def scenario() -> None:
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow_reconcile(namespace: str, name: str) -> str:
            entered.set()
            await release.wait()
            return "Running"

        operator.reconcile = slow_reconcile
        pending = asyncio.create_task(operator.request(*KEY))
        await entered.wait()
        assert timer.due() == []
        release.set()
        await pending
        assert timer.due() == [KEY]  # a running train stage: every tick

    asyncio.run(scenario())


def test_a_run_whose_reconcile_failed_is_due_at_the_next_tick() -> None:
    operator = reconciler()
    timer = RunTimer(operator, interval=3.0)
    timer.observe("MODIFIED", run(phase="Running", currentStage="merge"))

    async def scenario() -> None:
        async def failing_reconcile(namespace: str, name: str) -> str:
            raise ApiError(500, "InternalError", "injected")

        async def quiet_reconcile(namespace: str, name: str) -> str:
            return "Running"

        operator.reconcile = quiet_reconcile
        await operator.request(*KEY)
        assert timer.due() == []  # just reconciled, and no train stage to mirror
        operator.reconcile = failing_reconcile
        await operator.request_logged(*KEY)  # counted and logged, not raised
        assert timer.due() == [KEY]

    asyncio.run(scenario())
