"""Which Job events reconcile a run: a change of the Job's phase (or completion) or its deletion, not the many
status writes in between, and not the ADDED event of a Job this operator just created."""

from __future__ import annotations

import copy

import kubernetes

from kubetune.operator.kube import KubeApi
from kubetune.operator.metrics import Metrics
from kubetune.operator.reconcile import Reconciler
from kubetune.operator.settings import OperatorSettings
from tests.unit.test_operator_observe import condition, job


def reconciler() -> Reconciler:
    return Reconciler(OperatorSettings(), KubeApi(kubernetes.client.Configuration(host="http://unused")), Metrics())


def stage_job(**status: object) -> dict[str, object]:
    body = job(status=dict(status))
    body["metadata"]["uid"] = "uid-1"
    return body


def test_only_phase_changes_and_deletion_of_a_job_reconcile_its_run() -> None:
    watcher = reconciler()
    created = stage_job()
    assert watcher.job_event_matters("ADDED", created)  # a Job it did not create itself
    assert not watcher.job_event_matters("MODIFIED", stage_job(active=1))  # a pod started: still Running
    assert not watcher.job_event_matters("MODIFIED", stage_job(active=1, ready=1, startTime="2026-01-01T00:00:00Z"))
    finished = stage_job(succeeded=1, completionTime="2026-01-01T00:10:00Z")
    finished["status"]["conditions"] = [condition("Complete")]  # type: ignore[index]
    assert watcher.job_event_matters("MODIFIED", finished)
    assert not watcher.job_event_matters("MODIFIED", copy.deepcopy(finished))  # the same again (a relist)
    assert watcher.job_event_matters("DELETED", finished)
    assert watcher.job_event_matters(None, finished)  # seen again after its deletion: news


def test_the_added_event_of_a_job_the_operator_created_is_no_news() -> None:
    watcher = reconciler()
    created = stage_job()
    watcher.job_event_matters("ADDED", created)  # what the reconcile that created it records
    assert not watcher.job_event_matters("ADDED", copy.deepcopy(created))
    held = stage_job()
    held["spec"] = {"suspend": True}
    held["metadata"]["annotations"]["kubetune.dev/suspended"] = "true"  # type: ignore[index]
    assert watcher.job_event_matters("MODIFIED", held)  # suspended by the operator: Running -> Suspended


def test_the_pods_of_a_job_whose_missing_pods_are_looked_into_coming_up_is_news_once() -> None:
    watcher = reconciler()
    assert watcher.job_event_matters("ADDED", stage_job())
    watcher.watch_events.awaiting_pods.add("uid-1")  # a reconcile found its pods missing (what _pods_problem records)
    assert not watcher.job_event_matters("MODIFIED", stage_job(active=1, ready=0))  # a pod, not up: no news
    assert watcher.job_event_matters("MODIFIED", stage_job(active=1, ready=1))  # up: the run is not stalled now
    assert not watcher.job_event_matters("MODIFIED", stage_job(active=1, ready=1, startTime="2026-01-01T00:00:00Z"))


def test_pods_coming_up_are_no_news_for_a_job_nobody_looks_into() -> None:
    watcher = reconciler()
    assert watcher.job_event_matters("ADDED", stage_job())
    assert not watcher.job_event_matters("MODIFIED", stage_job(active=1, ready=1))
