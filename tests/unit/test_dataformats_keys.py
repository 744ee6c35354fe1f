"""The dataset format and its field mapping are part of the dataset stage's key and of no other stage's: later
stages follow through the dataset's output digest. The bundled tree cannot be read as another format; an hf://
dataset's Jobs may reach the Hub."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.types import STAGES
from kubetune.api.validate import InvalidManifest, validate_spec
from kubetune.stages import stage_ref
from tests.fixtures.sources import example_sources
from tests.unit.test_operator_jobspec import env, manifests

UPSTREAM = {stage: f"{stage}-digest" for stage in STAGES}
MESSAGES = {"uri": "/data/chats.jsonl", "format": "messages"}


def keys(dataset: dict[str, Any]) -> dict[str, str]:
    spec = validate_spec({"dataset": dataset})
    return {stage: stage_ref("ns", "run", spec, stage, UPSTREAM, example_sources()).key for stage in STAGES}


@pytest.mark.parametrize("edit", [
    {"format": "sharegpt"},
    {"format": "alpaca"},
    {"fields": {"messages": "dialog"}},
    {"fields": {"role": "speaker", "content": "text"}},
])
def test_changing_the_format_or_a_field_mapping_changes_exactly_the_dataset_key(edit: dict[str, Any]) -> None:
    before, after = keys(MESSAGES), keys({**MESSAGES, **edit})
    assert {stage for stage in STAGES if before[stage] != after[stage]} == {"dataset"}


def test_a_tree_and_a_file_of_the_same_content_digest_differ_by_format() -> None:
    assert keys({"uri": "/data/tree"})["dataset"] != keys({"uri": "/data/tree", "format": "messages"})["dataset"]


def test_the_bundled_tree_cannot_be_read_as_another_format() -> None:
    with pytest.raises(InvalidManifest, match="a format other than tree needs a file or folder uri"):
        validate_spec({"dataset": {"format": "messages"}})


def test_a_field_mapping_key_must_be_a_plain_name() -> None:
    with pytest.raises(InvalidManifest, match="fields.role"):
        validate_spec({"dataset": {**MESSAGES, "fields": {"role": "a b"}}})


@pytest.mark.parametrize("stage", ["dataset", "train"])
def test_a_hub_dataset_lets_the_jobs_reach_the_hub_a_local_one_keeps_them_offline(stage: str) -> None:
    _, hub_job = manifests({"dataset": {"uri": "hf://datasets/org/chats", "format": "messages"}}, stage=stage)
    _, local_job = manifests({"dataset": MESSAGES}, stage=stage)
    assert "HF_HUB_OFFLINE" not in env(hub_job)
    assert env(local_job)["HF_HUB_OFFLINE"] == "1"
