"""The reliability bed: `python -m kubetune.operator` as a real subprocess against the Kubernetes emulator (through
KUBECONFIG, as the Deployment runs it), killed and restarted at will, plus the checks every scenario ends with:
no duplicate Job, no lost run, every run Succeeded with outputs that verify.

The benchmark (`benchmarks/operator_load.py`) uses the same pieces.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubetune.api.types import STAGES
from kubetune.operator.settings import OperatorSettings
from kubetune.store import Store, content_digest, join_key, read_manifest
from tests.kube.emulator import KubeEmulator

RUN_STAGES = tuple(s for s in STAGES if s != "publish")  # the runs here publish nothing (spec.publish is empty)

Obj = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "kubetune.dev_finetuneruns.yaml"
INSTANT_STAGE = Path(__file__).resolve().parent / "instant_stage.py"
TINY_STAGE = REPO / "tests" / "integration" / "operator_tiny_stage.py"
# `-S`: the instant stage needs only the standard library, so skip site-packages (and the editable-install hook).
INSTANT_COMMAND = ("python", "-S", str(INSTANT_STAGE))
RUN_LABEL = "kubetune.dev/run"
STAGE_LABEL = "kubetune.dev/stage"
JOBS_PER_RUN = 1 + len(RUN_STAGES)  # the sources Job, then one Job per stage (each publishes one output)
ATTEMPT_LABEL = "kubetune.dev/attempt"
PREFIX_ANNOTATION = "kubetune.dev/prefix"
INPUT_KEY_ANNOTATION = "kubetune.dev/input-key"


def install_crd(kube: KubeEmulator) -> None:
    """The CRD, and the stage Jobs' ServiceAccount in the runs' namespace (the chart creates it there): without it
    the Job executor, like a real cluster, creates no pod."""
    kube.apply_crd(yaml.safe_load(CRD.read_text()))
    kube.create({"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": OperatorSettings().job_service_account, "namespace": "default"}})


def run_manifest(name: str, storage: Mapping[str, Any], **spec: Any) -> Obj:
    """A FineTuneRun on `storage`; `spec` fields are merged over a small default (no token stats, one GGUF type)."""
    body: Obj = {"dataset": {"tokenStats": False, "placeholders": {"NAME": "Nova"}},
                 "export": {"types": ["q8_0"]}, "storage": dict(storage)}
    for key, value in spec.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun",
            "metadata": {"name": name, "namespace": "default"}, "spec": body}


def operator_environment(kubeconfig: Path, job_command: Iterable[str], **settings: str) -> dict[str, str]:
    """The environment the Helm chart would give the operator, pointed at the emulator; no metrics/health ports
    (restarts must not race for them)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KUBETUNE_")}
    env.update({
        "KUBECONFIG": str(kubeconfig), "KUBETUNE_NAMESPACES": "default",
        "KUBETUNE_JOB_COMMAND": json.dumps(list(job_command)), "KUBETUNE_RECONCILE_INTERVAL": "2",
        "KUBETUNE_METRICS_PORT": "0", "KUBETUNE_HEALTH_PORT": "0", "PYTHONUNBUFFERED": "1",
    })
    env.update(settings)
    return env


@dataclass
class OperatorProcess:
    """The operator as a subprocess; every incarnation appends to one log file."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    kill_times: list[float] = field(default_factory=list)

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "the operator is already running"
        with self.log_path.open("ab") as log:
            log.write(f"\n=== operator start #{self.starts + 1} ===\n".encode())
            log.flush()
            self.process = subprocess.Popen([sys.executable, "-m", "kubetune.operator"], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing, in-flight requests cut."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.kills += 1
        self.kill_times.append(time.monotonic())

    def stop(self) -> int:
        """SIGTERM and wait (kopf shuts down cleanly); SIGKILL if it hangs. Returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process is not None else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


class KillSchedule:
    """SIGKILL the operator after a random uptime, restart it at once, up to `limit` times."""

    def __init__(self, kube: KubeEmulator, operator: OperatorProcess, rng: random.Random, limit: int,
                 uptime_s: tuple[float, float]) -> None:
        self.kube, self.operator, self.rng, self.limit, self.uptime_s = kube, operator, rng, limit, uptime_s
        self.next_kill = time.monotonic() + rng.uniform(*uptime_s)
        self.uptimes: list[float] = []
        self.jobs_at_kill: list[int] = []  # stage Jobs that existed at each kill: the kills land mid-work
        self._started = time.monotonic()

    def __call__(self) -> None:
        if self.operator.kills >= self.limit or time.monotonic() < self.next_kill:
            return
        self.operator.kill()
        self.jobs_at_kill.append(len(stage_jobs(self.kube)))
        self.uptimes.append(time.monotonic() - self._started)
        self.operator.start()
        self._started = time.monotonic()
        self.next_kill = self._started + self.rng.uniform(*self.uptime_s)

    def rounded_uptimes(self) -> list[float]:
        return [round(uptime, 1) for uptime in self.uptimes]


