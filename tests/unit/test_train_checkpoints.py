"""Checkpoints in the store: complete only with a manifest, newest valid one wins, corrupt ones fall back, last K kept."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kubetune.jobs.checkpoints import CheckpointStore, checkpoint_name
from kubetune.store import Store, open_store

PREFIX = "default/demo/train/0123456789abcdef"


def checkpoint_store(tmp_path: Path, keep: int = 5) -> tuple[Store, CheckpointStore]:
    store = open_store(str(tmp_path / "store"))
    return store, CheckpointStore(store, PREFIX, stage="train", input_key="a" * 64, keep=keep)


def publish_fake(checkpoints: CheckpointStore, tmp_path: Path, step: int) -> None:
    folder = tmp_path / "local" / checkpoint_name(step)
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(f"weights of step {step}".encode())
    (folder / "trainer_state.json").write_text(f'{{"step": {step}}}')
    checkpoints.publish(folder, checkpoint_name(step), {"step": step})


def test_the_newest_complete_checkpoint_is_restored(tmp_path: Path) -> None:
    _, checkpoints = checkpoint_store(tmp_path)
    for step in (10, 20, 30):
        publish_fake(checkpoints, tmp_path, step)
    restored = checkpoints.restore_latest(tmp_path / "resume")
    assert restored is not None
    name, folder = restored
    assert name == "checkpoint-00000030"
    assert (folder / "adapter_model.safetensors").read_bytes() == b"weights of step 30"


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("corrupt a file", "sha256 mismatch"),
        ("delete a file", "no object"),
        ("delete the manifest", "incomplete"),
        ("garble the manifest", "invalid manifest"),
    ],
)
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str, reason: str
) -> None:
    store, checkpoints = checkpoint_store(tmp_path)
    for step in (10, 20):
        publish_fake(checkpoints, tmp_path, step)
    latest = f"{PREFIX}/checkpoints/checkpoint-00000020"
    if damage == "corrupt a file":
        store.put_bytes(f"{latest}/adapter_model.safetensors", b"weights of step 2X")
    elif damage == "delete a file":
        store.delete(f"{latest}/adapter_model.safetensors")
    elif damage == "delete the manifest":
        store.delete(f"{latest}/manifest.json")
    else:
        store.put_bytes(f"{latest}/manifest.json", b"{not json")
    with caplog.at_level(logging.WARNING, logger="kubetune.jobs.train"):
        restored = checkpoints.restore_latest(tmp_path / "resume")
    assert restored is not None and restored[0] == "checkpoint-00000010"
    assert (restored[1] / "adapter_model.safetensors").read_bytes() == b"weights of step 10"
    assert any("checkpoint-00000020" in r.getMessage() and reason in r.getMessage() for r in caplog.records)


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    _, checkpoints = checkpoint_store(tmp_path)
    assert checkpoints.restore_latest(tmp_path / "resume") is None


def test_only_the_last_k_checkpoints_are_kept(tmp_path: Path) -> None:
    _, checkpoints = checkpoint_store(tmp_path, keep=2)
    for step in (5, 10, 15, 20):
        publish_fake(checkpoints, tmp_path, step)
    assert checkpoints.names() == ["checkpoint-00000015", "checkpoint-00000020"]
