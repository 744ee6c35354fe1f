"""A real HTTP webhook receiver on loopback (http.server in a thread) whose answers a test scripts: it records every
request (path, headers, JSON body) and answers each with a status, headers and a delay of the test's choosing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The secret part of the URL, as in a Slack incoming-webhook URL: it must never show in a message or a status.
TOKEN_PATH = "/services/T000/B000/s3cr3t-t0ken"


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a slow receiver)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # monotonic


class Receiver:
    def __init__(self, answer: Callable[[int], Answer]) -> None:
        self.answer = answer  # called with the request's number (1-based)
        self.requests: list[Received] = []
        self.release = threading.Event()  # ends every delay at once (when the test stops the server)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{TOKEN_PATH}"

    def bodies(self, event: str | None = None) -> list[Any]:
        with self._lock:
            found = [r.body for r in self.requests]
        return [b for b in found if event is None or _event(b) == event]

    def events(self) -> list[str]:
        return [_event(body) for body in self.bodies()]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        with self._lock:
            self.requests.append(Received(handler.path, dict(handler.headers), json.loads(raw), time.monotonic()))
            number = len(self.requests)
        answer = self.answer(number)
        if answer.delay:
            self.release.wait(answer.delay)
        try:
            handler.send_response(answer.status)
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            handler.wfile.write(b"ok")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender timed out and hung up first: what a slow receiver is for

    @contextmanager
    def serving(self) -> Iterator[Receiver]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.release.set()
            server.shutdown()
            server.server_close()
            thread.join(5)


def _event(body: Any) -> str:
    """The event of a JSON body, or of a Slack body (its context line starts with the event)."""
    if "event" in body:
        return str(body["event"])
    return str(body["blocks"][-1]["elements"][0]["text"]).split(" ", 1)[0]


def always(answer: Answer) -> Callable[[int], Answer]:
    return lambda _: answer


def failing_first(count: int, failure: Answer) -> Callable[[int], Answer]:
    """`failure` for the first `count` requests, then 200."""
    return lambda number: failure if number <= count else Answer()
