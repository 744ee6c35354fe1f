"""Source resolution: every input a stage reads becomes a digest of what it holds now, never just its URI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

import kubetune.digests
from kubetune.api import types as t
from kubetune.api.chat_template import ChatTemplateSpec
from kubetune.api.validate import validate_spec
from kubetune.digests import DigestCache, folder_digest
from kubetune.sources import (
    SourceError,
    Sources,
    base_model_source,
    dataset_source,
    resolve_sources,
    template_source,
)
from kubetune.store import Store
from tests.fixtures.sources import COMMIT_A, COMMIT_B, ModelInfo

BUNDLED_TREE = Path(__file__).resolve().parents[2] / "datasets_new"


def no_store(uri: str) -> Store:
    raise AssertionError(f"no store expected, asked for {uri}")


def tree(root: Path) -> Path:
    """A small dataset tree: a structure file, two topic files, and a README the builder never reads."""
    (root / "topics" / "identity").mkdir(parents=True)
    (root / "structure.enriched.json").write_text('{"categories": []}')
    (root / "topics" / "identity" / "name.json").write_text('{"samples": ["a"]}')
    (root / "topics" / "identity" / "role.json").write_text('{"samples": ["b"]}')
    (root / "README.md").write_text("notes")
    return root


def dataset_digest(root: Path, **spec: Any) -> str:
    return dataset_source(t.DatasetSpec(uri=str(root), **spec), no_store).digest


def test_editing_a_topic_file_changes_the_dataset_digest(tmp_path: Path) -> None:
    root = tree(tmp_path / "tree")
    before = dataset_digest(root)
    assert dataset_digest(root) == before
    (root / "topics" / "identity" / "name.json").write_text('{"samples": ["c"]}')
    assert dataset_digest(root) != before


def test_adding_a_topic_file_or_editing_the_structure_changes_the_dataset_digest(tmp_path: Path) -> None:
    root = tree(tmp_path / "tree")
    before = dataset_digest(root)
    (root / "topics" / "identity" / "extra.json").write_text("{}")
    added = dataset_digest(root)
    (root / "structure.enriched.json").write_text('{"categories": ["identity"]}')
    assert len({before, added, dataset_digest(root)}) == 3


def test_files_the_builder_does_not_read_leave_the_dataset_digest_alone(tmp_path: Path) -> None:
    root = tree(tmp_path / "tree")
    before = dataset_digest(root)
    (root / "README.md").write_text("other notes")
    (root / "scratch.txt").write_text("x")
    assert dataset_digest(root) == before


def test_the_same_tree_in_two_folders_has_one_digest(tmp_path: Path) -> None:
    root = tree(tmp_path / "one")
    copy = shutil.copytree(root, tmp_path / "two")
    assert dataset_digest(root) == dataset_digest(copy)
    assert dataset_source(t.DatasetSpec(uri=f"file://{copy}"), no_store).digest == dataset_digest(root)


def test_the_bundled_dataset_is_the_tree_packaged_with_kubetune() -> None:
    assert dataset_source(t.DatasetSpec(uri="bundled"), no_store).digest == dataset_digest(BUNDLED_TREE)


def test_a_symlink_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    root = tree(tmp_path / "tree")
    (tmp_path / "secret.json").write_text("{}")
    (root / "topics" / "identity" / "leak.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(SourceError, match=r"spec\.dataset\.uri: .*leak\.json is a symlink .* outside"):
        dataset_digest(root)


def test_the_digest_walks_topics_as_the_builder_does_hidden_names_skipped_in_tree_links_followed(
        tmp_path: Path) -> None:
    root = tree(tmp_path / "tree")
    before = dataset_digest(root)
    (root / "topics" / "identity" / ".name.json.swp").write_text("editor scratch")
    (root / "topics" / ".git").mkdir()
    assert dataset_digest(root) == before
    (root / "topics" / "alias").symlink_to(root / "topics" / "identity")  # the builder reads through it
    (root / "topics" / "identity" / "loop").symlink_to(root / "topics")  # walked once, not forever
    linked = dataset_digest(root)
    assert linked != before
    (root / "topics" / "identity" / "name.json").write_text('{"samples": ["c"]}')
    assert dataset_digest(root) != linked


def test_a_fifo_in_the_topics_is_refused_without_being_opened(tmp_path: Path) -> None:
    root = tree(tmp_path / "tree")
    os.mkfifo(root / "topics" / "identity" / "pipe.json")  # opening it to hash it would block forever
    with pytest.raises(SourceError, match=r"^spec\.dataset\.uri: .*pipe\.json is not a regular file or folder"):
        dataset_digest(root)


def test_a_missing_tree_or_structure_file_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"^spec\.dataset\.uri: .* is not a folder"):
        dataset_digest(tmp_path / "absent")
    with pytest.raises(SourceError, match=r"^spec\.dataset\.structure: .*other\.json does not exist"):
        dataset_digest(tree(tmp_path / "tree"), structure="other.json")


def test_the_chatml_template_digest_is_the_sha256_of_the_installed_chat_template() -> None:
    installed = Path(__file__).resolve().parents[2] / "templates" / "chat_template.jinja"
    model = base_model_source(t.BaseModelSpec(), no_store, None, Path("/nonexistent"))
    chatml = template_source(ChatTemplateSpec(source="chatml"), model, no_store)
    assert chatml.digest == hashlib.sha256(installed.read_bytes()).hexdigest()


# --- base models --------------------------------------------------------------------------------------------------


def model_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model.safetensors").write_bytes(b"\x00" * 2048)
    return root


def model_digest(uri: str, tmp_path: Path, **spec: Any) -> str:
    return base_model_source(t.BaseModelSpec(uri=uri, **spec), no_store, None, tmp_path / "hf").digest


def test_a_local_model_folder_is_addressed_by_its_folder_digest_and_new_weights_change_it(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "model")
    before = model_digest(str(folder), tmp_path)
    assert before == folder_digest(folder) == model_digest(f"file://{folder}", tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x01" * 2048)
    assert model_digest(str(folder), tmp_path) != before


def test_the_bundled_model_is_addressed_by_its_gguf_file() -> None:
    from kubetune.bundled import BUNDLED_MODELS

    gguf = BUNDLED_MODELS["smollm2-135m-instruct"].locate()
    resolved = base_model_source(t.BaseModelSpec(), no_store, None, Path("/nonexistent"))
    assert resolved.digest == kubetune.digests.sha256_file(gguf)


def test_an_s3_model_with_a_pinned_sha256_is_that_folder_digest_without_listing(tmp_path: Path) -> None:
    pinned = "c" * 64
    assert model_digest("s3://models/smol/", tmp_path, sha256=pinned) == pinned


def test_the_digest_cache_rehashes_a_big_file_only_when_its_stat_changes(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(kubetune.digests.CACHED_MIN_SIZE))
    hashed: list[Path] = []
    real = kubetune.digests.sha256_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(kubetune.digests, "sha256_file", counting)
    cache = DigestCache(tmp_path / "state" / "digests.json")
    first = cache.sha256(big)
    cache.save()
    again = DigestCache(tmp_path / "state" / "digests.json")  # a later run reads the saved cache
    assert again.sha256(big) == first and hashed == [big]
    big.write_bytes(os.urandom(kubetune.digests.CACHED_MIN_SIZE))  # rewritten: new mtime
    assert again.sha256(big) != first and hashed == [big, big]


@pytest.mark.parametrize("entry", [
    ["SIZE", "MTIME", "INODE", "f" * 64],  # stat fields that are no ints
    [0, 0, 0, "not a digest"], [0, 0, 0, "F" * 64], [0, 0, 0, "f" * 63], [0, 0, 0], "text",
])
def test_a_damaged_digest_cache_entry_is_never_trusted(tmp_path: Path, entry: object) -> None:
    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(kubetune.digests.CACHED_MIN_SIZE))
    stat = big.stat()
    if isinstance(entry, list) and entry[:3] == [0, 0, 0]:
        entry[:3] = [stat.st_size, stat.st_mtime_ns, stat.st_ino]  # the file's own stat: only the digest is off
    saved = tmp_path / "digests.json"
    saved.write_text(json.dumps({str(big.resolve()): entry}), encoding="utf-8")
    assert DigestCache(saved).sha256(big) == hashlib.sha256(big.read_bytes()).hexdigest()


def test_the_digest_cache_forgets_files_that_are_gone(tmp_path: Path) -> None:
    kept, gone = tmp_path / "kept.bin", tmp_path / "gone.bin"
    for path in (kept, gone):
        path.write_bytes(os.urandom(kubetune.digests.CACHED_MIN_SIZE))
    cache = DigestCache(tmp_path / "digests.json")
    cache.sha256(kept), cache.sha256(gone)
    gone.unlink()
    cache.save()
    assert list(json.loads((tmp_path / "digests.json").read_text(encoding="utf-8"))) == [str(kept.resolve())]


# --- hf:// revisions ----------------------------------------------------------------------------------------------


def test_an_hf_ref_resolves_to_its_commit_and_a_moved_ref_changes_the_digest(hub: type[ModelInfo],
                                                                             tmp_path: Path) -> None:
    base = t.BaseModelSpec(uri="hf://org/tiny@main")
    first = base_model_source(base, no_store, None, tmp_path)
    assert first.revision == COMMIT_A and hub.asked
    hub.refs["main"] = COMMIT_B  # a new commit pushed to main
    moved = base_model_source(base, no_store, None, tmp_path)
    assert moved.revision == COMMIT_B and moved.digest != first.digest


def test_an_unreachable_hub_is_one_line_naming_the_field_and_what_to_do(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    with socket.socket() as closed:  # a port nothing listens on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(SourceError, match=r"^spec\.baseModel\.uri: cannot resolve hf://org/tiny@main revision 'main': "
                                          r"the Hub cannot be reached \(ConnectError: .*\); pin a commit sha") as error:
        base_model_source(t.BaseModelSpec(uri="hf://org/tiny@main"), no_store, None, tmp_path)
    assert "\n" not in str(error.value)


def test_an_hf_commit_revision_is_not_looked_up_only_its_files_are_fetched(hub: type[ModelInfo],
                                                                          tmp_path: Path) -> None:
    resolved = base_model_source(t.BaseModelSpec(uri="hf://org/tiny", revision=COMMIT_B), no_store, None, tmp_path)
    assert resolved.revision == COMMIT_B
    assert all(COMMIT_B in path for path in hub.asked) and "/api/models/org/tiny/revision/main" not in hub.asked


def test_an_unknown_hf_revision_names_the_field(hub: type[ModelInfo], tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"^spec\.baseModel\.uri: cannot resolve hf://org/tiny@nope revision"):
        base_model_source(t.BaseModelSpec(uri="hf://org/tiny@nope"), no_store, None, tmp_path)


def test_offline_an_hf_ref_is_read_from_the_local_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = t.BaseModelSpec(uri="hf://org/tiny@main")
    with pytest.raises(SourceError, match="cannot resolve hf://org/tiny@main revision 'main' offline"):
        base_model_source(base, no_store, None, tmp_path)
    refs = tmp_path / "models--org--tiny" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(COMMIT_A)
    snapshot = model_folder(tmp_path / "models--org--tiny" / "snapshots" / COMMIT_A)
    (snapshot / "model.safetensors").write_bytes(b"weights")
    resolved = base_model_source(base, no_store, None, tmp_path)
    assert resolved.revision == COMMIT_A and resolved.digest == folder_digest(snapshot)


# --- all together ---------------------------------------------------------------------------------------------------


def test_resolved_sources_round_trip_through_json(tmp_path: Path) -> None:
    root = tree(tmp_path / "tree")
    folder = model_folder(tmp_path / "model")
    spec = validate_spec({"dataset": {"uri": str(root)}, "baseModel": {"uri": str(folder)}})
    sources = resolve_sources(spec, store_factory=no_store, cache=DigestCache(), hub_cache=tmp_path / "hf")
    assert Sources.from_json(json.loads(sources.dumps())) == sources
    assert (sources.dataset.uri, sources.base_model.uri) == (str(root), str(folder))
