"""The operator exports each run's training figures (step, loss, tokens/s) from status.progress as Prometheus gauges
labelled by namespace and name, on its metrics endpoint, and drops them when the run is deleted."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.s3 import S3Server
from tests.fixtures.s3server import free_port
from tests.integration.operator_harness import OperatorBed, eventually, operator_bed
from tests.kube.emulator import KubeEmulator

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.kube"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def bed(kube: KubeEmulator, tmp_path: Path, s3_bucket: str, s3_server: S3Server) -> Iterator[OperatorBed]:
    with operator_bed(kube, tmp_path / "executor", s3_bucket, s3_server.endpoint) as bed:
        yield bed


def training_samples(url: str) -> dict[tuple[str, str, str], float]:
    """(gauge, namespace, name) -> value of every kubetune_run_training_* sample the endpoint serves."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return {(sample.name, sample.labels["namespace"], sample.labels["name"]): sample.value
            for family in text_string_to_metric_families(text) if family.name.startswith("kubetune_run_training_")
            for sample in family.samples}


def test_training_figures_of_a_run_are_gauges_on_the_metrics_endpoint_until_the_run_is_deleted(
    bed: OperatorBed,
) -> None:
    server, thread = start_http_server(free_port(), addr="127.0.0.1", registry=bed.metrics.registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        with bed.operator():
            bed.create_run("tiny", storage={"keepOnDelete": False})
            progress = bed.wait_phase("tiny", "Succeeded", timeout=90)["status"]["progress"]
            samples = training_samples(url)
            assert samples == {
                ("kubetune_run_training_step", "default", "tiny"): progress["step"],
                ("kubetune_run_training_loss", "default", "tiny"): progress["loss"],
                ("kubetune_run_training_tokens_per_second", "default", "tiny"): progress["tokensPerSecond"],
            }  # the tiny stage reports no eval loss or learning rate: no sample rather than a made-up one
            assert progress["step"] == 3 and progress["loss"] == 0.6667

            bed.kube.delete("ftr", "tiny")
            bed.kube.wait_for("ftr", "tiny", lambda obj: obj is None, timeout=30)
            eventually(lambda: training_samples(url) == {}, what="the deleted run's gauges to go")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
