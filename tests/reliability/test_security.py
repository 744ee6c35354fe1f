"""Security: secret values never leak, hostile names and URIs are rejected everywhere, and every pod the operator
creates meets the restricted Pod Security Standard."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.types import STAGES
from kubetune.api.validate import parse_run
from kubetune.cli import main as kubetune_cli
from kubetune.model_snapshot import files_digest, publish_snapshot
from kubetune.operator.jobspec import build
from kubetune.operator.settings import OperatorSettings
from kubetune.planner import CreateJob
from kubetune.stages import StageRef
from kubetune.store import LocalStore, S3Store, validate_key, validate_prefix
from tests.fixtures.s3 import FAKE_ACCESS_KEY, REGION, S3Identity, S3Server
from tests.fixtures.seaweedfs import running_seaweedfs
from tests.kube.emulator import KubeEmulator
from tests.kube.errors import ApiError
from tests.kube.executor import JobExecutor
from tests.reliability.bed import (
    TINY_STAGE,
    Obj,
    OperatorProcess,
    install_crd,
    operator_environment,
    run_manifest,
    stage_jobs,
    terminal,
    wait_all,
)
from tests.reliability.pss import violations

PLANTED_STORE_SECRET = "PLANTED-store-secret-7f3a9c1e5b"
PLANTED_HF_TOKEN = "hf_PLANTEDtoken0d9e8f7a6b5c"
STORE_SECRET, HF_SECRET = "kubetune-s3", "hf-token"


# --- the restricted Pod Security Standard --------------------------------------------------------------------------


def _good_pod() -> Obj:
    return {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False,
                                                             "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "v", "emptyDir": {}}]}


def _container(pod: Obj) -> Obj:
    return pod["containers"][0]["securityContext"]


BROKEN_PODS = {
    "hostNetwork": (lambda p: p.update(hostNetwork=True), "baseline/host-namespaces"),
    "hostPID": (lambda p: p.update(hostPID=True), "baseline/host-namespaces"),
    "hostIPC": (lambda p: p.update(hostIPC=True), "baseline/host-namespaces"),
    "privileged": (lambda p: _container(p).update(privileged=True), "baseline/privileged"),
    "hostPath": (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "baseline/hostpath"),
    "nfs volume": (lambda p: p["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
                   "restricted/volume-types"),
    "hostPort": (lambda p: p["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
                 "baseline/host-ports"),
    "SYS_ADMIN added": (lambda p: _container(p)["capabilities"].update(add=["SYS_ADMIN"]),
                        "restricted/capabilities"),
    "ALL not dropped": (lambda p: _container(p)["capabilities"].update(drop=["NET_RAW"]), "restricted/capabilities"),
    "escalation allowed": (lambda p: _container(p).pop("allowPrivilegeEscalation"),
                           "restricted/privilege-escalation"),
    "root allowed": (lambda p: p["securityContext"].pop("runAsNonRoot"), "restricted/run-as-non-root"),
    "uid 0": (lambda p: _container(p).update(runAsUser=0), "restricted/run-as-user"),
    "seccomp unconfined": (lambda p: _container(p).update(seccompProfile={"type": "Unconfined"}),
                           "restricted/seccomp"),
    "no seccomp": (lambda p: p["securityContext"].pop("seccompProfile"), "restricted/seccomp"),
    "unsafe sysctl": (lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
                      "baseline/sysctls"),
    "procMount": (lambda p: _container(p).update(procMount="Unmasked"), "baseline/proc-mount"),
    "apparmor unconfined": (lambda p: _container(p).update(appArmorProfile={"type": "Unconfined"}),
                            "baseline/apparmor"),
}


@pytest.mark.parametrize("breakage", BROKEN_PODS, ids=list(BROKEN_PODS))
def test_the_restricted_profile_check_flags_each_broken_control(breakage: str) -> None:
    assert violations(_good_pod()) == []
    pod = _good_pod()
    change, control = BROKEN_PODS[breakage]
    change(pod)
    assert any(v.startswith(control) for v in violations(pod)), violations(pod)


SPEC_VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpus, shm, node selector, tolerations, priority": {"resources": {
        "defaults": {"nodeSelector": {"pool": "gpu"}, "priorityClassName": "batch-high",
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "train": {"gpus": 4, "shmSize": "16Gi", "memory": "64Gi", "cpu": "8"},
        "merge": {"gpus": 1, "activeDeadlineSeconds": 3600}}},
    "kueue queue and custom image": {"resources": {"defaults": {"queueName": "gpu-queue",
                                                                "image": "registry.example/kubetune-job:1.0"}}},
    "hf base model with a token": {"baseModel": {"uri": "hf://org/model", "tokenSecret": {"name": HF_SECRET,
                                                                                          "key": "token"}}},
    "s3 store with credentials": {"storage": {"uri": "s3://bucket/runs", "endpoint": "http://minio:9000",
                                              "credentialsSecret": STORE_SECRET}},
}


@pytest.mark.parametrize("variant", SPEC_VARIANTS, ids=list(SPEC_VARIANTS))
def test_every_pod_template_the_job_builder_makes_meets_the_restricted_profile(variant: str) -> None:
    spec = {"storage": {"uri": "file:///data/runs"}, **SPEC_VARIANTS[variant]}
    run = parse_run({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun",
                     "metadata": {"name": "sec", "namespace": "default", "uid": "u-1"}, "spec": spec})
    settings = OperatorSettings(queue_name=None)
    for stage in STAGES:
        ref = StageRef("a" * 64, f"default/sec/{stage}/{'a' * 16}")
        _, job = build(run, CreateJob(stage, ref, 1, f"sec-{stage}-aaaaaaaa"), settings,
                       {s: ref for s in STAGES[: STAGES.index(stage)]})
        assert violations(job["spec"]["template"]["spec"]) == [], (variant, stage)


# --- planted secrets ------------------------------------------------------------------------------------------------


def _hits(text: str) -> list[str]:
    needles = [PLANTED_STORE_SECRET, PLANTED_HF_TOKEN]
    needles += [base64.b64encode(n.encode()).decode() for n in needles]
    return [needle for needle in needles if needle in text]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS whose identity's secret is the planted one: the jobs and the operator must really sign with it."""
    identity = S3Identity(FAKE_ACCESS_KEY, PLANTED_STORE_SECRET)
    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs-planted"), (identity,)) as server:
        yield server


