"""The reconciler's cache of runs and stage Jobs (operator/cache.py): a run is served from memory only after a real
read in this process and until events may have been lost; nothing older than what it holds ever replaces it."""

from __future__ import annotations

import asyncio
from typing import Any

import kubernetes
import pytest

from kubetune.operator import reconcile
from kubetune.operator.cache import ObjectCache
from kubetune.operator.kube import KubeApi
from kubetune.operator.metrics import Metrics
from kubetune.operator.reconcile import Reconciler
from kubetune.operator.settings import OperatorSettings

KEY = ("default", "demo")


def run(rv: int, phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"namespace": "default", "name": "demo", "resourceVersion": str(rv), "generation": 1},
            "status": {"phase": phase}}


def job(name: str, rv: int, phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"namespace": "default", "name": name, "resourceVersion": str(rv),
                         "labels": {"kubetune.dev/run": "demo"}},
            "status": {"phase": phase}}


def filled(*jobs: dict[str, Any], listed_at: int = 10) -> ObjectCache:
    cache = ObjectCache()
    cache.track(KEY)
    cache.fill(KEY, run(5), list(jobs), listed_at)
    return cache


def jobs_of(cache: ObjectCache) -> dict[str, str]:
    view = cache.view(KEY)
    assert view is not None
    return {j["metadata"]["name"]: j["status"]["phase"] for j in view[1]}


def test_a_run_is_served_from_memory_only_after_a_real_read() -> None:
    cache = ObjectCache()
    cache.observe_run("ADDED", run(1))  # seen on the watch, never read: its Jobs are unknown
    cache.observe_job("ADDED", job("demo-dataset-1", 2))
    assert cache.view(KEY) is None
    cache.track(KEY)
    cache.fill(KEY, run(5), [job("demo-dataset-1", 4)], 6)
    assert cache.view(KEY) is not None and jobs_of(cache) == {"demo-dataset-1": "Running"}


def test_a_late_watch_event_never_rolls_back_the_operators_own_write() -> None:
    cache = filled(job("demo-dataset-1", 8))
    cache.observe_run("MODIFIED", run(20, "Succeeded"))  # the status write's answer
    cache.observe_run("MODIFIED", run(12))  # the watch, behind the write
    view = cache.view(KEY)
    assert view is not None and view[0]["status"]["phase"] == "Succeeded"
    cache.observe_job("MODIFIED", job("demo-dataset-1", 30, "Complete"))
    cache.observe_job("MODIFIED", job("demo-dataset-1", 25, "Running"))
    assert jobs_of(cache) == {"demo-dataset-1": "Complete"}


def test_jobs_the_operator_creates_and_the_watch_reports_join_the_view_and_deleted_ones_leave() -> None:
    cache = filled(job("demo-dataset-1", 8, "Complete"))
    cache.observe_job("ADDED", job("demo-train-1", 15))  # what the creation returned
    assert jobs_of(cache) == {"demo-dataset-1": "Complete", "demo-train-1": "Running"}
    cache.observe_job("DELETED", job("demo-dataset-1", 16, "Complete"))
    assert jobs_of(cache) == {"demo-train-1": "Running"}


def test_a_relist_after_a_410_or_a_dropped_watch_makes_the_next_reconcile_read_for_real() -> None:
    for event in (lambda c: c.observe_job(None, job("demo-dataset-1", 40)), lambda c: c.observe_run(None, run(41))):
        cache = filled(job("demo-dataset-1", 8))
        event(cache)  # kopf lists again: the events of the gap (deletions too) may be lost
        assert cache.view(KEY) is None
        cache.fill(KEY, run(41), [job("demo-dataset-1", 40)], 42)
        assert jobs_of(cache) == {"demo-dataset-1": "Running"}


def test_events_during_a_real_read_are_merged_with_it_by_resource_version() -> None:
    cache = ObjectCache()
    cache.track(KEY)  # the reconcile starts its GET + LIST
    cache.observe_job("MODIFIED", job("demo-dataset-1", 12, "Complete"))  # newer than the LIST below
    cache.observe_job("ADDED", job("demo-train-1", 14))  # created after the LIST
    cache.fill(KEY, run(5), [job("demo-dataset-1", 9, "Running")], 10)
    assert jobs_of(cache) == {"demo-dataset-1": "Complete", "demo-train-1": "Running"}


