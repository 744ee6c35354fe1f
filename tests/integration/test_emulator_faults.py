"""Fault injection configured at run time, and request accounting."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest

from tests.fixtures.kube import kube  # noqa: F401 - the fixture, until tests/conftest.py registers the plugin
from tests.kube.emulator import KubeEmulator
from tests.kube.faults import FaultKind
from tests.kube.http import KubeHttp
from tests.kube.samples import widget, widget_crd

WIDGETS_URL = "/apis/example.dev/v1/namespaces/default/widgets"


@pytest.fixture
def api(kube: KubeEmulator) -> Iterator[KubeHttp]:  # noqa: F811
    kube.apply_crd(widget_crd())
    kube.create(widget("w"))
    yield KubeHttp(kube.url)


@pytest.mark.parametrize(("kind", "verb_call", "status", "reason"), [
    (FaultKind.CONFLICT, lambda api: api.patch(f"{WIDGETS_URL}/w", {"spec": {"size": 2}}), 409, "Conflict"),
    (FaultKind.THROTTLE, lambda api: api.get(f"{WIDGETS_URL}/w"), 429, "TooManyRequests"),
    (FaultKind.SERVER_ERROR, lambda api: api.get(WIDGETS_URL), 500, "InternalError"),
])
def test_scheduled_faults_fail_exactly_the_next_matching_requests(
    kube: KubeEmulator, api: KubeHttp, kind: FaultKind, verb_call, status: int, reason: str,  # noqa: F811
) -> None:
    kube.faults.inject(kind, times=2, resources={"widgets"})
    replies = [verb_call(api) for _ in range(3)]
    assert [(r.status, r.body["reason"]) for r in replies[:2]] == [(status, reason)] * 2
    assert replies[2].status == 200
    assert sum(kube.faults.injected_counts().values()) == 2


def test_throttling_sends_retry_after(kube: KubeEmulator, api: KubeHttp) -> None:  # noqa: F811
    kube.faults.inject("throttle", times=1, retry_after=3)
    reply = api.get(f"{WIDGETS_URL}/w")
    assert reply.headers["Retry-After"] == "3" and reply.body["details"]["retryAfterSeconds"] == 3


def test_conflicts_never_hit_reads_and_faults_can_target_verbs_and_subresources(
    kube: KubeEmulator, api: KubeHttp,  # noqa: F811
) -> None:
    kube.faults.inject("conflict", resources={"widgets/status"})
    assert api.get(f"{WIDGETS_URL}/w").status == 200
    assert api.patch(f"{WIDGETS_URL}/w", {"spec": {"size": 2}}).status == 200
    assert api.patch(f"{WIDGETS_URL}/w/status", {"status": {"a": 1}}).status == 409
    kube.faults.clear()
    kube.faults.inject("server_error", verbs={"list"})
    assert api.get(f"{WIDGETS_URL}/w").status == 200 and api.get(WIDGETS_URL).status == 500


def test_probabilistic_faults_strike_about_that_often_and_are_reproducible(kube: KubeEmulator, api: KubeHttp) -> None:  # noqa: F811
    def run() -> list[int]:
        kube.faults.clear()
        kube.faults.reseed(7)
        kube.faults.inject("server_error", probability=0.1, verbs={"get"})
        return [api.get(f"{WIDGETS_URL}/w").status for _ in range(400)]

    first = run()
    assert 20 <= first.count(500) <= 60
    assert run() == first


def test_injected_watch_gone_is_an_error_event_with_code_410(kube: KubeEmulator, api: KubeHttp) -> None:  # noqa: F811
    kube.faults.inject("watch_gone", times=1)
    events = list(api.watch(WIDGETS_URL, resourceVersion="1"))
    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]
    assert [e["type"] for e in api.watch(WIDGETS_URL, timeoutSeconds=0.3)] == ["ADDED"]


def test_injected_watch_gone_can_strike_mid_stream(kube: KubeEmulator, api: KubeHttp) -> None:  # noqa: F811
    kube.faults.inject("watch_gone", times=1, after_seconds=0.3)
    assert [e["type"] for e in api.watch(WIDGETS_URL)] == ["ADDED", "ERROR"]


def test_injected_watch_drop_breaks_the_connection_after_events(kube: KubeEmulator, api: KubeHttp) -> None:  # noqa: F811
    kube.faults.inject("watch_drop", times=1, after_seconds=0.3)
    received = []
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        for event in api.watch(WIDGETS_URL):
            received.append(event["type"])
    assert received == ["ADDED"]


def test_requests_are_counted_by_verb_and_resource(kube: KubeEmulator, api: KubeHttp) -> None:  # noqa: F811
    kube.faults.reset_counters()
    api.get(f"{WIDGETS_URL}/w")
    api.get(WIDGETS_URL)
    api.patch(f"{WIDGETS_URL}/w/status", {"status": {"a": 1}})
    api.patch(f"{WIDGETS_URL}/w/status", {"status": {"a": 2}})
    api.get("/apis")
    assert kube.faults.request_counts() == {
        ("get", "widgets"): 1, ("list", "widgets"): 1, ("patch", "widgets/status"): 2, ("get", "discovery"): 1,
    }
