"""The web view's HTTP server, on the standard library: GET and HEAD only, HTML pages and verified downloads."""

from __future__ import annotations

import base64
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

from kubetune.store import StoreError
from kubetune.webview import render
from kubetune.webview.model import NotFound, RunSource

log = logging.getLogger(__name__)

CHECKED_WHOLE_BYTES = 16 << 20
# Inline style and the refresh script only; the page fetches itself and nothing else.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class WebView(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, source: RunSource, host: str, port: int) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.source = source
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> WebView:
        """Serve from a daemon thread (the operator, tests); `kubetune ui` calls serve_forever itself."""
        self.thread = threading.Thread(target=self.serve_forever, name="kubetune-web", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self.thread is not None:
            self.thread.join()


class _Handler(BaseHTTPRequestHandler):
    server: WebView
    server_version = "kubetune-web"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _refuse(self) -> None:
        self._send_html(HTTPStatus.METHOD_NOT_ALLOWED, render.error_page(405, "This view is read-only."), True,
                        {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _answer(self, *, body: bool) -> None:
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/")[1:]]
        source = self.server.source
        try:
            if parts in ([""], []):
                self._send_html(HTTPStatus.OK, render.runs_page(source.runs()), body)
            elif parts == ["healthz"]:
                self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8", body)
            elif len(parts) == 3 and parts[0] == "runs":
                self._send_html(HTTPStatus.OK, render.run_page(source.page(parts[1], parts[2])), body)
            elif len(parts) >= 6 and parts[0] == "runs" and parts[3] == "files":
                self._download(parts[1], parts[2], parts[4], "/".join(parts[5:]), body)
            else:
                raise NotFound(f"no page at {self.path}")
        except NotFound as error:
            self._send_html(HTTPStatus.NOT_FOUND, render.error_page(404, str(error)), body)
        except StoreError as error:
            self._send_html(HTTPStatus.BAD_GATEWAY, render.error_page(502, f"the store: {error}"), body)
        except Exception:
            log.exception("web view: %s", self.path)
            self._send_html(HTTPStatus.INTERNAL_SERVER_ERROR,
                            render.error_page(500, "Something went wrong; the server's log says what."), body)

    def _download(self, namespace: str, name: str, stage: str, path: str, body: bool) -> None:
        with self.server.source.download(namespace, name, stage, path) as fetched:
            row = fetched.row
            # A small file is checked whole before the answer starts: a changed one is a clean 502.
            whole = b"".join(fetched.verified()) if row.size <= CHECKED_WHOLE_BYTES else None
            self.send_response(HTTPStatus.OK)
            for header, value in SECURITY_HEADERS.items():
                self.send_header(header, value)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(row.size))
            filename = row.path.rsplit("/", 1)[-1]
            self.send_header("Content-Disposition", f"attachment; filename*=UTF-8''{quote(filename, safe='')}")
            digest = base64.b64encode(bytes.fromhex(row.sha256)).decode()
            self.send_header("Repr-Digest", f"sha-256=:{digest}:")  # RFC 9530: what the bytes must hash to
            self.end_headers()
            if not body:
                return
            if whole is not None:
                self.wfile.write(whole)
                return
            try:
                for chunk in fetched.verified():
                    self.wfile.write(chunk)
            except StoreError as error:
                # Headers are out: end the connection short of Content-Length, so the client sees a failed download.
                log.warning("web view: download of %s cut off: %s", self.path, error)
                self.close_connection = True

    def _send_html(self, status: HTTPStatus, html: str, body: bool, extra: dict[str, str] | None = None) -> None:
        self._send(status, html.encode("utf-8"), "text/html; charset=utf-8", body, extra)

    def _send(self, status: HTTPStatus, data: bytes, content_type: str, body: bool,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for header, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(header, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)
