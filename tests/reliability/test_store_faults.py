"""About one S3 request in ten fails — 500 InternalError, 503 SlowDown, connections reset before the request or
halfway through a response body — and more are slow: runs still finish, retrying, and no corrupt or partial
artifact is ever visible (every published manifest's files verify by sha256, checked while the jobs write and after).

The stage Jobs run the tiny stage program on the real job runtime and S3 store (boto3), through the fault proxy in
front of SeaweedFS; the operator (a subprocess) reads the store through the same proxy.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.store import S3Store, join_key, read_manifest
from tests.fixtures.s3 import (
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    REGION,
    FaultPlan,
    FaultProxy,
    RecordedRequest,
    S3Server,
)
from tests.kube.emulator import KubeEmulator
from tests.kube.executor import JobExecutor
from tests.reliability.bed import (
    JOBS_PER_RUN,
    TINY_STAGE,
    OperatorProcess,
    duplicate_jobs,
    install_crd,
    operator_environment,
    output_problems,
    run_manifest,
    stage_jobs,
    succeeded,
    wait_all,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

RUNS = 6
SECRET = "kubetune-s3"
TEN_PERCENT = FaultPlan(error_rate=0.03, slowdown_rate=0.03, reset_rate=0.02, reset_mid_body_rate=0.02,
                        delay_rate=0.05, delay_s=0.5, seed=99)


def artifact_problems(store: S3Store) -> tuple[int, list[str]]:
    """(published outputs seen, problems): every manifest.json in the bucket must parse and its files verify."""
    manifests = [info.key.removesuffix("/manifest.json") for info in store.list() if info.key.endswith("/manifest.json")]
    problems = []
    for prefix in manifests:
        manifest = read_manifest(store, prefix)
        if manifest is None:
            continue  # withdrawn between the listing and the read (a retried publish)
        for entry in manifest.files:
            data = store.get_bytes(join_key(prefix, entry.path))
            if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
                problems.append(f"{prefix}/{entry.path}: visible but does not match its manifest")
    return len(manifests), problems


def retried_faults(requests: list[RecordedRequest]) -> int:
    """Faulted requests that the client sent again later (botocore's retries, then the store's own)."""
    return sum(1 for index, request in enumerate(requests) if request.fault is not None
               and any((later.method, later.path) == (request.method, request.path) for later in requests[index + 1:]))


class Auditor(threading.Thread):
    """Verifies every visible output, over and over, straight from SeaweedFS (no faults), while the jobs publish."""

    def __init__(self, store: S3Store) -> None:
        super().__init__(name="artifact-auditor", daemon=True)
        self.store = store
        self.stopping = threading.Event()
        self.passes = 0
        self.problems: list[str] = []

    def run(self) -> None:
        while not self.stopping.wait(0.3):
            self.problems += artifact_problems(self.store)[1]
            self.passes += 1


@pytest.fixture
def operator(kube: KubeEmulator, kubeconfig: Path, tmp_path: Path, s3_credentials: None) -> Iterator[OperatorProcess]:
    install_crd(kube)
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": "default"},
                 "stringData": {"AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY}})
    process = OperatorProcess(operator_environment(kubeconfig, ("python", str(TINY_STAGE))), tmp_path / "operator.log")
    yield process
    process.stop()


def test_runs_finish_and_no_corrupt_artifact_is_visible_when_a_tenth_of_store_requests_fail(
    kube: KubeEmulator, operator: OperatorProcess, tmp_path: Path, s3_bucket: str, s3_server: S3Server,
    fault_proxy: FaultProxy,
) -> None:
    storage = {"uri": f"s3://{s3_bucket}/runs", "endpoint": fault_proxy.endpoint, "region": REGION, "pathStyle": True,
               "credentialsSecret": SECRET}
    direct = S3Store(s3_bucket, "runs", endpoint=s3_server.endpoint, region=REGION, path_style=True)
    names = [f"store-{i}" for i in range(RUNS)]
    fault_proxy.set_plan(TEN_PERCENT)
    auditor = Auditor(direct)
    auditor.start()
    with JobExecutor(kube, tmp_path / "executor") as executor:
        operator.start()
        for name in names:
            kube.create(run_manifest(name, storage))
        try:
            runs = wait_all(kube, names, succeeded, timeout=240)
        except TimeoutError as error:
            raise AssertionError(f"{error}\noperator log:\n{operator.log_tail()}") from None
        finally:
            auditor.stopping.set()
            auditor.join()
        jobs = stage_jobs(kube)
        pods = Counter(len(executor.attempts(job["metadata"]["name"])) for job in jobs)
    fault_proxy.set_plan(FaultPlan())

    published, problems = artifact_problems(direct)
    requests = len(fault_proxy.requests)
    faulted = sum(count for kind, count in fault_proxy.injected.items() if kind != "delay")
    retried = retried_faults(fault_proxy.requests)
    print(f"\n[store-faults] {RUNS} runs Succeeded; {faulted} of {requests} S3 requests failed "
          f"({faulted / requests:.1%}) {dict(fault_proxy.injected)}, {retried} of them retried (same request again); "
          f"pods per Job {dict(pods)}; {auditor.passes} audit passes while running, {published} outputs verified after")
    assert {"error", "slowdown", "reset", "reset_mid_body", "delay"} <= set(fault_proxy.injected)
    assert 0.06 <= faulted / requests <= 0.14
    assert retried == faulted  # the store's clients retry every failed request
    assert auditor.passes > 0 and auditor.problems == []
    assert problems == [] and published == RUNS * JOBS_PER_RUN
    assert duplicate_jobs(jobs) == {}
    assert [p for run in runs for p in output_problems(direct, run, jobs)] == []
