"""The sources step as a Job: what the operator builds for it, what it publishes, and the dataset stage holding the
tree to what was resolved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from kubetune.api.validate import validate_spec
from kubetune.digests import DigestCache
from kubetune.jobs import dataset as dataset_stage
from kubetune.jobs import sources as sources_job
from kubetune.jobs.runtime import EXIT_CONFIG, EXIT_OK, JobContext, run_job
from kubetune.model_snapshot import snapshot_prefix
from kubetune.operator.jobspec import build
from kubetune.planner import CreateJob, job_name
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.sources import SOURCES, SOURCES_FILE, Sources, resolve_sources
from kubetune.stages import resolution_ref, stage_ref
from kubetune.store import LINEAGE_NAME, Store, open_store, read_manifest
from tests.fixtures.sources import COMMIT_B, ModelInfo
from tests.unit.test_operator_jobspec import SETTINGS, container, make_run
from tests.unit.test_sources import tree


def no_store(uri: str) -> Store:
    raise AssertionError(f"no store expected, asked for {uri}")


def test_the_sources_job_runs_the_sources_step_with_small_requests_no_gpu_and_the_run_scheduling() -> None:
    run = make_run({"resources": {"defaults": {"memory": "64Gi", "gpus": 2, "nodeSelector": {"pool": "ml"}}}})
    ref = resolution_ref(run.namespace, run.name, run.spec, uid=run.uid, image=SETTINGS.job_image, refresh="")
    config_map, job = build(run, CreateJob(SOURCES, ref, 1, job_name(run.name, SOURCES, ref.key, 1)), SETTINGS, {})
    kubernetes_validate.validate(job, "1.31", strict=True)
    main = container(job)
    assert main["command"][-3:] == [SOURCES, "--run", "/etc/kubetune/run.json"]
    assert main["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}}
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "ml"}
    config = RunConfig.from_json(json.loads(config_map["data"]["run.json"]))
    assert dict(config.stages) == {SOURCES: ref} and config.sources is None


def write_run(tmp_path: Path, stage: str, spec: dict[str, Any], sources: Sources | None) -> Path:
    parsed = validate_spec(spec)
    if stage == SOURCES:
        ref = resolution_ref("default", "demo", parsed, uid="u1", image="job:1", refresh="")
    else:
        assert sources is not None
        ref = stage_ref("default", "demo", parsed, stage, {}, sources)
    config = RunConfig("demo", "default", parsed, StoreConfig(str(tmp_path / "store")), {stage: ref}, sources=sources)
    path = tmp_path / f"{stage}.run.json"
    path.write_text(config.dumps())
    return path


def test_the_sources_job_publishes_what_it_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    spec = {"dataset": {"uri": str(tree(tmp_path / "tree")), "tokenStats": False}}
    run = write_run(tmp_path, SOURCES, spec, None)
    assert run_job(SOURCES, run, sources_job.run) == EXIT_OK
    config = RunConfig.load(run)
    store = open_store(config.store.uri)
    manifest = read_manifest(store, config.stages[SOURCES].prefix)
    assert manifest is not None and [f.path for f in manifest.files] == [LINEAGE_NAME, SOURCES_FILE]
    published = Sources.from_json(json.loads(store.get_bytes(f"{config.stages[SOURCES].prefix}/{SOURCES_FILE}")))
    assert published == resolve_sources(config.spec, store_factory=no_store, cache=DigestCache(),
                                        hub_cache=tmp_path / "hf")


def test_the_dataset_stage_refuses_a_tree_edited_since_it_was_resolved(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBETUNE_WORKDIR", str(tmp_path / "work"))
    root = tree(tmp_path / "tree")
    spec = {"dataset": {"uri": str(root), "tokenStats": False}}
    resolved = resolve_sources(validate_spec(spec), store_factory=no_store, cache=DigestCache(),
                               hub_cache=tmp_path / "hf")
    (root / "topics" / "identity" / "name.json").write_text('{"samples": ["edited after resolution"]}')
    run = write_run(tmp_path, "dataset", spec, resolved)
    assert run_job("dataset", run, dataset_stage.run) == EXIT_CONFIG
    reason = capsys.readouterr().err.strip().splitlines()[-1]
    assert reason.startswith(f"kubetune-job: failed: spec.dataset.uri: the dataset at {root} changed since it was "
                             "resolved")
    assert "kubetune.dev/refresh" in reason
    config = RunConfig.load(run)
    assert read_manifest(open_store(config.store.uri), config.stages["dataset"].prefix) is None


def model_context(tmp_path: Path, uri: str, sources: Sources) -> JobContext:
    spec = validate_spec({"baseModel": {"uri": uri}})
    ref = stage_ref("default", "demo", spec, "dataset", {}, sources)
    config = RunConfig("demo", "default", spec, StoreConfig(str(tmp_path / "store")), {"dataset": ref}, sources=sources)
    return JobContext(config, "dataset", workdir=tmp_path / "work")


def test_a_model_stage_reads_an_hf_ref_at_the_commit_it_was_resolved_to_though_the_branch_moved(
        hub: type[ModelInfo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    spec = validate_spec({"baseModel": {"uri": "hf://org/tiny@main"}})
    resolved = resolve_sources(spec, store_factory=no_store, cache=DigestCache(), hub_cache=tmp_path / "hf")
    ctx = model_context(tmp_path, "hf://org/tiny@main", resolved)
    hub.refs["main"] = COMMIT_B
    folder = sources_job.base_model_folder(ctx)
    assert (folder / "model.safetensors").read_bytes() == b"weights A"
    assert not any(COMMIT_B in path for path in hub.asked)
    # The first stage to download it stores the snapshot, for the stages after it.
    assert read_manifest(ctx.store, snapshot_prefix(resolved.base_model.digest)) is not None


def test_the_bundled_model_check_reads_the_gguf_digest_from_the_stat_cache(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    resolved = resolve_sources(validate_spec({}), store_factory=no_store, cache=DigestCache(),
                               hub_cache=tmp_path / "hf")
    sources_job.check_base_model(model_context(tmp_path, "bundled://smollm2-135m-instruct", resolved))
    assert (tmp_path / "cache" / sources_job.DIGEST_CACHE).is_file()
