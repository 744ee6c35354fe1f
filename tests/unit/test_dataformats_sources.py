"""A data-file dataset is addressed by its content: the file, or the .jsonl/.json/.parquet files under its folder,
each by sha256; other files are not read and change nothing; a link out of the folder or a missing path is refused
naming spec.dataset.uri."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api import types as t
from kubetune.sources import SourceError, dataset_source, hub_dataset
from kubetune.store import open_store


def digest(uri: Path | str) -> str:
    return dataset_source(t.DatasetSpec(uri=str(uri), format="messages"), open_store).digest


def test_a_data_file_is_addressed_by_its_content_not_its_path(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "chats.jsonl", tmp_path / "b" / "chats.jsonl"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text('{"messages": []}\n', encoding="utf-8")
    assert digest(first) == digest(second) == digest(f"file://{first}")
    first.write_text('{"messages": [1]}\n', encoding="utf-8")
    assert digest(first) != digest(second)


def test_a_folder_is_addressed_by_its_data_files_only(tmp_path: Path) -> None:
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "one.parquet").write_bytes(b"PAR1")
    before = digest(tmp_path)
    (tmp_path / "README.md").write_text("notes", encoding="utf-8")
    (tmp_path / ".hidden.jsonl").write_text("{}", encoding="utf-8")
    assert digest(tmp_path) == before
    (tmp_path / "two.json").write_text("[]", encoding="utf-8")
    assert digest(tmp_path) != before


def test_a_link_out_of_the_folder_an_empty_folder_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.jsonl"
    outside.write_text("{}", encoding="utf-8")
    (tmp_path / "data").mkdir()
    with pytest.raises(SourceError, match="spec.dataset.uri: no .jsonl, .json or .parquet files under"):
        digest(tmp_path / "data")
    (tmp_path / "data" / "link.jsonl").symlink_to(outside)
    with pytest.raises(SourceError, match="spec.dataset.uri: .*outside"):
        digest(tmp_path / "data")
    with pytest.raises(SourceError, match="spec.dataset.uri: .*missing.jsonl is not a file"):
        digest(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(("uri", "parts"), [
    ("hf://datasets/org/chats", ("org/chats", "main", "")),
    ("hf://datasets/org/chats@v1.0", ("org/chats", "v1.0", "")),
    ("hf://datasets/org/chats@" + "c" * 40 + "/data/train.parquet", ("org/chats", "c" * 40, "data/train.parquet")),
    ("hf://datasets/org/chats/data/", ("org/chats", "main", "data")),
])
def test_a_hub_dataset_uri_names_the_repo_revision_and_path(uri: str, parts: tuple[str, str, str]) -> None:
    assert hub_dataset(uri) == parts


def test_a_hub_dataset_pinned_to_a_commit_resolves_without_asking_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: a request would fail
    uri = "hf://datasets/org/chats@" + "c" * 40
    resolved = dataset_source(t.DatasetSpec(uri=uri, format="sharegpt"), open_store)
    assert resolved.revision == "c" * 40
    other = dataset_source(t.DatasetSpec(uri=uri + "/data/train.jsonl", format="sharegpt"), open_store)
    assert other.digest != resolved.digest


@pytest.mark.parametrize("uri", ["hf://datasets/org/chats@..", "hf://datasets/org/chats@.hidden",
                                 "hf://datasets/org/chats/data/../../x"])
def test_a_hub_dataset_uri_that_could_leave_its_repo_or_cache_folder_is_refused(uri: str) -> None:
    with pytest.raises(SourceError, match="must look like hf://datasets/org/name"):
        hub_dataset(uri)
