"""The operator under test: real kopf in a thread against the Kubernetes emulator, stage Jobs run by the Job
executor as local processes (the tiny stage program), and SeaweedFS (a real S3 server) as the store."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import kubernetes
import yaml

from kubetune.operator.handlers import register
from kubetune.operator.kube import KubeApi
from kubetune.operator.metrics import Metrics
from kubetune.operator.reconcile import Reconciler
from kubetune.operator.settings import OperatorSettings
from kubetune.store import Store, open_store
from tests.fixtures.s3 import FAKE_ACCESS_KEY, FAKE_SECRET_KEY, REGION
from tests.kube.emulator import KubeEmulator
from tests.kube.executor import JobExecutor
from tests.kube.kopf_thread import kopf_operator, login_to

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "kubetune.dev_finetuneruns.yaml"
TINY_STAGE = Path(__file__).resolve().parent / "operator_tiny_stage.py"
SECRET = "kubetune-s3"
JOB_SERVICE_ACCOUNT = OperatorSettings().job_service_account
Obj = dict[str, Any]


def eventually(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds (for state outside the emulator, or spanning several objects)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not hold within {timeout}s")
        time.sleep(0.05)


@dataclass
class OperatorBed:
    kube: KubeEmulator
    executor: JobExecutor
    bucket: str
    endpoint: str
    settings: OperatorSettings = field(default_factory=OperatorSettings)
    metrics: Metrics = field(default_factory=Metrics)

    @property
    def store_uri(self) -> str:
        return f"s3://{self.bucket}/runs"

    def store(self) -> Store:
        return open_store(self.store_uri, endpoint=self.endpoint, region=REGION, path_style=True)

    def run_manifest(self, name: str, *, placeholders: dict[str, str] | None = None, **spec: Any) -> Obj:
        """A FineTuneRun on the test store, with `spec` merged over the tiny defaults."""
        body: Obj = {
            "dataset": {"placeholders": {"NAME": "Nova", **(placeholders or {})}, "tokenStats": False},
            "export": {"types": ["q8_0", "f16"]},
            "storage": {"uri": self.store_uri, "endpoint": self.endpoint, "region": REGION, "pathStyle": True,
                        "credentialsSecret": SECRET},
        }
        for key, value in spec.items():
            body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
        return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun",
                "metadata": {"name": name, "namespace": "default"}, "spec": body}

    def create_run(self, name: str, **kwargs: Any) -> Obj:
        return self.kube.create(self.run_manifest(name, **kwargs))

    def edit_spec(self, name: str, change: Callable[[Obj], None]) -> Obj:
        run = self.kube.get("ftr", name)
        spec = copy.deepcopy(run["spec"])
        change(spec)
        return self.kube.patch("ftr", name, {"spec": spec})

    def wait_run(self, name: str, predicate: Callable[[Obj], bool], timeout: float = 60.0) -> Obj:
        found = self.kube.wait_for("ftr", name, lambda obj: obj is not None and predicate(obj), timeout=timeout)
        assert found is not None
        return found

    def wait_phase(self, name: str, phase: str, timeout: float = 60.0) -> Obj:
        return self.wait_run(name, lambda obj: (obj.get("status") or {}).get("phase") == phase, timeout)

    def jobs(self, run: str) -> list[Obj]:
        return self.kube.list("jobs", "default", label_selector=f"kubetune.dev/run={run}")

    def events(self, run: str) -> list[Obj]:
        return self.kube.events("default", involved_name=run)

    @contextmanager
    def operator(self) -> Iterator[threading.Thread]:
        """A fresh operator (registry, reconciler, caches): leaving the block stops it, as a crash would."""
        registry = kopf.OperatorRegistry()
        login_to(self.kube.url, registry)
        configuration = kubernetes.client.Configuration(host=self.kube.url)
        register(registry, Reconciler(self.settings, KubeApi(configuration), self.metrics), self.settings)
        with kopf_operator(registry) as thread:
            yield thread


@contextmanager
def operator_bed(kube: KubeEmulator, workdir: Path, bucket: str, endpoint: str,
                 **settings: Any) -> Iterator[OperatorBed]:
    """The CRD and the store Secret installed, a Job executor running; the operator starts with `bed.operator()`."""
    kube.apply_crd(yaml.safe_load(CRD.read_text()))
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": "default"},
                 "stringData": {"AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY}})
    # What the chart creates in every namespace it serves: without it, no stage pod can be created.
    kube.create({"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": JOB_SERVICE_ACCOUNT, "namespace": "default"}})
    defaults: dict[str, Any] = {"job_image": "kubetune-job:test", "job_command": ("python", str(TINY_STAGE)),
                                "reconcile_interval": 1.0}
    with JobExecutor(kube, workdir) as executor:
        yield OperatorBed(kube, executor, bucket, endpoint, OperatorSettings(**{**defaults, **settings}))
