"""Stage keys: the same inputs give the same key; anything that changes a stage's output changes its key."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.validate import validate_spec
from kubetune.stages import stage_key, stage_prefix, stage_ref

UPSTREAM = {"dataset": "d1", "train": "t1", "merge": "m1", "convert": "c1"}


def key(stage: str, spec: dict[str, Any] | None = None, upstream: dict[str, str] | None = None) -> str:
    return stage_ref("ns", "run", validate_spec(spec or {}), stage, upstream or UPSTREAM).key


def test_keys_are_stable_and_hex() -> None:
    assert key("train") == key("train") and len(key("train")) == 64


@pytest.mark.parametrize(
    ("stage", "edit"),
    [
        ("dataset", {"dataset": {"placeholders": {"NAME": "Nova"}}}),
        ("dataset", {"dataset": {"categories": ["identity"]}}),
        ("train", {"training": {"lora": {"r": 8}}}),
        ("train", {"baseModel": {"uri": "s3://models/other"}}),
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
        ("train", {"training": {"recomputeLayers": 0.5, "compile": False}}),  # how fast, not what is learnt
        ("merge", {"training": {"learningRate": 0.1}}),  # reaches merge through the train digest, not the spec
        ("convert", {"merge": {"dtype": "float16"}}),
        ("train", {"resources": {"train": {"gpus": 4}}}),
        ("train", {"suspend": True}),
    ],
)
def test_an_edit_that_does_not_affect_a_stage_keeps_its_key(stage: str, edit: dict[str, Any]) -> None:
    assert key(stage, edit) == key(stage)


def test_a_new_upstream_output_changes_every_downstream_key() -> None:
    assert key("merge", upstream={**UPSTREAM, "train": "t2"}) != key("merge")
    assert key("evaluate", upstream={**UPSTREAM, "merge": "m2"}) != key("evaluate")


def test_a_stage_needs_its_upstream_digests() -> None:
    with pytest.raises(ValueError, match="needs the outputs of dataset"):
        stage_ref("ns", "run", validate_spec({}), "train", {})


def test_prefixes_are_namespaced_per_run_and_stage() -> None:
    assert stage_prefix("ns", "run", "train", "a" * 64) == "ns/run/train/" + "a" * 16
    assert stage_key(validate_spec({}), "dataset", {}) == key("dataset", upstream={})
