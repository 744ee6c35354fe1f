"""The dataset job stage and the bundled starter dataset: the same library code as the CLI, published to the store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.validate import validate_spec
from kubetune.datasets_new.builder import BuildOptions, build_dataset
from kubetune.jobs import dataset as dataset_stage
from kubetune.jobs.runtime import EXIT_CONFIG, EXIT_OK, run_job
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.stages import stage_ref
from kubetune.store import open_store, read_manifest
from tests.fixtures.sources import example_sources

BUNDLED = Path(__file__).resolve().parents[2] / "datasets_new"
IDENTITY_VALUES = {"NAME": "Nova", "SPEC": "a fine-tuned assistant for Kubernetes operators"}


def write_run(tmp_path: Path, dataset: dict[str, Any], unvalidated_uri: str | None = None) -> Path:
    """A run config for the dataset stage; `unvalidated_uri` replaces the dataset URI after validation, as a run
    config written by hand (or by a buggy writer) could."""
    spec = validate_spec({"dataset": dataset})
    if unvalidated_uri is not None:
        spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"uri": unvalidated_uri})})
    config = RunConfig("demo", "default", spec, StoreConfig(str(tmp_path / "store")),
                       {"dataset": stage_ref("default", "demo", spec, "dataset", {}, example_sources())})
    path = tmp_path / "run.json"
    path.write_text(config.dumps())
    return path


def write_tree(root: Path, output: str) -> None:
    topic = root / "topics" / "identity" / "who" / "identity.who.reasoning.json"
    topic.parent.mkdir(parents=True)
    topic.write_text(json.dumps([
        {"id": "a", "question": "Who are you?", "think": "Name.", "output": output, "difficulty": 1},
        {"id": "b", "question": "What can you do?", "think": "Skills.", "output": "Help with ${SPEC}.",
         "difficulty": "easy"}]), encoding="utf-8")
    (root / "structure.enriched.json").write_text(json.dumps({
        "version": 1, "name": "t", "description": "t", "categories": [
            {"name": "identity", "description": "who", "tags": ["identity"], "subcategories": [
                {"name": "who", "description": "who", "tags": [], "content_types": ["reasoning"]}]}]}))


def test_dataset_stage_publishes_train_eval_and_stats(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("KUBETUNE_WORKDIR", str(tmp_path / "work"))
    write_tree(tmp_path / "tree", "I am ${NAME}.")
    run = write_run(tmp_path, {"uri": str(tmp_path / "tree"), "tokenStats": False, "evalSplit": 0.5,
                               "placeholders": IDENTITY_VALUES})
    assert run_job("dataset", run, dataset_stage.run) == EXIT_OK
    config = RunConfig.load(run)
    store = open_store(config.store.uri)
    prefix = config.stages["dataset"].prefix
    manifest = read_manifest(store, prefix)
    assert manifest is not None and manifest.input_key == config.stages["dataset"].key
    names = sorted(file.path for file in manifest.files)
    assert names == ["eval_data.jsonl", "lineage.json", "stats.json", "train_data.jsonl"]
    records = [json.loads(line) for name in ("train_data.jsonl", "eval_data.jsonl")
               for line in store.get_bytes(f"{prefix}/{name}").decode().splitlines()]
    assert sorted(record["messages"][1]["content"] for record in records) == [
        "<think>Name.</think>\n<output>I am Nova.</output>",
        "<think>Skills.</think>\n<output>Help with a fine-tuned assistant for Kubernetes operators.</output>"]
    assert manifest.metadata["train"] + manifest.metadata["eval"] == 2
    assert json.loads(store.get_bytes(f"{prefix}/progress.json"))["phase"] == "Succeeded"


def test_dataset_stage_fails_with_exit_2_on_malformed_samples(tmp_path: Path, monkeypatch: Any,
                                                              capsys: Any) -> None:
    monkeypatch.setenv("KUBETUNE_WORKDIR", str(tmp_path / "work"))
    write_tree(tmp_path / "tree", "I am ${NICK}.")
    run = write_run(tmp_path, {"uri": f"file://{tmp_path / 'tree'}", "tokenStats": False,
                               "placeholders": IDENTITY_VALUES})
    assert run_job("dataset", run, dataset_stage.run) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "identity.who.reasoning.json:1:" in err and "unknown placeholder ${NICK}" in err
    config = RunConfig.load(run)
    assert read_manifest(open_store(config.store.uri), config.stages["dataset"].prefix) is None


def test_the_bundled_starter_dataset_builds_and_is_big_enough() -> None:
    # No skip: the starter dataset is part of the product; its absence is a failure.
    assert (BUNDLED / "structure.enriched.json").is_file(), "datasets_new/structure.enriched.json is missing"
    result = build_dataset(BuildOptions(BUNDLED / "structure.enriched.json", BUNDLED / "topics",
                                        placeholders=IDENTITY_VALUES))
    records = result.train + result.eval
    categories = {record.category for record in records}
    identity = [record for record in records if record.category == "identity"]
    assert len(categories) >= 8, sorted(categories)
    assert len(records) >= 400
    assert len(identity) >= 60
    assert {record.difficulty for record in records} == {1, 2, 3, 4, 5, 6}
    assert any("Nova" in record.assistant for record in identity)
    assert not any("${" in record.user + record.assistant for record in identity)


def test_dataset_stage_builds_the_bundled_tree(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("KUBETUNE_WORKDIR", str(tmp_path / "work"))
    run = write_run(tmp_path, {"uri": "bundled", "tokenStats": False, "placeholders": IDENTITY_VALUES})
    assert run_job("dataset", run, dataset_stage.run) == EXIT_OK
    config = RunConfig.load(run)
    manifest = read_manifest(open_store(config.store.uri), config.stages["dataset"].prefix)
    assert manifest is not None and manifest.metadata["train"] >= 400
    assert "identity" in manifest.metadata["categories"]


def test_the_dataset_stage_builds_with_the_default_placeholders_when_the_spec_names_none(
        tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("KUBETUNE_WORKDIR", str(tmp_path / "work"))
    write_tree(tmp_path / "tree", "I am ${NAME}.")
    run = write_run(tmp_path, {"uri": str(tmp_path / "tree"), "tokenStats": False})
    assert run_job("dataset", run, dataset_stage.run) == EXIT_OK
    config = RunConfig.load(run)
    text = open_store(config.store.uri).get_bytes(f"{config.stages['dataset'].prefix}/train_data.jsonl").decode()
    assert "I am Nova." in text and "an assistant for fine-tuning language models on Kubernetes" in text


def test_a_blank_placeholder_value_is_a_config_error_naming_the_field(tmp_path: Path, monkeypatch: Any,
                                                                       capsys: Any) -> None:
    # Exit 2: the executors never retry it (docs/contracts.md, exit codes).
    monkeypatch.setenv("KUBETUNE_WORKDIR", str(tmp_path / "work"))
    write_tree(tmp_path / "tree", "I am ${NAME}.")
    run = write_run(tmp_path, {"uri": str(tmp_path / "tree"), "tokenStats": False,
                               "placeholders": {"NAME": " \t", "SPEC": "x"}})
    assert run_job("dataset", run, dataset_stage.run) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "spec.dataset.placeholders: placeholder NAME has an empty value" in err and "Traceback" not in err


def test_an_unknown_category_is_a_config_error_naming_the_field(tmp_path: Path, monkeypatch: Any,
                                                                 capsys: Any) -> None:
    monkeypatch.setenv("KUBETUNE_WORKDIR", str(tmp_path / "work"))
    write_tree(tmp_path / "tree", "I am ${NAME}.")
    run = write_run(tmp_path, {"uri": str(tmp_path / "tree"), "tokenStats": False, "categories": ["nope"]})
    assert run_job("dataset", run, dataset_stage.run) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "spec.dataset.categories: 'nope' is not in the structure" in err and "--category" not in err


def link_topics_outside(root: Path, outside: Path) -> None:
    (root / "topics").rename(outside)
    (root / "topics").symlink_to(outside)


def link_structure_outside(root: Path, outside: Path) -> None:
    (root / "structure.enriched.json").rename(outside)
    (root / "structure.enriched.json").symlink_to(outside)


def topic_fifo(root: Path, _outside: Path) -> None:
    topic = root / "topics" / "identity" / "who" / "identity.who.reasoning.json"
    topic.unlink()
    os.mkfifo(topic)


@pytest.mark.parametrize("hostile", [link_topics_outside, link_structure_outside, topic_fifo],
                         ids=["topics folder linked outside", "structure linked outside", "topic file is a FIFO"])
def test_a_hostile_tree_fails_the_stage_at_once_with_exit_2(hostile: Any, tmp_path: Path, monkeypatch: Any,
                                                           capsys: Any) -> None:
    monkeypatch.setenv("KUBETUNE_WORKDIR", str(tmp_path / "work"))
    write_tree(tmp_path / "tree", "I am ${NAME}.")
    hostile(tmp_path / "tree", tmp_path / "outside")
    run = write_run(tmp_path, {"uri": f"file://{tmp_path / 'tree'}", "tokenStats": False})
    assert run_job("dataset", run, dataset_stage.run) == EXIT_CONFIG
    assert "Traceback" not in capsys.readouterr().err


def test_a_file_uri_is_checked_again_after_percent_decoding(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setenv("KUBETUNE_WORKDIR", str(tmp_path / "work"))
    write_tree(tmp_path / "tree", "I am ${NAME}.")
    (tmp_path / "tree" / "inner").mkdir()
    run = write_run(tmp_path, {"tokenStats": False}, unvalidated_uri=f"file://{tmp_path / 'tree' / 'inner'}/%2e%2e")
    assert run_job("dataset", run, dataset_stage.run) == EXIT_CONFIG
    assert "without '..'" in capsys.readouterr().err
