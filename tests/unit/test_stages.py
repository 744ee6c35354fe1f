"""Stage keys: the same inputs give the same key; anything that changes a stage's output changes its key.

Keys hash content (resolved source digests, upstream content digests), never a URI."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.types import STAGES
from kubetune.api.validate import validate_spec
from kubetune.sources import Sources
from kubetune.stages import resolution_ref, stage_key, stage_prefix, stage_ref
from tests.fixtures.sources import example_sources

UPSTREAM = {"dataset": "d1", "train": "t1", "merge": "m1", "convert": "c1", "evaluate": "e1"}


def key(stage: str, spec: dict[str, Any] | None = None, upstream: dict[str, str] | None = None,
        sources: Sources | None = None) -> str:
    return stage_ref("ns", "run", validate_spec(spec or {}), stage, upstream or UPSTREAM,
                     sources or example_sources()).key


def test_keys_are_stable_and_hex() -> None:
    assert key("train") == key("train") and len(key("train")) == 64


@pytest.mark.parametrize(
    ("stage", "edit"),
    [
        ("dataset", {"dataset": {"placeholders": {"NAME": "Nova"}}}),
        ("dataset", {"dataset": {"categories": ["identity"]}}),
        ("train", {"training": {"lora": {"r": 8}}}),
        ("train", {"dataset": {"maxSeqLength": 512}}),
        ("train", {"training": {"fp8": True}}),  # FP8 rounding changes what is learnt
        ("merge", {"merge": {"dtype": "float16"}}),
        ("convert", {"export": {"types": ["f16"]}}),
        ("evaluate", {"evaluate": {"minPassRate": 0.5}}),
        ("evaluate", {"training": {"stopSequences": ["<|im_end|>"]}}),
    ],
)
def test_an_edit_that_changes_a_stage_output_changes_its_key(stage: str, edit: dict[str, Any]) -> None:
    assert key(stage, edit) != key(stage)


@pytest.mark.parametrize(
    ("stage", "edit"),
    [
        ("dataset", {"training": {"lora": {"r": 8}}}),
        ("train", {"export": {"types": ["f16"]}}),
        ("train", {"training": {"device": "cpu"}}),
        ("train", {"training": {"recomputeLayers": 0.5, "compile": False, "activationOffload": True}}),  # how fast
        ("merge", {"training": {"learningRate": 0.1}}),  # reaches merge through the train digest, not the spec
        ("convert", {"merge": {"dtype": "float16"}}),
        ("train", {"resources": {"train": {"gpus": 4}}}),
        ("train", {"suspend": True}),
    ],
)
def test_an_edit_that_does_not_affect_a_stage_keeps_its_key(stage: str, edit: dict[str, Any]) -> None:
    assert key(stage, edit) == key(stage)


@pytest.mark.parametrize("gate", [{"maxEvalLoss": 1.5}, {"maxEvalLossRatio": 1.1}])
def test_the_eval_loss_gate_changes_the_evaluate_key_only(gate: dict[str, Any]) -> None:
    held_out = {"dataset": {"evalSplit": 0.1}}
    changed = [stage for stage in STAGES if key(stage, {**held_out, "evaluate": gate}) != key(stage, held_out)]
    assert changed == ["evaluate"]


def test_a_new_upstream_output_changes_every_downstream_key() -> None:
    assert key("merge", upstream={**UPSTREAM, "train": "t2"}) != key("merge")
    assert key("evaluate", upstream={**UPSTREAM, "merge": "m2"}) != key("evaluate")


def test_a_stage_needs_its_upstream_digests() -> None:
    with pytest.raises(ValueError, match="needs the outputs of dataset"):
        stage_ref("ns", "run", validate_spec({}), "train", {}, example_sources())


def test_prefixes_are_namespaced_per_run_and_stage() -> None:
    assert stage_prefix("ns", "run", "train", "a" * 64) == "ns/run/train/" + "a" * 16
    assert stage_key(validate_spec({}), "dataset", {}, example_sources()) == key("dataset", upstream={})


def changed_keys(sources: Sources, spec: dict[str, Any] | None = None) -> set[str]:
    """The stages whose own key changes with `sources` (upstream outputs held equal)."""
    return {stage for stage in STAGES if key(stage, spec, sources=sources) != key(stage, spec)}


def test_a_changed_dataset_tree_changes_the_dataset_key_only_later_stages_follow_through_its_output() -> None:
    assert changed_keys(example_sources(dataset="tree-2")) == {"dataset"}


def test_a_changed_chat_template_changes_the_train_and_evaluate_keys_not_the_dataset() -> None:
    # convert reads the template from the merged model, so it follows through the merge output.
    assert changed_keys(example_sources(template="template-2")) == {"train", "evaluate"}


def test_a_changed_base_model_changes_dataset_train_and_merge_keys_when_token_stats_read_its_tokenizer() -> None:
    assert changed_keys(example_sources(model="model-2")) == {"dataset", "train", "merge"}
    assert changed_keys(example_sources(model="model-2"), {"dataset": {"tokenStats": False}}) == {"train", "merge"}


def test_the_same_content_at_another_uri_keeps_every_key() -> None:
    moved = example_sources(dataset_uri="s3://data/tree", model_uri="/models/smol")
    assert changed_keys(moved, {"dataset": {"uri": "s3://data/tree"}, "baseModel": {"uri": "/models/smol"}}) == set()
    assert all(key(stage, {"dataset": {"uri": "s3://data/tree"}}) == key(stage) for stage in STAGES)


def test_the_resolution_key_follows_the_source_fields_the_run_the_image_and_the_refresh_annotation() -> None:
    def ref(spec: dict[str, Any] | None = None, **kwargs: str) -> str:
        args = {"uid": "u1", "image": "job:1", "refresh": ""} | kwargs
        return resolution_ref("ns", "run", validate_spec(spec or {}), **args).key

    assert ref() == ref({"training": {"learningRate": 0.1}, "suspend": True})  # no source field
    changed = [ref({"dataset": {"uri": "s3://data/tree"}}), ref({"dataset": {"structure": "other.json"}}),
               ref({"baseModel": {"uri": "hf://org/name@main"}}), ref({"training": {"chatTemplate": {"source": "chatml"}}}),
               ref(uid="u2"), ref(image="job:2"),
               ref(refresh="2026-12-06")]
    assert ref() not in changed and len(set(changed)) == len(changed)
    assert resolution_ref("ns", "run", validate_spec({}), uid="u1", image="i", refresh="").prefix.startswith(
        "ns/run/sources/")
