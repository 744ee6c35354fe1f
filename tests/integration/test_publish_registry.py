"""The publish stage against a real registry (Debian's docker-registry, tests/fixtures/oci_registry.py).

Upstream outputs are published into a local store under the keys `kubetune run` computes for the bundled sources;
the convert output is the bundled SmolLM2 GGUF (a real GGUF with a real chat template), so `kubetune run` finds every
stage but publish done and runs only the publish job, exactly as after a full run. What the registry then holds is
read back over raw HTTP (not through the client under test)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kubetune.api.types import STAGES
from kubetune.api.validate import validate_spec
from kubetune.digests import DigestCache
from kubetune.jobs.basemodel import default_cache_dir
from kubetune.local import run_locally
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.sources import Sources, resolve_sources
from kubetune.stages import StageRef, stage_ref
from kubetune.store import content_digest, open_store, publish, read_manifest
from tests.fixtures.oci_registry import Registry, running_registry
from tests.fixtures.s3server import free_port
from tests.fixtures.tiny_models import smollm2_gguf_path

GGUF_NAME = "smollm2-135m-q4_1.gguf"
RUN_NAME = "pub"
NAMESPACE = "default"
USERNAME, PASSWORD = "robot", "correct horse"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="module")
def locked_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("locked"), username=USERNAME, password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Sources, dict[str, StageRef]]:
    """A store holding every stage before publish, keyed for the bundled sources and the default spec."""
    root = tmp_path_factory.mktemp("upstream")
    store = open_store(str(root / "store"))
    spec = validate_spec({})
    sources = resolve_sources(spec, store_factory=open_store, cache=DigestCache(root / "digests.json"),
                              hub_cache=default_cache_dir() / "hf")
    digests: dict[str, str] = {}
    refs: dict[str, StageRef] = {}
    for stage in STAGES[:-1]:
        ref = stage_ref(NAMESPACE, RUN_NAME, spec, stage, digests, sources)
        folder = root / stage
        folder.mkdir()
        metadata: dict[str, Any] = {}
        if stage == "convert":
            gguf = smollm2_gguf_path()
            shutil.copyfile(gguf, folder / GGUF_NAME)
            sha = hashlib.sha256((folder / GGUF_NAME).read_bytes()).hexdigest()
            metadata = {"files": [{"name": GGUF_NAME, "type": "q4_1", "size": gguf.stat().st_size, "sha256": sha}]}
        else:
            (folder / f"{stage}.json").write_text(json.dumps({"stage": stage}))
            if stage == "evaluate":
                metadata = {"summary": "every GGUF passed 3/3 prompts"}
        digests[stage] = content_digest(publish(store, ref.prefix, folder, stage=stage, input_key=ref.key,
                                                metadata=metadata))
        refs[stage] = ref
        shutil.rmtree(folder)
    return root / "store", sources, refs


def write_manifest(path: Path, publish_spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun",
                                    "metadata": {"name": RUN_NAME}, "spec": {"publish": publish_spec}}))
    return path


def run_status(workdir: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(
        (workdir / ".kubetune" / "runs" / NAMESPACE / RUN_NAME / "status.json").read_text())["status"]
    return status


def pull(registry: Registry, repository: str, tag: str, dest: Path, auth: tuple[str, str] | None = None
         ) -> tuple[str, dict[str, Any]]:
    """Raw HTTP pull: the manifest (its digest as served) and each layer into `dest` under its title."""
    base = f"http://{registry.host}/v2/{repository}"
    with httpx.Client(auth=auth, timeout=60) as client:
        response = client.get(f"{base}/manifests/{tag}",
                              headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        response.raise_for_status()
        manifest = response.json()
        assert hashlib.sha256(response.content).hexdigest() == response.headers["Docker-Content-Digest"][7:]
        for layer in manifest["layers"]:
            blob = client.get(f"{base}/blobs/{layer['digest']}")
            blob.raise_for_status()
            assert f"sha256:{hashlib.sha256(blob.content).hexdigest()}" == layer["digest"]
            (dest / layer["annotations"]["org.opencontainers.image.title"]).write_bytes(blob.content)
        return response.headers["Docker-Content-Digest"], manifest


def test_kubetune_run_pushes_an_oras_artifact_skips_an_unchanged_publish_and_pushes_a_new_tag(
    registry: Registry, upstream: tuple[Path, Sources, dict[str, StageRef]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    store, _, _ = upstream
    monkeypatch.chdir(tmp_path)
    repository = f"{registry.host}/team/smollm"
    oci: dict[str, Any] = {"repository": repository, "tag": "v1", "plainHttp": True}
    spec: dict[str, Any] = {"oci": oci, "ollama": {"parameters": {"temperature": "0.2"}},
                            "huggingFace": {"repoId": "team/smollm", "license": "apache-2.0"}}
    manifest_path = write_manifest(tmp_path / "run.yaml", spec)

    assert run_locally(manifest_path, store=str(store)) == 0
    status = run_status(tmp_path)
    assert status["stages"]["publish"]["phase"] == "Succeeded"
    assert [status["stages"][s]["phase"] for s in STAGES[:-1]] == ["Cached"] * 5
    prefix = status["stages"]["publish"]["outputs"][0]["uri"].removeprefix(f"file://{store}/").rsplit("/", 1)[0]
    output = read_manifest(open_store(str(store)), prefix)
    assert output is not None
    record = output.metadata["oci"]
    assert record["reference"] == f"{repository}:v1"
    assert f"pushed {repository}:v1@{record['digest']}" in capsys.readouterr().out  # the run's summary
    assert "oci-artifact.json" in {artifact["name"] for artifact in status["artifacts"]}

    pulled = tmp_path / "pulled"
    pulled.mkdir()
    digest, manifest = pull(registry, "team/smollm", "v1", pulled)
    assert digest == record["digest"]  # the artifact's identity is in the stage's output
    assert manifest["artifactType"] == "application/vnd.kubetune.model.v1"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert [(layer["mediaType"], layer["annotations"]["org.opencontainers.image.title"])
            for layer in manifest["layers"]] == [
        ("application/vnd.kubetune.model.gguf.v1", GGUF_NAME),
        ("application/vnd.kubetune.model.modelfile.v1", "Modelfile"),
        ("application/vnd.kubetune.model.lineage.v1+json", "artifact-lineage.json"),
    ]
    assert (pulled / GGUF_NAME).read_bytes() == smollm2_gguf_path().read_bytes()
    modelfile = (pulled / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{GGUF_NAME}\nTEMPLATE \"\"\"")
    assert 'PARAMETER stop "</output>"\nPARAMETER stop "<|im_end|>"\nPARAMETER temperature 0.2\n' in modelfile
    lineage = json.loads((pulled / "artifact-lineage.json").read_text())
    assert set(lineage["stages"]) == set(STAGES[:-1]) and lineage["evaluation"] == "every GGUF passed 3/3 prompts"
    annotations = manifest["annotations"]
    assert annotations["org.opencontainers.image.revision"] == lineage["stages"]["convert"]["outputDigest"]
    assert {"org.opencontainers.image.created", "org.opencontainers.image.source"} <= set(annotations)
    # The Hugging Face folder: the GGUF, the Modelfile and a card, as they would be uploaded.
    hf = sorted(f.path for f in output.files if f.path.startswith("huggingface/"))
    assert hf == ["huggingface/Modelfile", "huggingface/README.md", f"huggingface/{GGUF_NAME}"]

    # Unchanged: the publish output is found under its key and nothing is pushed again.
    assert run_locally(manifest_path, store=str(store)) == 0
    assert run_status(tmp_path)["stages"]["publish"]["phase"] == "Cached"

    # A new tag is a new publish; the same GGUFs make the same manifest, byte for byte.
    write_manifest(manifest_path, {**spec, "oci": {**oci, "tag": "v2"}})
    assert run_locally(manifest_path, store=str(store)) == 0
    assert run_status(tmp_path)["stages"]["publish"]["phase"] == "Succeeded"
    again = tmp_path / "again"
    again.mkdir()
    assert pull(registry, "team/smollm", "v2", again)[0] == digest


def run_publish_job(tmp_path: Path, upstream: tuple[Path, Sources, dict[str, StageRef]], oci: dict[str, Any],
                    env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m kubetune.jobs publish --run run.json`, as the operator's Job runs it."""
    store, sources, refs = upstream
    spec = validate_spec({"publish": {"oci": oci}})
    digests = {stage: content_digest(m) for stage, ref in refs.items()
               if (m := read_manifest(open_store(str(store)), ref.prefix)) is not None}
    stages = {**refs, "publish": stage_ref(NAMESPACE, RUN_NAME, spec, "publish", digests, sources)}
    config = RunConfig(RUN_NAME, NAMESPACE, spec, StoreConfig(uri=str(store)), stages, sources=sources)
    run_json = tmp_path / "run.json"
    run_json.write_text(config.dumps())
    return subprocess.run([sys.executable, "-P", "-m", "kubetune.jobs", "publish", "--run", str(run_json)],
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**env, "KUBETUNE_WORKDIR": str(tmp_path / "work")})


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_REGISTRY_")}


