"""One base-model download per run, on a real S3 server (SeaweedFS) and a Hub stand-in that counts requests: the
sources Job downloads an hf:// model's files once into the run's store, every stage reads them from there, and a
later run finds them there without asking the Hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.validate import validate_spec
from kubetune.jobs import sources as sources_job
from kubetune.jobs.runtime import EXIT_OK, JobContext, run_job
from kubetune.model_snapshot import SNAPSHOTS, snapshot_prefix
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.sources import SOURCES, SOURCES_FILE, Sources
from kubetune.stages import resolution_ref, stage_ref
from kubetune.store import open_store
from tests.fixtures.sources import COMMIT_A, ModelInfo

SPEC = validate_spec({"baseModel": {"uri": f"hf://org/tiny@{COMMIT_A}"}})
MODEL_FILES = ["config.json", "model.safetensors", "tokenizer.json"]


def store_config(s3_bucket: str, s3_server: Any) -> StoreConfig:
    return StoreConfig(f"s3://{s3_bucket}/runs", endpoint=s3_server.endpoint, region="us-east-1", path_style=True)


def run_sources_job(tmp_path: Path, run: str, store: StoreConfig, monkeypatch: pytest.MonkeyPatch) -> Sources:
    """The sources Job of run `run`, in a pod of its own (an empty cache)."""
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / f"cache-{run}-sources"))
    ref = resolution_ref("default", run, SPEC, uid=f"uid-{run}", image="job:1", refresh="")
    path = tmp_path / f"{run}.sources.json"
    path.write_text(RunConfig(run, "default", SPEC, store, {SOURCES: ref}).dumps())
    assert run_job(SOURCES, path, sources_job.run) == EXIT_OK
    data = open_store(store.uri, endpoint=store.endpoint, region=store.region, path_style=True).get_bytes(
        f"{ref.prefix}/{SOURCES_FILE}")
    return Sources.from_json(json.loads(data))


def test_the_sources_job_stores_the_model_once_every_stage_reads_it_and_a_later_run_asks_the_hub_nothing(
        hub: type[ModelInfo], s3_bucket: str, s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_config(s3_bucket, s3_server)
    sources = run_sources_job(tmp_path, "first", store, monkeypatch)
    assert sorted(hub.downloaded) == MODEL_FILES  # each model file once, nothing else
    s3 = open_store(store.uri, endpoint=store.endpoint, region=store.region, path_style=True)
    stored = [o.key for o in s3.list(SNAPSHOTS)]
    assert stored == [f"{snapshot_prefix(sources.base_model.digest)}/{name}"
                      for name in [*MODEL_FILES[:1], "manifest.json", *MODEL_FILES[1:]]]

    hub.asked.clear()
    for stage in ("dataset", "train", "merge"):  # each in its own pod
        monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / f"cache-first-{stage}"))
        ref = stage_ref("default", "first", SPEC, stage, {"dataset": "d" * 64, "train": "t" * 64}, sources)
        ctx = JobContext(RunConfig("first", "default", SPEC, store, {stage: ref}, sources=sources), stage,
                         workdir=tmp_path / f"work-{stage}")
        folder = sources_job.base_model_folder(ctx)
        assert sorted(p.name for p in folder.iterdir()) == MODEL_FILES
        assert (folder / "model.safetensors").read_bytes() == b"weights A"
    assert hub.asked == []

    later = run_sources_job(tmp_path, "second", store, monkeypatch)
    assert later.base_model == sources.base_model and hub.asked == []
    assert [o.key for o in s3.list(SNAPSHOTS)] == stored  # nothing written again