@pytest.fixture
def operator(kube: KubeEmulator, kubeconfig: Path, tmp_path: Path, s3_credentials: None) -> Iterator[OperatorProcess]:
    install_crd(kube)
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": STORE_SECRET, "namespace": "default"},
                 "stringData": {"AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": PLANTED_STORE_SECRET}})
    kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": HF_SECRET, "namespace": "default"},
                 "stringData": {"token": PLANTED_HF_TOKEN}})
    # The operator reads the store with the same planted credentials (this module's SeaweedFS holds them).
    env = operator_environment(kubeconfig, ("python", "-m", "kubetune.jobs"),
                               AWS_SECRET_ACCESS_KEY=PLANTED_STORE_SECRET)
    process = OperatorProcess(env, tmp_path / "operator.log")
    yield process
    process.stop()


def _real_dataset_then_tiny(job: Obj, argv: list[str]) -> list[str]:
    """The real dataset stage (it logs, reads the store, publishes); the tiny stage program for the rest."""
    if job["metadata"]["labels"]["kubetune.dev/stage"] == "dataset":
        return argv
    return [argv[0], str(TINY_STAGE), *argv[3:]]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_planted_secret_values_appear_nowhere_and_every_pod_is_restricted(
    kube: KubeEmulator, operator: OperatorProcess, tmp_path: Path, s3_bucket: str, s3_server: S3Server
) -> None:
    storage = {"uri": f"s3://{s3_bucket}/runs", "endpoint": s3_server.endpoint, "region": REGION,
               "pathStyle": True, "credentialsSecret": STORE_SECRET}
    # Pinned to a commit whose snapshot the store holds (as a sources Job leaves it): resolved without the Hub.
    hf = {"baseModel": {"uri": f"hf://org/model@{'c' * 40}", "tokenSecret": {"name": HF_SECRET, "key": "token"}},
          "dataset": {"categories": ["logic"]}}
    model = tmp_path / "hub-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"weights")
    seed = LocalStore(tmp_path / "seed")
    publish_snapshot(seed, model, files_digest(model), repo_id="org/model", commit="c" * 40)
    for item in seed.list(""):
        s3_server.client().put_object(Bucket=s3_bucket, Key=f"runs/{item.key}", Body=seed.get_bytes(item.key))
    with JobExecutor(kube, tmp_path / "executor", rewrite_command=_real_dataset_then_tiny) as executor:
        operator.start()
        kube.create(run_manifest("planted-ok", storage, **hf))
        kube.create(run_manifest("planted-fails", storage, **{**hf, "dataset": {
            "categories": ["logic"], "placeholders": {"NAME": "Nova", "TINY_FAIL": "merge:crash"}}},
            resources={"merge": {"backoffLimit": 0}}))
        runs = {run["metadata"]["name"]: run for run in wait_all(kube, ["planted-ok", "planted-fails"], terminal, 240)}
        jobs = stage_jobs(kube)
        # Every secret really reached the jobs, or the scan would prove nothing.
        first = executor.attempts(jobs[0]["metadata"]["name"])[0]
        assert first.exit_code == 0 and "AWS_SECRET_ACCESS_KEY" in json.dumps(jobs[0]["spec"])
    assert runs["planted-ok"]["status"]["phase"] == "Succeeded"
    assert runs["planted-fails"]["status"]["phase"] == "Failed"
    assert all(any(e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == HF_SECRET
                   for e in job["spec"]["template"]["spec"]["containers"][0]["env"]) for job in jobs)

    places: dict[str, str] = {
        "FineTuneRuns (spec and status)": json.dumps(kube.list("ftr", "default")),
        "Events": json.dumps(kube.events("default")),
        "ConfigMaps": json.dumps(kube.list("configmaps", "default")),
        "Jobs": json.dumps(jobs),
        "Pods": json.dumps(kube.list("pods", "default")),
        "operator log": operator.log_path.read_text(errors="replace"),
    }
    for path in sorted((tmp_path / "executor").rglob("*")):
        if path.is_file() and path.suffix in (".log", ".txt", "") and "volumes" not in path.parts:
            places[f"job file {path.relative_to(tmp_path)}"] = path.read_text(errors="replace")
    direct = s3_server.client()
    for item in direct.list_objects_v2(Bucket=s3_bucket).get("Contents", []):
        body = direct.get_object(Bucket=s3_bucket, Key=item["Key"])["Body"].read()
        places[f"artifact s3://{s3_bucket}/{item['Key']}"] = body.decode(errors="replace")
    leaks = {place: hits for place, text in places.items() if (hits := _hits(text))}
    artifacts = sum(1 for place in places if place.startswith("artifact"))
    job_files = sum(1 for place in places if place.startswith("job file"))
    print(f"\n[security] scanned {len(places)} places ({artifacts} artifacts, {job_files} job log files, "
          f"{sum(len(t) for t in places.values())} characters) for 2 planted secrets (raw and base64): "
          f"{len(leaks)} hits")
    assert any("job file" in p for p in places) and artifacts >= 5
    assert leaks == {}
    pods = kube.list("pods", "default")
    assert len(pods) >= len(jobs)
    assert {p["metadata"]["name"]: violations(p["spec"]) for p in pods if violations(p["spec"])} == {}