def test_a_login_from_the_secret_pushes_to_a_registry_that_requires_one(
    locked_registry: Registry, upstream: tuple[Path, Sources, dict[str, StageRef]], tmp_path: Path,
) -> None:
    oci = {"repository": f"{locked_registry.host}/team/locked", "tag": "v1", "plainHttp": True,
           "credentialsSecret": "robot"}
    # A kubernetes.io/dockerconfigjson Secret's `.dockerconfigjson`: base64 of user:password per registry host.
    auth = {"auths": {locked_registry.host: {"auth": base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()}}}
    done = run_publish_job(tmp_path, upstream, oci, {**clean_env(), "KUBETUNE_REGISTRY_DOCKERCONFIG": json.dumps(auth)})
    assert done.returncode == 0, done.stderr[-2000:]
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    pull(locked_registry, "team/locked", "v1", pulled, auth=(USERNAME, PASSWORD))
    assert (pulled / GGUF_NAME).stat().st_size == smollm2_gguf_path().stat().st_size


def test_refused_credentials_fail_the_stage_with_one_line_and_exit_2_never_retried(
    locked_registry: Registry, upstream: tuple[Path, Sources, dict[str, StageRef]], tmp_path: Path,
) -> None:
    oci = {"repository": f"{locked_registry.host}/team/locked", "tag": "bad", "plainHttp": True,
           "credentialsSecret": "robot"}
    env = {**clean_env(), "KUBETUNE_REGISTRY_USERNAME": USERNAME, "KUBETUNE_REGISTRY_PASSWORD": "wrong"}
    done = run_publish_job(tmp_path, upstream, oci, env)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("kubetune-job: failed: registry ") and "refused the credentials given (401)" in last
    assert "credentialsSecret" in last and "wrong" not in last and "Traceback" not in done.stderr


