"""`kubetune run` reads `./` and `../` local paths relative to the manifest; validation as a server does refuses them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api.validate import InvalidManifest, load_runs

MANIFEST = """\
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneRun
metadata:
  name: relative
spec:
  dataset:
    uri: {dataset}
    format: messages
  storage:
    uri: ../store
"""


def write(folder: Path, dataset: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(MANIFEST.format(dataset=dataset), encoding="utf-8")
    return path


def test_a_relative_dataset_path_is_taken_from_the_manifests_folder(tmp_path: Path) -> None:
    manifest = write(tmp_path / "examples", "./data/chats.jsonl")
    (run,) = load_runs(manifest, relative_paths=True)
    assert run.spec.dataset.uri == str(tmp_path / "examples" / "data" / "chats.jsonl")
    assert run.spec.storage.uri == str(tmp_path / "store")


def test_a_relative_path_is_refused_where_a_server_would_see_it(tmp_path: Path) -> None:
    manifest = write(tmp_path, "./data/chats.jsonl")
    with pytest.raises(InvalidManifest) as refused:
        load_runs(manifest)
    assert "spec.dataset.uri" in str(refused.value)


def test_absolute_and_remote_uris_are_left_as_written(tmp_path: Path) -> None:
    for uri in ("/srv/data/chats.jsonl", "s3://bucket/chats.jsonl", "hf://datasets/org/chats"):
        (run,) = load_runs(write(tmp_path / uri.replace("/", "_"), uri), relative_paths=True)
        assert run.spec.dataset.uri == uri
