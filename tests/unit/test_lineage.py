"""lineage.json: every published stage output says which run, inputs, upstream outputs and libraries made it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.types import STAGES
from kubetune.api.validate import parse_run, validate_spec
from kubetune.jobs.lineage import IMAGE_ENV
from kubetune.jobs.runtime import EXIT_OK, JobContext, run_job
from kubetune.operator.jobspec import build
from kubetune.operator.settings import OperatorSettings
from kubetune.planner import CreateJob, job_name
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.stages import StageRef, stage_inputs, stage_ref
from kubetune.store import LINEAGE_NAME, content_digest, open_store, read_manifest
from tests.fixtures.sources import COMMIT_A, example_sources

SPEC = {"training": {"epochs": 2, "learningRate": 0.0003, "lora": {"r": 8}}}


def write_run(tmp_path: Path, *, uid: str = "uid-1", dataset_digest: str | None = None) -> Path:
    """A run config for dataset and train; the train key is computed from the dataset output's digest if given."""
    spec = validate_spec(SPEC)
    sources = example_sources(model_uri="hf://org/model")
    sources = replace(sources, base_model=replace(sources.base_model, revision=COMMIT_A))
    stages = {"dataset": stage_ref("default", "demo", spec, "dataset", {}, sources)}
    if dataset_digest is not None:
        stages["train"] = stage_ref("default", "demo", spec, "train", {"dataset": dataset_digest}, sources)
    config = RunConfig("demo", "default", spec, StoreConfig(str(tmp_path / "store")), stages, uid=uid,
                       sources=sources)
    path = tmp_path / "run.json"
    path.write_text(config.dumps())
    return path


def publish_one_file(name: str, text: str) -> Any:
    def body(ctx: JobContext) -> None:
        out = ctx.workdir / "out"
        out.mkdir(exist_ok=True)
        (out / name).write_text(text)
        ctx.publish(out, {})
    return body


def published_lineage(run_path: Path, stage: str) -> tuple[dict[str, Any], Any]:
    config = RunConfig.load(run_path)
    store = open_store(config.store.uri)
    prefix = config.stages[stage].prefix
    manifest = read_manifest(store, prefix)
    assert manifest is not None
    return json.loads(store.get_bytes(f"{prefix}/{LINEAGE_NAME}")), manifest


def test_a_published_output_carries_lineage_naming_the_run_stage_key_sources_and_versions(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    assert run_job("dataset", run, publish_one_file("train_data.jsonl", "{}\n")) == EXIT_OK
    lineage, manifest = published_lineage(run, "dataset")
    config = RunConfig.load(run)
    assert LINEAGE_NAME in {f.path for f in manifest.files}  # listed, so a fetch verifies it like any file
    assert lineage["schema"] == 1 and lineage["stage"] == "dataset"
    assert lineage["run"] == {"namespace": "default", "name": "demo", "uid": "uid-1"}
    assert lineage["key"] == config.stages["dataset"].key and lineage["prefix"] == config.stages["dataset"].prefix
    assert config.sources is not None and lineage["sources"] == config.sources.to_json()
    assert lineage["sources"]["baseModel"] == {"uri": "hf://org/model", "digest": config.sources.base_model.digest,
                                               "revision": COMMIT_A}
    assert lineage["parameters"] == stage_inputs(config.spec, "dataset", config.sources)
    assert lineage["versions"]["torch"] == metadata.version("torch")
    assert lineage["versions"]["transformers"] == metadata.version("transformers")
    assert lineage["versions"]["kubetune"] == metadata.version("kubetune")
    assert "llama.cpp" not in lineage["versions"]  # only stages whose output comes from llama.cpp load it
    assert lineage["host"]["cpus"] >= 1 and lineage["createdAt"].endswith("Z")


def test_train_lineage_lists_its_hyper_parameters_in_camel_case_and_the_dataset_output_it_read(tmp_path: Path) -> None:
    run = write_run(tmp_path)
    assert run_job("dataset", run, publish_one_file("train_data.jsonl", "{}\n")) == EXIT_OK
    _, dataset_manifest = published_lineage(run, "dataset")
    run = write_run(tmp_path, dataset_digest=content_digest(dataset_manifest))
    assert run_job("train", run, publish_one_file("adapter_config.json", "{}")) == EXIT_OK
    lineage, _ = published_lineage(run, "train")
    training = lineage["parameters"]["training"]
    assert training["epochs"] == 2 and training["learningRate"] == 0.0003 and training["lora"]["r"] == 8
    assert "device" not in training  # how training runs is not what the key (and lineage) records as inputs
    upstream = lineage["upstream"]["dataset"]
    config = RunConfig.load(run)
    assert upstream["contentDigest"] == content_digest(dataset_manifest)
    assert upstream["key"] == config.stages["dataset"].key


def test_lineage_stays_out_of_the_content_digest_so_identical_reruns_feed_identical_keys(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    assert run_job("dataset", write_run(first, uid="uid-1"), publish_one_file("data.jsonl", "{}\n")) == EXIT_OK
    assert run_job("dataset", write_run(second, uid="uid-2"), publish_one_file("data.jsonl", "{}\n")) == EXIT_OK
    (lineage_1, manifest_1), (lineage_2, manifest_2) = (published_lineage(first / "run.json", "dataset"),
                                                        published_lineage(second / "run.json", "dataset"))
    assert lineage_1["run"]["uid"] != lineage_2["run"]["uid"]
    lineage_sha = {f.path: f.sha256 for f in manifest_1.files}[LINEAGE_NAME]
    assert lineage_sha != {f.path: f.sha256 for f in manifest_2.files}[LINEAGE_NAME]
    assert content_digest(manifest_1) == content_digest(manifest_2)


def test_different_content_beside_the_lineage_still_changes_the_content_digest(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    assert run_job("dataset", write_run(first), publish_one_file("data.jsonl", "{}\n")) == EXIT_OK
    assert run_job("dataset", write_run(second), publish_one_file("data.jsonl", "[]\n")) == EXIT_OK
    _, manifest_1 = published_lineage(first / "run.json", "dataset")
    _, manifest_2 = published_lineage(second / "run.json", "dataset")
    assert content_digest(manifest_1) != content_digest(manifest_2)


def test_a_stage_job_tells_its_image_which_lineage_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = dataclasses.replace(parse_run({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun",
                                         "metadata": {"name": "demo", "namespace": "team"},
                                         "spec": {"resources": {"merge": {"image": "registry.example/job:1.2"}}}}),
                              uid="u")
    ref = StageRef("f" * 64, f"team/demo/merge/{'f' * 16}")
    upstream = {stage: StageRef(str(i) * 64, f"team/demo/{stage}/{str(i) * 16}") for i, stage in enumerate(STAGES)}
    _, job = build(run, CreateJob("merge", ref, 1, job_name("demo", "merge", ref.key, 1)),
                   OperatorSettings(store_uri="s3://artifacts/runs"), upstream)
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert {"name": IMAGE_ENV, "value": "registry.example/job:1.2"} in container["env"]

    monkeypatch.setenv(IMAGE_ENV, "registry.example/job:1.2")
    run_path = write_run(tmp_path)
    assert run_job("dataset", run_path, publish_one_file("data.jsonl", "{}\n")) == EXIT_OK
    assert published_lineage(run_path, "dataset")[0]["image"] == "registry.example/job:1.2"