def test_a_registry_that_is_down_is_a_failure_worth_retrying(
    upstream: tuple[Path, Sources, dict[str, StageRef]], tmp_path: Path,
) -> None:
    oci = {"repository": f"127.0.0.1:{free_port()}/team/model", "tag": "v1", "plainHttp": True}
    done = run_publish_job(tmp_path, upstream, oci, clean_env())
    assert done.returncode == 1  # not 2: the planner starts another attempt
    assert "cannot reach the registry at http://127.0.0.1:" in done.stderr.strip().splitlines()[-1]


def test_the_oras_client_pulls_what_the_stage_pushed_file_for_file(
    registry: Registry, upstream: tuple[Path, Sources, dict[str, StageRef]], tmp_path: Path,
) -> None:
    """ORAS compatibility judged by ORAS itself (PyPI `oras`), not by our own reading of the manifest."""
    import oras.client

    oci = {"repository": f"{registry.host}/team/oras", "tag": "v1", "plainHttp": True}
    done = run_publish_job(tmp_path, upstream, oci, clean_env())
    assert done.returncode == 0, done.stderr[-2000:]
    raw = tmp_path / "raw"
    raw.mkdir()
    _, manifest = pull(registry, "team/oras", "v1", raw)
    pulled = tmp_path / "oras-pulled"
    client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    files = client.pull(target=f"{registry.host}/team/oras:v1", outdir=str(pulled))
    titles = [layer["annotations"]["org.opencontainers.image.title"] for layer in manifest["layers"]]
    assert [Path(f).name for f in files] == titles and GGUF_NAME in titles
    for title in titles:
        assert (pulled / title).read_bytes() == (raw / title).read_bytes()
    assert (pulled / GGUF_NAME).read_bytes() == smollm2_gguf_path().read_bytes()
