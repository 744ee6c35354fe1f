"""A notification POSTed to a real HTTP receiver on loopback: retried with backoff while the receiver says "not now"
(5xx, 429 with Retry-After) or cannot be reached, never retried once it refuses the body (4xx), bounded by its
timeout when the receiver is slow, and never showing the webhook URL in what it reports."""

from __future__ import annotations

import socket
import time

import pytest

from kubetune.notify.deliver import RetryPolicy, post
from kubetune.notify.message import Notification
from tests.integration.webhook_receiver import TOKEN_PATH, Answer, Receiver, always, failing_first

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAST = RetryPolicy(attempts=4, base_delay=0.02, max_delay=0.1)
SECRET = TOKEN_PATH.rsplit("/", 1)[-1]


def _notification() -> Notification:
    return Notification(id="uid-1/g1-RunSucceeded-run-0123456789", event="RunSucceeded", run="identity",
                        namespace="team-a", uid="uid-1", generation=1, time="2026-12-06T10:00:00+00:00",
                        phase="Succeeded", message="FineTuneRun succeeded: 5 stages done")


def test_an_accepted_notification_is_posted_once_as_json_with_its_idempotency_key() -> None:
    with Receiver(always(Answer(204))).serving() as receiver:
        told = _notification()
        outcome = post(receiver.url, told.body("json"), timeout=5, idempotency_key=told.id, policy=FAST)

    assert (outcome.delivered, outcome.attempts, outcome.status) == (True, 1, 204)
    (request,) = receiver.requests
    assert request.path == TOKEN_PATH
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == told.id
    assert request.body == told.document()


def test_server_errors_are_retried_until_the_receiver_accepts_and_it_is_delivered_exactly_once() -> None:
    with Receiver(failing_first(2, Answer(503))).serving() as receiver:
        told = _notification()
        outcome = post(receiver.url, told.body("slack"), timeout=5, idempotency_key=told.id, policy=FAST)

    assert (outcome.delivered, outcome.attempts, outcome.status) == (True, 3, 200)
    assert len(receiver.requests) == 3  # two refused with 503, one accepted: one delivery
    assert {r.headers["Idempotency-Key"] for r in receiver.requests} == {told.id}


def test_a_refused_notification_is_not_retried_and_the_error_hides_the_url() -> None:
    with Receiver(always(Answer(404))).serving() as receiver:
        told = _notification()
        outcome = post(receiver.url, told.body("json"), timeout=5, idempotency_key=told.id, policy=FAST)

    assert not outcome.delivered
    assert (outcome.attempts, outcome.status, len(receiver.requests)) == (1, 404, 1)
    assert outcome.error is not None and "HTTP 404" in outcome.error and "not retried" in outcome.error
    assert SECRET not in outcome.error and "127.0.0.1" not in outcome.error


def test_too_many_requests_waits_as_long_as_retry_after_asks() -> None:
    with Receiver(failing_first(1, Answer(429, {"Retry-After": "1"}))).serving() as receiver:
        told = _notification()
        outcome = post(receiver.url, told.body("json"), timeout=5, idempotency_key=told.id, policy=FAST)

    assert (outcome.delivered, outcome.attempts) == (True, 2)
    first, second = receiver.requests
    assert second.at - first.at >= 0.95  # the backoff alone would have waited at most 0.02 s


def test_a_slow_receiver_costs_one_timeout_per_attempt_and_then_the_notification_fails() -> None:
    with Receiver(always(Answer(delay=30))).serving() as receiver:
        told = _notification()
        started = time.monotonic()
        outcome = post(receiver.url, told.body("json"), timeout=1, idempotency_key=told.id,
                       policy=RetryPolicy(attempts=2, base_delay=0.02, max_delay=0.02))
        took = time.monotonic() - started

    assert not outcome.delivered and outcome.attempts == 2 and len(receiver.requests) == 2
    assert outcome.error is not None and "timed out" in outcome.error and SECRET not in outcome.error
    assert took < 25  # bounded by the timeouts, not by the receiver's 30 s


def test_an_unreachable_receiver_is_retried_then_reported_without_its_url() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}{TOKEN_PATH}"

    outcome = post(url, b"{}", timeout=2, idempotency_key="k", policy=FAST)

    assert not outcome.delivered and outcome.attempts == FAST.attempts and outcome.status is None
    assert outcome.error is not None and "ConnectionRefused" in outcome.error and SECRET not in outcome.error