def test_a_job_deleted_while_the_list_was_in_flight_stays_deleted_and_one_created_again_is_kept() -> None:
    cache = filled(job("demo-dataset-1", 8))
    cache.distrust(KEY)
    cache.observe_job("DELETED", job("demo-dataset-1", 12))  # arrives while a LIST read at 11 is in flight
    cache.fill(KEY, run(5), [job("demo-dataset-1", 8)], 11)
    assert jobs_of(cache) == {}
    cache.distrust(KEY)
    cache.observe_job("DELETED", job("demo-dataset-1", 13))
    cache.fill(KEY, run(5), [job("demo-dataset-1", 14)], 15)  # created again after that deletion
    assert jobs_of(cache) == {"demo-dataset-1": "Running"}


def test_a_job_deleted_before_the_list_is_dropped_even_without_its_deleted_event() -> None:
    cache = filled(job("demo-dataset-1", 8), job("demo-dataset-2", 9))
    cache.distrust(KEY)  # e.g. the timer's resync
    cache.fill(KEY, run(5), [job("demo-dataset-2", 9)], 20)
    assert jobs_of(cache) == {"demo-dataset-2": "Running"}


def test_a_run_deleted_while_it_is_read_is_not_trusted_and_a_gone_run_is_forgotten() -> None:
    cache = ObjectCache()
    cache.track(KEY)
    cache.observe_run("DELETED", run(7))
    cache.fill(KEY, run(5), [], 6)  # the GET answered before the deletion
    assert cache.view(KEY) is None
    cache = filled(job("demo-dataset-1", 8))
    cache.fill(KEY, None, [], 30)  # 404
    assert cache.view(KEY) is None



def test_the_timer_reads_a_run_for_real_once_the_cache_has_served_it_for_ten_to_twenty_intervals(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(reconcile.time, "monotonic", lambda: now[0])
    operator = Reconciler(OperatorSettings(reconcile_interval=3.0),
                          KubeApi(kubernetes.client.Configuration(host="http://unused")), Metrics())
    assert operator.resync_due(*KEY)  # never read in this process

    async def first_read() -> None:
        async def get_run(namespace: str, name: str) -> dict[str, Any]:
            return run(5)

        async def list_jobs(namespace: str, name: str) -> tuple[list[dict[str, Any]], str]:
            return [job("demo-dataset-1", 4)], "6"

        monkeypatch.setattr(operator.kube, "get_run", get_run)
        monkeypatch.setattr(operator.kube, "list_jobs", list_jobs)
        await operator._read(*KEY)

    asyncio.run(first_read())
    now[0] += 29.0
    assert not operator.resync_due(*KEY)  # a running train stage's ticks come from memory...
    now[0] += 31.0
    assert operator.resync_due(*KEY)  # ...until its period (10 to 20 intervals) has passed since the last real read
    # Runs read together are read again at different times: their periods are spread by name over that range.
    read_at = now[0]
    runs = [("default", f"run-{index}") for index in range(20)]
    for other in runs:
        operator._read_at[other] = read_at

    def due_after(other: tuple[str, str]) -> int:
        for seconds in range(30, 61):
            now[0] = read_at + seconds
            if operator.resync_due(*other):
                return seconds
        raise AssertionError(f"{other} not due after 60 s")

    assert len({due_after(other) for other in runs}) > 5


def test_a_run_just_created_is_trusted_with_no_jobs_once_and_a_tracked_one_is_left_as_it_is() -> None:
    cache = ObjectCache()
    assert cache.adopt(KEY, run(3))
    assert cache.view(KEY) == (run(3), [])
    cache.observe_job("ADDED", job("demo-dataset", 4))  # the Job its first reconcile creates
    assert not cache.adopt(KEY, run(3))  # seen already: what the cache holds stays
    view = cache.view(KEY)
    assert view is not None and [j["metadata"]["name"] for j in view[1]] == ["demo-dataset"]