# --- hostile names and URIs -------------------------------------------------------------------------------------


HOSTILE_MANIFESTS: dict[str, tuple[str, Any]] = {
    "name with a path": ("metadata.name", "../../etc"),
    "name with a slash": ("metadata.name", "a/b"),
    "name with a shell command": ("metadata.name", "x;rm -rf /"),
    "name with command substitution": ("metadata.name", "$(id)"),
    "name with uppercase": ("metadata.name", "Run"),
    "storage URI escaping its bucket prefix": ("spec.storage.uri", "s3://bucket/runs/../../other"),
    "storage folder escaping": ("spec.storage.uri", "/data/../../etc"),
    "storage URI with a space": ("spec.storage.uri", "s3://bucket/a b"),
    "dataset URI escaping": ("spec.dataset.uri", "file:///datasets/../../etc"),
    "dataset structure escaping the tree": ("spec.dataset.structure", "../../../etc/structure.json"),
    "base model URI escaping": ("spec.baseModel.uri", "s3://models/a/../../b"),
    "base model from an unknown scheme": ("spec.baseModel.uri", "http://evil.example/model"),
    "merge checkpoint escaping": ("spec.merge.checkpoint", "../../checkpoint-00000001"),
    "placeholder name with a template": ("spec.dataset.placeholders", {"${X}": "v"}),
    "store endpoint with a path injection": ("spec.storage.endpoint", "http://minio:9000 /x"),
    "secret name with a path": ("spec.storage.credentialsSecret", "../kube-system/secret"),
    "image with a space": ("spec.resources.defaults.image", "img; curl evil"),
    "node selector value with a newline": ("spec.resources.defaults.nodeSelector", {"pool": "gpu\nx"}),
}


