"""One notification POSTed to one webhook: timeouts, retries with capped exponential backoff and full jitter on
answers that say "not now" (5xx, 429, 408) and on connection failures, `Retry-After` honoured, never a retry on
another 4xx (the receiver refused the body: sending it again cannot help), no redirects followed.

The URL is a credential (Slack's incoming-webhook URLs are), so no message this module makes contains it.
"""

from __future__ import annotations

import email.utils
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

USER_AGENT = "kubetune-notify/1"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 1.0  # before the 2nd attempt; doubled each time, then capped
    max_delay: float = 60.0
    max_retry_after: float = 300.0  # a receiver asking for longer is waited on this long


DEFAULT_POLICY = RetryPolicy()


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    attempts: int
    status: int | None = None  # the last HTTP status, if any answer came
    error: str | None = None  # why it was not delivered (never the URL)


class WebhookUrlError(ValueError):
    """The configured URL cannot be used (not http(s), no host): a configuration error, never retried."""


def check_url(url: str) -> None:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookUrlError("the webhook URL is not an http(s) URL with a host")


def redact(text: str, url: str) -> str:
    """`text` without the URL or its secret parts (path and query: Slack's token is in the path)."""
    parts = urlsplit(url)
    for secret in sorted({url, url.strip(), parts.path, parts.query} - {"", "/"}, key=len, reverse=True):
        text = text.replace(secret, "…")
    return text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is raised as an HTTPError: a webhook that moved is a configuration problem


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(url: str, body: bytes, *, timeout: float, idempotency_key: str, policy: RetryPolicy = DEFAULT_POLICY,
         stop: threading.Event | None = None, rng: Callable[[], float] = random.random) -> Outcome:
    """POST `body` (JSON) until the receiver accepts it (2xx), refuses it, or the attempts run out.

    `stop` (set on shutdown) ends the waiting between attempts early. Each request carries `Idempotency-Key`, the
    same on every attempt, so a receiver can drop a repeat of a request whose answer was lost (a read timeout)."""
    check_url(url)
    stop = stop or threading.Event()
    last_status: int | None = None
    error = "not sent"
    for attempt in range(1, policy.attempts + 1):
        request = urllib.request.Request(url.strip(), data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT, "Idempotency-Key": idempotency_key})
        retry_after: float | None = None
        try:
            with _OPENER.open(request, timeout=timeout) as answer:
                answer.read(65536)
                return Outcome(True, attempt, answer.status)
        except urllib.error.HTTPError as refused:
            last_status = refused.code
            error = f"HTTP {refused.code} {refused.reason}"
            if not _retryable(refused.code):
                return Outcome(False, attempt, last_status, redact(error + " (not retried: the receiver refused it)",
                                                                   url))
            retry_after = _retry_after(refused.headers.get("Retry-After"), policy.max_retry_after)
        except (urllib.error.URLError, OSError) as failed:
            reason = failed.reason if isinstance(failed, urllib.error.URLError) else failed
            error = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
        if attempt == policy.attempts:
            break
        backoff = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1)) * rng()  # full jitter
        if stop.wait(max(backoff, retry_after or 0.0)):
            return Outcome(False, attempt, last_status, redact(error + " (stopped before the next attempt)", url))
    return Outcome(False, policy.attempts, last_status, redact(f"{error} (after {policy.attempts} attempts)", url))


def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds from a Retry-After header: delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(cap, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(cap, max(0.0, (when - datetime.now(UTC)).total_seconds()))

