"""The operator tells a run's webhooks about its transitions: real kopf against the Kubernetes emulator, the tiny
stage program as the Jobs, SeaweedFS as the store, and a real HTTP receiver on loopback whose URL is in a Secret.

Each transition reaches each webhook at most once, also across an operator restart; a slow receiver holds up no
reconcile; a receiver that fails for a while gets the notification once it recovers; one that refuses it gets no
retry and the run a Warning Event."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.s3 import S3Server
from tests.integration.operator_harness import OperatorBed, eventually, operator_bed
from tests.integration.webhook_receiver import TOKEN_PATH, Answer, Receiver, always, failing_first
from tests.kube.emulator import KubeEmulator

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.kube"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SECRET_NAME = "team-webhooks"
ALL_EVENTS = ["RunStarted", "StageSucceeded", "StageFailed", "GateFailed", "RunSucceeded", "RunFailed"]
FINISHED = ("Delivered", "Failed", "Unconfirmed")


@pytest.fixture
def bed(kube: KubeEmulator, tmp_path: Path, s3_bucket: str, s3_server: S3Server) -> Iterator[OperatorBed]:
    with operator_bed(kube, tmp_path / "executor", s3_bucket, s3_server.endpoint) as bed:
        yield bed


def _notified_run(bed: OperatorBed, name: str, receiver: Receiver, *, fmt: str = "json", timeout: int = 10,
                  placeholders: dict[str, str] | None = None) -> None:
    bed.kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET_NAME, "namespace": "default"},
                     "stringData": {"url": receiver.url}})
    webhook = {"urlSecret": {"name": SECRET_NAME, "key": "url"}, "format": fmt, "events": ALL_EVENTS,
               "timeoutSeconds": timeout}
    bed.create_run(name, notify={"webhooks": [webhook]}, placeholders=placeholders)


def _entries(bed: OperatorBed, name: str) -> dict[str, dict[str, Any]]:
    return dict((bed.kube.get("ftr", name).get("status") or {}).get("notifications") or {})


def _all_finished(bed: OperatorBed, name: str, count: int) -> dict[str, dict[str, Any]]:
    eventually(lambda: len(entries := _entries(bed, name)) == count
               and all(e["state"] in FINISHED for e in entries.values()), timeout=60, what="notifications finished")
    return _entries(bed, name)


def test_each_transition_of_a_run_reaches_the_webhook_exactly_once_and_the_url_stays_secret(bed: OperatorBed) -> None:
    with Receiver(always(Answer())).serving() as receiver, bed.operator():
        _notified_run(bed, "told", receiver)
        run = bed.wait_phase("told", "Succeeded", timeout=90)
        entries = _all_finished(bed, "told", 7)
        expected = Counter({"RunStarted": 1, "StageSucceeded": 5, "RunSucceeded": 1})
        eventually(lambda: Counter(receiver.events()) == expected, what="every notification received")

    assert {e["state"] for e in entries.values()} == {"Delivered"}
    assert {(e["event"], e["stage"]) for e in entries.values() if e["event"] == "StageSucceeded"} == {
        ("StageSucceeded", s) for s in ("dataset", "train", "merge", "convert", "evaluate")}
    assert len({body["id"] for body in receiver.bodies()}) == 7  # one id per transition, none sent twice
    train = next(b for b in receiver.bodies("StageSucceeded") if b["stage"] == "train")
    assert train["outputDigest"] == run["status"]["stages"]["train"]["outputDigest"]
    assert train["artifacts"] == run["status"]["stages"]["train"]["outputs"]
    assert "adapter/adapter_model.safetensors" in [a["name"] for a in train["artifacts"]]
    (done,) = receiver.bodies("RunSucceeded")
    assert {a["name"] for a in done["artifacts"]} == {a["name"] for a in run["status"]["artifacts"]}
    assert done["run"] == {"name": "told", "namespace": "default", "uid": run["metadata"]["uid"],
                           "generation": run["metadata"]["generation"]}
    final = bed.kube.get("ftr", "told")
    seen = json.dumps(final) + json.dumps(bed.events("told"))
    assert TOKEN_PATH.rsplit("/", 1)[-1] not in seen and receiver.url not in seen


def test_a_slow_receiver_holds_up_no_reconcile_and_the_run_finishes_while_it_waits(bed: OperatorBed) -> None:
    with Receiver(always(Answer(delay=60))).serving() as receiver, bed.operator():
        _notified_run(bed, "slow", receiver, timeout=60)
        bed.wait_phase("slow", "Succeeded", timeout=90)
        # The first notification is still waiting for its answer; the rest queue behind it, in order.
        eventually(lambda: len(receiver.requests) >= 1, what="the first notification sent")
        assert len(receiver.requests) == 1
        states = Counter(e["state"] for e in _entries(bed, "slow").values())
        assert states == Counter({"Sending": 1, "Pending": 6})


def test_a_receiver_that_fails_for_a_while_gets_each_notification_once_it_recovers(bed: OperatorBed) -> None:
    with Receiver(failing_first(2, Answer(503))).serving() as receiver, bed.operator():
        _notified_run(bed, "flaky", receiver)
        bed.wait_phase("flaky", "Succeeded", timeout=90)
        entries = _all_finished(bed, "flaky", 7)

    assert {e["state"] for e in entries.values()} == {"Delivered"}
    assert sum(e["attempts"] for e in entries.values()) == 9 == len(receiver.requests)  # 7 + the two 503s
    accepted = [r.body["id"] for r in receiver.requests[2:]]
    assert len(accepted) == len(set(accepted)) == 7
    assert "NotificationFailed" not in [event["reason"] for event in bed.events("flaky")]


def test_a_receiver_that_refuses_a_notification_gets_no_retry_and_the_run_a_warning_event(bed: OperatorBed) -> None:
    with Receiver(always(Answer(403))).serving() as receiver, bed.operator():
        _notified_run(bed, "refused", receiver)
        bed.wait_phase("refused", "Succeeded", timeout=90)
        entries = _all_finished(bed, "refused", 7)
        eventually(lambda: len([e for e in bed.events("refused") if e["reason"] == "NotificationFailed"]) == 7,
                   what="a Warning Event per refused notification")

    assert len(receiver.requests) == 7
    assert {(e["state"], e["attempts"]) for e in entries.values()} == {("Failed", 1)}
    assert all("HTTP 403" in e["error"] and "not retried" in e["error"] for e in entries.values())
    warning = next(e for e in bed.events("refused") if e["reason"] == "NotificationFailed")
    assert warning["type"] == "Warning" and "HTTP 403" in warning["message"]
    counted = bed.metrics.registry.get_sample_value("kubetune_notifications_total",
                                                    {"event": "StageSucceeded", "outcome": "failed"})
    assert counted == 5


def test_a_restarted_operator_sends_what_was_pending_and_never_again_what_was_in_flight(bed: OperatorBed) -> None:
    # The first request hangs until the test ends: the operator stops while it is in flight.
    with Receiver(lambda number: Answer(delay=60) if number == 1 else Answer()).serving() as receiver:
        with bed.operator():
            _notified_run(bed, "restart", receiver, timeout=60)
            bed.wait_phase("restart", "Succeeded", timeout=90)
            eventually(lambda: len(receiver.requests) == 1, what="the first notification in flight")
        (in_flight,) = [key for key, e in _entries(bed, "restart").items() if e["state"] == "Sending"]

        with bed.operator():
            entries = _all_finished(bed, "restart", 7)
            eventually(lambda: len(receiver.requests) == 7, what="the pending notifications sent")

    assert entries[in_flight]["state"] == "Unconfirmed"
    assert [e["state"] for k, e in entries.items() if k != in_flight] == ["Delivered"] * 6
    ids = [r.body["id"] for r in receiver.requests]
    assert len(ids) == len(set(ids)) == 7  # nothing twice: the one in flight is not sent again


def test_a_failed_gate_tells_the_webhook_the_prompt_the_answer_and_the_expectation(bed: OperatorBed) -> None:
    with Receiver(always(Answer())).serving() as receiver, bed.operator():
        _notified_run(bed, "gated", receiver, fmt="slack", placeholders={"TINY_FAIL": "evaluate:gate"})
        bed.wait_phase("gated", "Failed", timeout=90)
        entries = _all_finished(bed, "gated", 7)

    assert Counter(e["event"] for e in entries.values()) == Counter(
        {"RunStarted": 1, "StageSucceeded": 4, "GateFailed": 1, "RunFailed": 1})
    (gate,) = receiver.bodies("GateFailed")
    text = json.dumps(gate)
    assert gate["text"].startswith(":x: FineTuneRun default/gated failed the evaluate gate")
    assert "What is your name?" in text and "I'm Emily." in text and "answer lacks 'nova'" in text


def test_a_webhook_whose_secret_is_missing_fails_at_once_naming_the_secret_and_the_run_goes_on(
        bed: OperatorBed) -> None:
    webhook = {"urlSecret": {"name": "no-such-secret", "key": "url"}, "events": ["RunStarted", "RunSucceeded"]}
    with bed.operator():
        bed.create_run("unsent", notify={"webhooks": [webhook]})
        bed.wait_phase("unsent", "Succeeded", timeout=90)
        entries = _all_finished(bed, "unsent", 2)
        eventually(lambda: len([e for e in bed.events("unsent") if e["reason"] == "NotificationFailed"]) == 2,
                   what="a Warning Event per notification")

    assert {(e["state"], e["attempts"]) for e in entries.values()} == {("Failed", 0)}
    assert {e["error"] for e in entries.values()} == {"Secret default/no-such-secret key 'url': no such Secret"}