def _hostile_manifest(path: str, value: Any) -> Obj:
    manifest = run_manifest("hostile", {"uri": "s3://bucket/runs", "credentialsSecret": STORE_SECRET})
    target: Obj = manifest
    *parents, last = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value
    return manifest


@pytest.mark.parametrize("case", HOSTILE_MANIFESTS, ids=list(HOSTILE_MANIFESTS))
def test_hostile_names_and_uris_are_rejected_by_kubetune_validate_and_by_the_crd(
    case: str, kube: KubeEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _hostile_manifest(*HOSTILE_MANIFESTS[case])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert kubetune_cli(["validate", str(path)]) != 0, capsys.readouterr()
    install_crd(kube)
    with pytest.raises(ApiError) as refused:
        kube.create(manifest)
    assert refused.value.code in (400, 422), refused.value


HOSTILE_KEYS = ["../escape", "a/../../escape", "/absolute", "a//b", "a\\b", "a/./b", "nul\x00byte", "new\nline",
                "trailing/", ".kubetune-tmp-abc", "x" * 1025]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=[repr(k)[:24] for k in HOSTILE_KEYS])
def test_store_keys_that_could_escape_the_store_root_are_rejected_by_every_store(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        validate_key(key)
    local = LocalStore(tmp_path / "store")
    with pytest.raises(ValueError):
        local.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        local.get_bytes(key)
    s3 = S3Store("bucket", "runs", endpoint="http://127.0.0.1:9", region=REGION, path_style=True)
    with pytest.raises(ValueError):
        s3.put_bytes(key, b"x")  # refused before any request is made (nothing listens on port 9)
    assert list((tmp_path / "store").iterdir()) == []
    if key.strip("/") and "\x00" not in key and "\n" not in key and key != "x" * 1025:
        with pytest.raises(ValueError):
            validate_prefix(key if key != "trailing/" else "//")


@pytest.mark.integration
def test_a_foreign_object_named_with_dotdot_in_the_bucket_cannot_land_outside_the_download_folder(
    moto_bucket: str, moto_server: S3Server, tmp_path: Path
) -> None:
    # moto: AWS stores such a key verbatim, SeaweedFS and rclone refuse to (tests/fixtures/moto.py).
    moto_server.client().put_object(Bucket=moto_bucket, Key="runs/out/../../escaped.txt", Body=b"planted")
    store = S3Store(moto_bucket, "runs", endpoint=moto_server.endpoint, region=REGION, path_style=True)
    with pytest.raises(ValueError):
        store.get_dir("out", tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists() and not any(tmp_path.rglob("escaped.txt"))
