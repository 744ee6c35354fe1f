"""A tiny blocking HTTP client for talking to the emulator the way real clients do (tests of the HTTP surface)."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


class KubeHttp:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.timeout = timeout

    def _connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)

    @staticmethod
    def _target(path: str, query: dict[str, Any] | None) -> str:
        return path + ("?" + urllib.parse.urlencode(query) if query else "")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, Any] | None = None,
    ) -> Reply:
        connection = self._connection()
        try:
            payload = None if body is None else json.dumps(body)
            connection.request(method, self._target(path, query), body=payload, headers={"Content-Type": content_type})
            response = connection.getresponse()
            raw = response.read()
            return Reply(response.status, json.loads(raw) if raw else None, dict(response.getheaders()))
        finally:
            connection.close()

    def get(self, path: str, **query: Any) -> Reply:
        return self.request("GET", path, query=query or None)

    def post(self, path: str, body: Any) -> Reply:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Reply:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any, patch_type: str = "merge") -> Reply:
        """`patch_type`: merge | json | strategic."""
        content_type = {"merge": "merge-patch", "json": "json-patch", "strategic": "strategic-merge-patch"}[patch_type]
        return self.request("PATCH", path, body, content_type=f"application/{content_type}+json")

    def delete(self, path: str, body: Any = None, **query: Any) -> Reply:
        return self.request("DELETE", path, body, query=query or None)

    def watch(self, path: str, *, read_timeout: float = 5.0, **query: Any) -> Iterator[dict[str, Any]]:
        """Watch events until the server ends the stream; raises on a broken stream or read timeout."""
        connection = self._connection(read_timeout)
        try:
            connection.request("GET", self._target(path, {"watch": "true", **query}))
            response = connection.getresponse()
            if response.status != 200:
                raise RuntimeError(f"watch answered {response.status}: {response.read()!r}")
            while line := response.readline():
                if line.strip():
                    yield json.loads(line)
            # http.client ends readline() quietly on a stream cut before its final chunk; its chunk state tells
            # (None after the final chunk was read).
            if response.chunked and response.chunk_left is not None:
                raise ConnectionResetError("the watch stream was cut before its end")
        finally:
            connection.close()
