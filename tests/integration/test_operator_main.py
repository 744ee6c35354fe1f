"""`python -m kubetune.operator` as the Deployment runs it: settings from the environment, the kubeconfig login,
a run driven to Succeeded, the liveness endpoint and the Prometheus metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


def test_the_operator_module_runs_a_fine_tune_run_and_serves_health_and_metrics(
    bed: OperatorBed, kubeconfig: Path, tmp_path: Path
) -> None:
    metrics_port, health_port = free_port(), free_port()
    env = {
        **os.environ, "KUBECONFIG": str(kubeconfig), "KUBETUNE_NAMESPACES": "default",
        "KUBETUNE_JOB_COMMAND": f'["python", "{TINY_STAGE}"]', "KUBETUNE_RECONCILE_INTERVAL": "1",
        "KUBETUNE_METRICS_PORT": str(metrics_port), "KUBETUNE_HEALTH_PORT": str(health_port),
    }
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "kubetune.operator"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        eventually(lambda: _get(f"http://127.0.0.1:{health_port}/healthz")[0] == 200, timeout=60,
                   what="the liveness endpoint")
        bed.create_run("main")
        bed.wait_phase("main", "Succeeded", timeout=90)
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        eventually(lambda: 'kubetune_runs{phase="Succeeded"} 1.0' in _get(metrics)[1], what="the run in metrics")
        text = _get(metrics)[1]
        assert 'kubetune_job_creations_total{stage="evaluate"} 1.0' in text
        assert 'kubetune_reconciles_total{outcome="ok"}' in text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, log_path.read_text(errors="replace")[-4000:]
