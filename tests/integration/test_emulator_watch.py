"""Watch streams: ordered events, replay from a resourceVersion, 410 Gone, bookmarks, selectors, timeouts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.kube import kube  # noqa: F401 - the fixture, until tests/conftest.py registers the plugin
from tests.kube.emulator import KubeEmulator
from tests.kube.http import KubeHttp
from tests.kube.samples import widget, widget_crd

WIDGETS_URL = "/apis/example.dev/v1/namespaces/default/widgets"


@pytest.fixture
def api(kube: KubeEmulator) -> Iterator[KubeHttp]:  # noqa: F811
    kube.apply_crd(widget_crd())
    yield KubeHttp(kube.url)


def summary(events: list[dict]) -> list[tuple[str, str]]:
    return [(event["type"], event["object"]["metadata"].get("name", "")) for event in events]


def test_watch_replays_every_change_after_a_resource_version_in_order(api: KubeHttp) -> None:
    start = api.get(WIDGETS_URL).body["metadata"]["resourceVersion"]
    api.post(WIDGETS_URL, widget("a"))
    api.patch(f"{WIDGETS_URL}/a", {"spec": {"size": 4}})
    api.post(WIDGETS_URL, widget("b"))
    api.delete(f"{WIDGETS_URL}/a")
    events = list(api.watch(WIDGETS_URL, resourceVersion=start, timeoutSeconds=1))
    assert summary(events) == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    versions = [int(event["object"]["metadata"]["resourceVersion"]) for event in events]
    assert versions == sorted(versions) and len(set(versions)) == 4


def test_watch_without_resource_version_starts_with_the_current_state_then_streams(api: KubeHttp) -> None:
    api.post(WIDGETS_URL, widget("existing"))
    events: list[dict] = []
    current_state_arrived = threading.Event()

    def read() -> None:
        for event in api.watch(WIDGETS_URL, timeoutSeconds=30):
            events.append(event)
            current_state_arrived.set()
            if len(events) == 2:
                return

    reader = threading.Thread(target=read)
    reader.start()
    assert current_state_arrived.wait(30), "the watch never sent the current state"
    api.post(WIDGETS_URL, widget("new"))  # created while the watch is open: it can only arrive streamed
    reader.join(30)
    assert summary(events) == [("ADDED", "existing"), ("ADDED", "new")]


def test_watch_from_a_compacted_resource_version_is_an_in_stream_410(kube: KubeEmulator, api: KubeHttp) -> None:  # noqa: F811
    old = api.post(WIDGETS_URL, widget("a")).body["metadata"]["resourceVersion"]
    api.patch(f"{WIDGETS_URL}/a", {"spec": {"size": 5}})
    kube.compact()
    events = list(api.watch(WIDGETS_URL, resourceVersion=old))
    assert [event["type"] for event in events] == ["ERROR"]
    assert (events[0]["object"]["code"], events[0]["object"]["reason"]) == (410, "Expired")


def test_bounded_history_expires_old_resource_versions() -> None:
    with KubeEmulator(history_size=3) as small:
        small.apply_crd(widget_crd())
        api = KubeHttp(small.url)
        first = api.post(WIDGETS_URL, widget("w0")).body["metadata"]["resourceVersion"]
        for index in range(1, 5):
            api.post(WIDGETS_URL, widget(f"w{index}"))
        assert [e["type"] for e in api.watch(WIDGETS_URL, resourceVersion=first)] == ["ERROR"]
        recent = api.get(WIDGETS_URL).body["metadata"]["resourceVersion"]
        assert list(api.watch(WIDGETS_URL, resourceVersion=recent, timeoutSeconds=0.3)) == []


def test_label_selected_watch_sees_objects_enter_and_leave_the_selection(api: KubeHttp) -> None:
    start = api.get(WIDGETS_URL).body["metadata"]["resourceVersion"]
    api.post(WIDGETS_URL, widget("w"))
    api.patch(f"{WIDGETS_URL}/w", {"metadata": {"labels": {"team": "a"}}})
    api.patch(f"{WIDGETS_URL}/w", {"spec": {"size": 8}})
    api.patch(f"{WIDGETS_URL}/w", {"metadata": {"labels": {"team": "b"}}})
    events = list(api.watch(WIDGETS_URL, resourceVersion=start, labelSelector="team=a", timeoutSeconds=1))
    assert summary(events) == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]


def test_namespaced_watch_ignores_other_namespaces(kube: KubeEmulator, api: KubeHttp) -> None:  # noqa: F811
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    start = api.get(WIDGETS_URL).body["metadata"]["resourceVersion"]
    api.post("/apis/example.dev/v1/namespaces/team/widgets", widget("elsewhere", namespace="team"))
    api.post(WIDGETS_URL, widget("here"))
    assert summary(list(api.watch(WIDGETS_URL, resourceVersion=start, timeoutSeconds=1))) == [("ADDED", "here")]
    everywhere = list(api.watch("/apis/example.dev/v1/widgets", resourceVersion=start, timeoutSeconds=1))
    assert summary(everywhere) == [("ADDED", "elsewhere"), ("ADDED", "here")]


def test_bookmarks_carry_the_latest_resource_version_when_allowed(kube: KubeEmulator, api: KubeHttp) -> None:  # noqa: F811
    kube.bookmark_interval = 0.2
    start = api.get(WIDGETS_URL).body["metadata"]["resourceVersion"]
    created = api.post(WIDGETS_URL, widget("a")).body
    events = list(api.watch(WIDGETS_URL, resourceVersion=start, allowWatchBookmarks="true", timeoutSeconds=1))
    bookmarks = [event for event in events if event["type"] == "BOOKMARK"]
    assert events[0]["type"] == "ADDED" and bookmarks
    assert bookmarks[-1]["object"]["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    plain = list(api.watch(WIDGETS_URL, resourceVersion=start, timeoutSeconds=0.5))
    assert [event["type"] for event in plain] == ["ADDED"]


def test_send_initial_events_ends_with_an_initial_events_end_bookmark(api: KubeHttp) -> None:
    api.post(WIDGETS_URL, widget("a"))
    events = list(api.watch(WIDGETS_URL, sendInitialEvents="true", resourceVersionMatch="NotOlderThan",
                            allowWatchBookmarks="true", timeoutSeconds=0.5))
    assert [event["type"] for event in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_timeout_seconds_ends_the_stream_cleanly(api: KubeHttp) -> None:
    started = time.monotonic()
    assert list(api.watch(WIDGETS_URL, timeoutSeconds=0.5)) == []
    assert 0.4 < time.monotonic() - started < 3


def test_many_objects_fan_out_to_many_watches_without_loss(kube: KubeEmulator, api: KubeHttp) -> None:  # noqa: F811
    """The load test's shape: 500 objects, each written a few times, fanned out to 20 watches. (How fast is
    benchmarks/operator_load.py's business: a timed assertion here fails on a busy machine.)"""
    start = api.get(WIDGETS_URL).body["metadata"]["resourceVersion"]
    counts = [0] * 20

    def watch(index: int) -> None:
        # Each watcher stops once it has every event; the server-side timeout is only a safety net.
        for _ in KubeHttp(kube.url).watch(WIDGETS_URL, resourceVersion=start, timeoutSeconds=60):
            counts[index] += 1
            if counts[index] == 1500:
                return

    watchers = [threading.Thread(target=watch, args=(index,)) for index in range(20)]
    for watcher in watchers:
        watcher.start()
    for index in range(500):
        kube.create(widget(f"w{index}"))
        kube.patch_status("widgets", f"w{index}", {"phase": "Running"})
        kube.patch("widgets", f"w{index}", {"spec": {"size": 5}})
    for watcher in watchers:
        watcher.join()
    assert counts == [1500] * 20
