"""Our MLflow REST client's retry policy: no answer, 429 and 5xx are tried again with growing pauses; a refusal
(4xx) is not, and its MLflow error code reaches the caller."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from kubetune.jobs.tracking_mlflow import MlflowClient, MlflowError, credentials_header
from tests.fixtures.s3server import free_port


class Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) of `answers`."""

    answers: ClassVar[list[tuple[int, dict[str, object]]]] = []
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.seen.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, body = self.answers.pop(0)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[str]:
    Scripted.answers, Scripted.seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_a_busy_server_is_asked_again_after_growing_pauses(server: str) -> None:
    Scripted.answers = [(503, {}), (429, {}), (200, {"run": {"info": {"run_id": "r1", "experiment_id": "7"}}})]
    pauses: list[float] = []
    client = MlflowClient(server, headers={}, backoff_s=0.5, sleep=pauses.append)
    run = client.create_run("7", "demo", {})
    assert (run.run_id, run.experiment_id) == ("r1", "7")
    assert pauses == [0.5, 1.0] and len(Scripted.seen) == 3


def test_a_refusal_is_not_retried_and_carries_the_mlflow_error_code(server: str) -> None:
    Scripted.answers = [(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "param changed"})]
    client = MlflowClient(server, headers={}, sleep=lambda _: None)
    with pytest.raises(MlflowError) as raised:
        client.log_batch("r1", params={"training.lora.r": "8"})
    assert raised.value.code == "INVALID_PARAMETER_VALUE" and not raised.value.retryable
    assert len(Scripted.seen) == 1


def test_a_server_that_stays_down_fails_after_the_last_attempt() -> None:
    pauses: list[float] = []
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = MlflowClient(nobody, headers={}, attempts=3, sleep=pauses.append)
    with pytest.raises(MlflowError) as raised:
        client.set_status("r1", "FINISHED", ended=True)
    assert raised.value.retryable and pauses == [0.5, 1.0]


def test_credentials_come_from_mlflows_own_variables() -> None:
    assert credentials_header({"MLFLOW_TRACKING_TOKEN": "t0k"}) == {"Authorization": "Bearer t0k"}
    assert credentials_header({"MLFLOW_TRACKING_USERNAME": "ann", "MLFLOW_TRACKING_PASSWORD": "pw"}) == {
        "Authorization": "Basic YW5uOnB3"}
    assert credentials_header({}) == {}
