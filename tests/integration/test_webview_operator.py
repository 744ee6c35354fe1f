"""`python -m kubetune.operator` with KUBETUNE_WEB_PORT (what the chart's web.enabled sets) serves the web view
beside the operator's work: the run it drives shows up there, and the view answers nothing but reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.s3 import S3Server, free_port
from tests.integration.operator_harness import TINY_STAGE, OperatorBed, eventually, operator_bed
from tests.kube.emulator import KubeEmulator

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.kube"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def bed(kube: KubeEmulator, tmp_path: Path, s3_bucket: str, s3_server: S3Server) -> Iterator[OperatorBed]:
    with operator_bed(kube, tmp_path / "executor", s3_bucket, s3_server.endpoint) as bed:
        yield bed


def request(url: str, method: str = "GET") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def test_the_operator_module_serves_the_web_view_on_kubetune_web_port(
        bed: OperatorBed, kubeconfig: Path, tmp_path: Path) -> None:
    web = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBETUNE_NAMESPACES": "default",
           "KUBETUNE_JOB_COMMAND": f'["python", "{TINY_STAGE}"]', "KUBETUNE_RECONCILE_INTERVAL": "1",
           "KUBETUNE_METRICS_PORT": "0", "KUBETUNE_HEALTH_PORT": "0", "KUBETUNE_WEB_PORT": web.rsplit(":", 1)[1]}
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-P", "-m", "kubetune.operator"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        eventually(lambda: request(f"{web}/healthz")[0] == 200, timeout=60, what="the web view")
        assert "No runs yet." in request(f"{web}/")[1]
        bed.create_run("seen")
        bed.wait_phase("seen", "Succeeded", timeout=90)
        status, page = request(f"{web}/runs/default/seen")
        assert status == 200 and "model-q8_0.gguf" in page and "StageSucceeded" in page
        assert 'href="/runs/default/seen"' in request(f"{web}/")[1]
        assert request(f"{web}/runs/kube-system/seen")[0] == 404  # a namespace the operator does not serve
        assert request(f"{web}/runs/default/seen", "DELETE")[0] == 405
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, log_path.read_text(errors="replace")[-4000:]