def succeeded(run: Obj) -> bool:
    status = run.get("status") or {}
    return status.get("phase") == "Succeeded" and status.get("observedGeneration") == run["metadata"]["generation"]


def terminal(run: Obj) -> bool:
    status = run.get("status") or {}
    return status.get("phase") in ("Succeeded", "Failed") and (
        status.get("observedGeneration") == run["metadata"]["generation"])


def wait_all(kube: KubeEmulator, names: Iterable[str], done: Callable[[Obj], bool], timeout: float,
             while_waiting: Callable[[], None] | None = None, poll_s: float = 0.25) -> list[Obj]:
    """Poll until every named run satisfies `done` (calling `while_waiting` between polls, e.g. to kill the
    operator); returns the runs. Raises TimeoutError naming the runs that did not get there. Each poll copies every
    run out of the emulator, which shares its process (and the GIL) with the Job executor: a load test with hundreds
    of runs polls less often, so as not to slow the API server it measures through."""
    wanted = set(names)
    deadline = time.monotonic() + timeout
    while True:
        runs = {run["metadata"]["name"]: run for run in kube.list("ftr", "default")}
        pending = sorted(name for name in wanted if name not in runs or not done(runs[name]))
        if not pending:
            return [runs[name] for name in sorted(wanted)]
        if time.monotonic() > deadline:
            phases = Counter(((runs.get(n) or {}).get("status") or {}).get("phase", "missing") for n in pending)
            raise TimeoutError(f"{len(pending)} run(s) not done after {timeout}s: {pending[:5]}, phases {dict(phases)}")
        if while_waiting is not None:
            while_waiting()
        time.sleep(poll_s)


def stage_jobs(kube: KubeEmulator) -> list[Obj]:
    return [job for job in kube.list("jobs", "default") if RUN_LABEL in (job["metadata"].get("labels") or {})]


def duplicate_jobs(jobs: Iterable[Obj]) -> dict[tuple[str, str, str], list[str]]:
    """(run, stage, input key) → Job names, wherever one stage and key got more than one Job."""
    by_key: dict[tuple[str, str, str], list[str]] = {}
    for job in jobs:
        meta = job["metadata"]
        key = (meta["labels"][RUN_LABEL], meta["labels"][STAGE_LABEL], meta["annotations"][INPUT_KEY_ANNOTATION])
        by_key.setdefault(key, []).append(meta["name"])
    return {key: names for key, names in by_key.items() if len(names) > 1}


def output_problems(store: Store, run: Obj, jobs: Iterable[Obj]) -> list[str]:
    """Everything wrong with a Succeeded run's outputs: each stage's manifest must exist for the status's input key,
    hash to the status's digest, and every file it lists must match its size and sha256 (read back from the store)."""
    name = run["metadata"]["name"]
    prefixes = {(job["metadata"]["labels"][STAGE_LABEL], job["metadata"]["annotations"][INPUT_KEY_ANNOTATION]):
                job["metadata"]["annotations"][PREFIX_ANNOTATION] for job in jobs
                if job["metadata"]["labels"][RUN_LABEL] == name}
    problems = []
    for stage in RUN_STAGES:
        block = run["status"]["stages"][stage]
        prefix = prefixes.get((stage, block.get("inputKey", "")))
        if prefix is None:
            problems.append(f"{name}/{stage}: no Job for input key {block.get('inputKey')}")
            continue
        manifest = read_manifest(store, prefix)
        if manifest is None or manifest.input_key != block["inputKey"]:
            problems.append(f"{name}/{stage}: no manifest for its input key at {prefix}")
            continue
        if content_digest(manifest) != block.get("outputDigest"):
            problems.append(f"{name}/{stage}: status digest {block.get('outputDigest')} != manifest digest")
        for entry in manifest.files:
            data = store.get_bytes(join_key(prefix, entry.path))
            if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
                problems.append(f"{name}/{stage}/{entry.path}: content does not match the manifest")
    return problems
