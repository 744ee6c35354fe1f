"""Events are posted off the reconcile path: in order within a run, transient failures retried, the rest dropped."""

from __future__ import annotations

import asyncio

import kubernetes
import pytest

from kubetune.operator import events as events_module
from kubetune.operator.events import EventRecorder
from kubetune.operator.kube import ApiError, KubeApi, Obj
from kubetune.operator.status import Transition


class RecordingApi(KubeApi):
    """The real KubeApi with its one network call replaced: posts are recorded, or fail as told."""

    def __init__(self, failures: dict[str, list[ApiError]] | None = None) -> None:
        super().__init__(kubernetes.client.Configuration(host="http://127.0.0.1:9"))
        self.posted: list[tuple[str, str]] = []
        self.failures = failures or {}

    async def post_event(self, run: Obj, kind: str, reason: str, message: str, now: str) -> None:
        await asyncio.sleep(0.001 * (len(reason) % 3))  # posts take different times
        pending = self.failures.get(reason) or []
        if pending:
            raise pending.pop(0)
        self.posted.append((run["metadata"]["name"], reason))


def run(name: str) -> Obj:
    return {"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"}}


def transitions(*reasons: str) -> list[Transition]:
    return [Transition("Normal", reason, f"{reason} happened") for reason in reasons]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "RETRY_DELAY_S", 0.001)


def test_each_runs_events_keep_their_order_across_reconciles() -> None:
    api = RecordingApi()

    async def scenario() -> None:
        recorder = EventRecorder(api, concurrency=3)
        recorder.record(run("a"), transitions("JobCreated", "StageRunning"), "now")
        recorder.record(run("b"), transitions("JobCreated"), "now")
        recorder.record(run("a"), transitions("StageSucceeded", "Succeeded"), "now")
        recorder.record(run("a"), [], "now")
        await recorder.drain(timeout=5)

    asyncio.run(scenario())
    assert [reason for name, reason in api.posted if name == "a"] == [
        "JobCreated", "StageRunning", "StageSucceeded", "Succeeded"]
    assert ("b", "JobCreated") in api.posted


def test_a_transient_failure_is_retried_and_a_permanent_one_dropped_without_stopping_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    api = RecordingApi({
        "StageRunning": [ApiError(503, "ServiceUnavailable", "busy"), ApiError(0, "Unreachable", "reset")],
        "Forbidden": [ApiError(403, "Forbidden", "events are not allowed")],
    })

    async def scenario() -> None:
        recorder = EventRecorder(api)
        recorder.record(run("a"), transitions("JobCreated", "StageRunning", "Forbidden", "Succeeded"), "now")
        await recorder.drain(timeout=5)

    asyncio.run(scenario())
    assert api.posted == [("a", "JobCreated"), ("a", "StageRunning"), ("a", "Succeeded")]
    assert "dropped Event Forbidden for default/a: 403 Forbidden" in caplog.text
