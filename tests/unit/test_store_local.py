"""The local (file://) store, opening stores by URI, and atomic publication of stage outputs (manifest.json last)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from kubetune.store import (
    MANIFEST_NAME,
    IntegrityError,
    LocalStore,
    Manifest,
    ManifestError,
    ObjectInfo,
    ObjectNotFoundError,
    S3Settings,
    S3Store,
    Store,
    Upload,
    fetch,
    manifest_digest,
    open_store,
    publish,
    read_manifest,
)
from kubetune.store.keys import TEMP_MARKER

INPUT_KEY = "ab" * 32


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def leftovers(folder: Path) -> list[Path]:
    """In-flight temp files anywhere under ``folder``: an atomic write must never leave one behind."""
    return [path for path in folder.rglob("*") if path.name.startswith(TEMP_MARKER)]


# -- objects -------------------------------------------------------------------------------------------------------


def test_bytes_round_trip_and_overwrite(store: LocalStore) -> None:
    store.put_bytes("a/b/c.txt", b"first")
    assert store.get_bytes("a/b/c.txt") == b"first"
    store.put_bytes("a/b/c.txt", b"second, longer")
    assert store.get_bytes("a/b/c.txt") == b"second, longer"
    assert store.exists("a/b/c.txt")
    assert not store.exists("a/b")  # folders are not objects


def test_file_round_trip_creates_missing_parent_folders(store: LocalStore, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # spans several 1 MiB copy chunks
    store.put_file("model/weights.bin", source)
    target = tmp_path / "deep" / "down" / "weights.bin"
    store.get_file("model/weights.bin", target, sha256=sha256_of(source.read_bytes()))
    assert target.read_bytes() == source.read_bytes()
    assert leftovers(tmp_path) == []


def test_get_file_with_a_wrong_sha256_raises_and_leaves_the_destination_untouched(
    store: LocalStore, tmp_path: Path
) -> None:
    store.put_bytes("data.bin", b"tampered content")
    fresh_target = tmp_path / "out" / "fresh.bin"
    existing_target = tmp_path / "out" / "existing.bin"
    existing_target.parent.mkdir(parents=True)
    existing_target.write_bytes(b"previous good copy")

    for target in (fresh_target, existing_target):
        with pytest.raises(IntegrityError, match="sha256 mismatch") as raised:
            store.get_file("data.bin", target, sha256=sha256_of(b"original content"))
        assert raised.value.actual == sha256_of(b"tampered content")

    assert not fresh_target.exists()
    assert existing_target.read_bytes() == b"previous good copy"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "read",
    [
        lambda store, tmp: store.get_bytes("missing/key"),
        lambda store, tmp: store.get_file("missing/key", tmp / "x"),
    ],
    ids=["get_bytes", "get_file"],
)
def test_reading_a_missing_key_raises_object_not_found(
    store: LocalStore, tmp_path: Path, read: Callable[[LocalStore, Path], Any]
) -> None:
    with pytest.raises(ObjectNotFoundError, match="missing/key"):
        read(store, tmp_path)
    with pytest.raises(FileNotFoundError):  # the same error, for callers that think in files
        read(store, tmp_path)
    assert not (tmp_path / "x").exists()


def test_list_is_recursive_sorted_with_sizes_and_treats_prefixes_as_folders(store: LocalStore) -> None:
    for key, data in {"b/2": b"22", "a/bc/1": b"1", "a/b/z": b"zzz", "a/b/y/x": b"", "top": b"t"}.items():
        store.put_bytes(key, data)
    assert store.list() == [
        ObjectInfo("a/b/y/x", 0),
        ObjectInfo("a/b/z", 3),
        ObjectInfo("a/bc/1", 1),
        ObjectInfo("b/2", 2),
        ObjectInfo("top", 1),
    ]
    assert [info.key for info in store.list("a/b")] == ["a/b/y/x", "a/b/z"]  # not "a/bc/1"
    assert [info.key for info in store.list("a/b/")] == ["a/b/y/x", "a/b/z"]
    assert store.list("nothing/here") == []
    assert store.list("top") == []  # an object is not a folder


def test_list_hides_in_flight_writes(store: LocalStore) -> None:
    store.put_bytes("out/done.bin", b"done")
    # What a writer killed between writing its temp file and renaming it leaves behind.
    (store.root / "out" / f"{TEMP_MARKER}1234-model.bin").write_bytes(b"half")
    assert [info.key for info in store.list("out")] == ["out/done.bin"]


def test_a_failed_overwrite_keeps_the_previous_object(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put_bytes("model.bin", b"version 1")
    source = tmp_path / "v2.bin"
    source.write_bytes(b"version 2")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.put_file("model.bin", source)
    with pytest.raises(OSError, match="No space left"):
        store.put_bytes("model.bin", b"version 2")
    monkeypatch.undo()

    assert store.get_bytes("model.bin") == b"version 1"
    assert leftovers(store.root) == []


def test_readers_never_see_a_partially_written_object(store: LocalStore) -> None:
    versions = [bytes([i]) * (2 * 1024 * 1024) for i in range(2)]
    store.put_bytes("model.bin", versions[0])
    stop = threading.Event()
    torn_reads: list[int] = []

    def read_repeatedly() -> None:
        while not stop.is_set():
            data = store.get_bytes("model.bin")
            if data not in versions:
                torn_reads.append(len(data))

    reader = threading.Thread(target=read_repeatedly)
    reader.start()
    try:
        for round_number in range(30):
            store.put_bytes("model.bin", versions[round_number % 2])
    finally:
        stop.set()
        reader.join()
    assert torn_reads == []


def test_delete_is_idempotent_and_prunes_empty_folders(store: LocalStore) -> None:
    store.put_bytes("a/b/c/file", b"x")
    store.put_bytes("a/keep", b"y")
    store.delete("a/b/c/file")
    store.delete("a/b/c/file")
    store.delete("never/existed")
    assert not (store.root / "a" / "b").exists()
    assert store.list() == [ObjectInfo("a/keep", 1)]
    assert store.root.is_dir()


def test_delete_prefix_removes_only_that_folder(store: LocalStore) -> None:
    for key in ("run/train/1", "run/train/sub/2", "run/trainer/3", "run/merge/4"):
        store.put_bytes(key, b"x")
    store.delete_prefix("run/train")
    store.delete_prefix("run/absent")
    assert [info.key for info in store.list()] == ["run/merge/4", "run/trainer/3"]


@pytest.mark.parametrize("root", ["", "/"])
def test_delete_prefix_refuses_to_wipe_the_whole_store(store: LocalStore, root: str) -> None:
    store.put_bytes("precious", b"x")
    with pytest.raises(ValueError):
        store.delete_prefix(root)
    assert store.exists("precious")


def test_folders_go_up_and_down_with_nested_paths_and_followed_file_symlinks(store: LocalStore, tmp_path: Path) -> None:
    files = {"config.json": b"{}", "adapter/model.safetensors": b"w" * 5000, "adapter/nested/deep.txt": b"deep"}
    source = write_tree(tmp_path / "up", files)
    (tmp_path / "blob").write_bytes(b"cached blob")
    (source / "tokenizer.json").symlink_to(tmp_path / "blob")  # how Hugging Face caches look

    uploaded = store.put_dir("runs/x", source)
    assert uploaded == [
        ObjectInfo("runs/x/adapter/model.safetensors", 5000),
        ObjectInfo("runs/x/adapter/nested/deep.txt", 4),
        ObjectInfo("runs/x/config.json", 2),
        ObjectInfo("runs/x/tokenizer.json", 11),
    ]
    assert store.list("runs/x") == uploaded

    downloaded = store.get_dir("runs/x", tmp_path / "down")
    assert downloaded == uploaded
    for relative, data in {**files, "tokenizer.json": b"cached blob"}.items():
        assert (tmp_path / "down" / relative).read_bytes() == data


def test_put_dir_refuses_a_symlinked_folder_instead_of_silently_skipping_it(store: LocalStore, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "up", {"a.txt": b"a"})
    write_tree(tmp_path / "elsewhere", {"b.txt": b"b"})
    (source / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ValueError, match="symlinked folder"):
        store.put_dir("runs/x", source)


@pytest.mark.parametrize(
    "call",
    [
        lambda s, p: s.put_bytes("../escape", b"x"),
        lambda s, p: s.put_file("/abs", p),
        lambda s, p: s.get_bytes("a//b"),
        lambda s, p: s.get_file("a\\b", p),
        lambda s, p: s.exists("a/./b"),
        lambda s, p: s.list("../"),
        lambda s, p: s.delete("nul\x00"),
        lambda s, p: s.delete_prefix("a/../.."),
        lambda s, p: s.put_dir("/abs", p.parent),
        lambda s, p: s.get_dir("a//", p.parent),
        lambda s, p: s.uri_for(""),
    ],
    ids=["put_bytes", "put_file", "get_bytes", "get_file", "exists", "list", "delete", "delete_prefix",
         "put_dir", "get_dir", "uri_for"],
)  # fmt: skip
def test_every_operation_validates_keys(store: LocalStore, tmp_path: Path, call: Callable[[Store, Path], Any]) -> None:
    probe = tmp_path / "probe.txt"
    probe.write_bytes(b"x")
    with pytest.raises(ValueError):
        call(store, probe)
    assert list(tmp_path.parent.rglob("escape")) == []


def test_uri_for_is_a_file_uri_that_opens_the_same_store(store: LocalStore) -> None:
    store.put_bytes("a/b.txt", b"hello")
    uri = store.uri_for("a/b.txt")
    assert uri == (store.root / "a" / "b.txt").as_uri()
    assert open_store(store.root.as_uri()).get_bytes("a/b.txt") == b"hello"


# -- opening stores ------------------------------------------------------------------------------------------------


def test_open_store_picks_the_local_backend_for_file_uris_and_plain_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cases = {
        (tmp_path / "a").as_uri(): tmp_path / "a",
        f"file://localhost{tmp_path / 'b'}": tmp_path / "b",
        f"FILE://{tmp_path / 'e'}": tmp_path / "e",  # URI schemes are case-insensitive (RFC 3986)
        str(tmp_path / "c"): tmp_path / "c",
        "relative/d": tmp_path / "relative" / "d",
        (tmp_path / "with space").as_uri(): tmp_path / "with space",  # percent-encoded in the URI
    }
    for uri, root in cases.items():
        opened = open_store(uri)
        assert isinstance(opened, LocalStore), uri
        assert opened.root == root, uri


def test_open_store_picks_s3_for_s3_uris_with_bucket_prefix_and_endpoint() -> None:
    opened = open_store("s3://models/kubetune/runs/", endpoint="http://minio:9000", region="eu-west-1", path_style=True)
    assert isinstance(opened, S3Store)
    assert (opened.bucket, opened.prefix) == ("models", "kubetune/runs")
    assert opened.uri_for("default/demo/x") == "s3://models/kubetune/runs/default/demo/x"
    assert opened.client.meta.region_name == "eu-west-1"
    assert opened.client.meta.endpoint_url == "http://minio:9000"
    assert opened.client.meta.config.s3 == {"addressing_style": "path"}
    bare = open_store("s3://models")
    assert isinstance(bare, S3Store)
    assert bare.uri_for("k") == "s3://models/k"


@pytest.mark.parametrize(
    ("uri", "options", "message"),
    [
        ("", {}, "empty store URI"),
        ("gs://bucket/prefix", {}, "unsupported store URI scheme 'gs'"),
        ("https://example.com/x", {}, "unsupported store URI scheme 'https'"),
        ("hf://org/model", {}, "unsupported store URI scheme 'hf'"),
        ("s3:///prefix-without-bucket", {}, "needs a bucket"),
        ("s3://bucket//double", {}, "must be relative"),
        ("s3://bucket/../up", {}, "'..' segment"),
        ("s3://bucket/p?versionId=1", {}, "query or fragment"),
        ("s3://bucket/p", {"endpoint": "minio:9000"}, "http(s) URL"),
        ("file://relative/dir", {}, "absolute path"),
        ("file:///tmp/x", {"endpoint": "http://minio:9000"}, "S3 endpoint"),
        ("/tmp/x", {"endpoint": "http://minio:9000"}, "S3 endpoint"),
    ],
)
def test_open_store_rejects_what_it_cannot_open(uri: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        open_store(uri, **options)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "options",
    [
        {"multipart_chunksize": 5 * 1024 * 1024 - 1},
        {"multipart_chunksize": 6 * 1024**3},
        {"multipart_threshold": 0},
        {"max_concurrency": 0},
        {"max_attempts": 0},
        {"transfer_attempts": 0},
        {"retry_mode": "legacy"},
    ],
)
def test_s3_settings_reject_values_s3_or_botocore_would_refuse(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        S3Settings(**options)


# -- atomic publication --------------------------------------------------------------------------------------------


class RecordingStore(LocalStore):
    """A real local store that also notes the order of writes and deletes, to check what publish does first."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.events: list[tuple[str, str]] = []

    def put_files(self, uploads: Sequence[Upload]) -> None:
        self.events.extend(("put", upload.key) for upload in uploads)
        super().put_files(uploads)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.events.append(("put", key))
        super().put_bytes(key, data)

    def delete(self, key: str) -> None:
        self.events.append(("delete", key))
        super().delete(key)


OUTPUT_FILES = {
    "adapter/adapter_model.safetensors": os.urandom(2 * 1024 * 1024 + 3),
    "adapter/adapter_config.json": b'{"r": 8}',
    "train_log.jsonl": b'{"step": 1}\n',
}


def test_publish_uploads_every_file_then_writes_the_manifest_last(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "store")
    outputs = write_tree(tmp_path / "outputs", OUTPUT_FILES)
    manifest = publish(store, "ns/run/train/0123", outputs, stage="train", input_key=INPUT_KEY, metadata={"loss": 0.5})

    manifest_key = f"ns/run/train/0123/{MANIFEST_NAME}"
    assert store.events[0] == ("delete", manifest_key)  # a stale manifest is withdrawn before files change
    assert store.events[-1] == ("put", manifest_key)
    assert sorted(key for _, key in store.events[1:-1]) == sorted(f"ns/run/train/0123/{p}" for p in OUTPUT_FILES)

    assert [(f.path, f.size, f.sha256) for f in manifest.files] == [
        (path, len(data), sha256_of(data)) for path, data in sorted(OUTPUT_FILES.items())
    ]
    assert (manifest.stage, manifest.input_key, manifest.metadata, manifest.schema) == (
        "train",
        INPUT_KEY,
        {"loss": 0.5},
        1,
    )
    assert read_manifest(store, "ns/run/train/0123") == manifest


def test_manifest_json_has_the_contract_shape_in_canonical_form(store: LocalStore, tmp_path: Path) -> None:
    outputs = write_tree(tmp_path / "outputs", {"b.txt": b"b", "a.txt": b"a"})
    manifest = publish(store, "p", outputs, stage="dataset", input_key=INPUT_KEY, metadata={"z": 1, "a": ["é"]})
    stored = store.get_bytes(f"p/{MANIFEST_NAME}")

    document = json.loads(stored)
    assert list(document) == ["createdAt", "files", "inputKey", "metadata", "schema", "stage"]  # sorted keys
    assert document["schema"] == 1
    assert document["stage"] == "dataset"
    assert document["inputKey"] == INPUT_KEY
    assert document["createdAt"].endswith("Z")
    assert document["files"] == [
        {"path": "a.txt", "size": 1, "sha256": sha256_of(b"a")},
        {"path": "b.txt", "size": 1, "sha256": sha256_of(b"b")},
    ]
    assert document["metadata"] == {"z": 1, "a": ["é"]}
    assert stored == json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")
    assert manifest_digest(manifest) == sha256_of(stored)


def test_the_digest_changes_with_content_and_survives_a_read_back(store: LocalStore, tmp_path: Path) -> None:
    first = publish(store, "one", write_tree(tmp_path / "1", {"f": b"1"}), stage="merge", input_key=INPUT_KEY)
    second = publish(store, "two", write_tree(tmp_path / "2", {"f": b"2"}), stage="merge", input_key=INPUT_KEY)
    assert manifest_digest(first) != manifest_digest(second)
    assert manifest_digest(read_manifest(store, "one") or second) == manifest_digest(first)


def test_fetch_downloads_every_listed_file_verified(store: LocalStore, tmp_path: Path) -> None:
    outputs = write_tree(tmp_path / "outputs", OUTPUT_FILES)
    published = publish(store, "ns/run/train/0123", outputs, stage="train", input_key=INPUT_KEY)
    store.put_bytes("ns/run/train/0123/progress.json", b"{}")  # beside the outputs, not part of them

    fetched = fetch(store, "ns/run/train/0123", tmp_path / "dest")
    assert fetched == published
    assert sorted(
        p.relative_to(tmp_path / "dest").as_posix() for p in (tmp_path / "dest").rglob("*") if p.is_file()
    ) == sorted(OUTPUT_FILES)
    for relative, data in OUTPUT_FILES.items():
        assert (tmp_path / "dest" / relative).read_bytes() == data


def test_fetch_refuses_a_file_changed_after_publication(store: LocalStore, tmp_path: Path) -> None:
    publish(store, "out", write_tree(tmp_path / "outputs", OUTPUT_FILES), stage="train", input_key=INPUT_KEY)
    store.put_bytes("out/adapter/adapter_config.json", b'{"r": 64}')
    with pytest.raises(IntegrityError, match="adapter_config.json"):
        fetch(store, "out", tmp_path / "dest")
    assert not (tmp_path / "dest" / "adapter" / "adapter_config.json").exists()


def test_output_is_absent_until_the_manifest_is_written(store: LocalStore, tmp_path: Path) -> None:
    # What a publish that died after uploading its files leaves: the files, no manifest.
    store.put_dir("out", write_tree(tmp_path / "outputs", OUTPUT_FILES))
    assert read_manifest(store, "out") is None
    with pytest.raises(ObjectNotFoundError, match=MANIFEST_NAME):
        fetch(store, "out", tmp_path / "dest")


def test_republishing_replaces_the_manifest(store: LocalStore, tmp_path: Path) -> None:
    publish(store, "out", write_tree(tmp_path / "1", {"w.bin": b"old"}), stage="train", input_key=INPUT_KEY)
    second = publish(store, "out", write_tree(tmp_path / "2", {"w.bin": b"new"}), stage="train", input_key=INPUT_KEY)
    assert read_manifest(store, "out") == second
    fetch(store, "out", tmp_path / "dest")
    assert (tmp_path / "dest" / "w.bin").read_bytes() == b"new"


@pytest.mark.parametrize(
    ("setup", "kwargs", "error", "message"),
    [
        ({MANIFEST_NAME: b"{}"}, {}, ValueError, "clash"),
        ({"f": b"x"}, {"input_key": "not-a-sha256"}, ValueError, "inputKey"),
        ({"f": b"x"}, {"input_key": "AB" * 32}, ValueError, "lowercase"),
        ({"f": b"x"}, {"stage": ""}, ValueError, "stage"),
        ({"f": b"x"}, {"metadata": {"when": object()}}, TypeError, "not JSON serializable"),
        ({"f": b"x"}, {"metadata": {"loss": float("nan")}}, ValueError, "not JSON compliant"),
    ],
)
def test_publish_rejects_bad_input_before_uploading_anything(
    store: LocalStore, tmp_path: Path, setup: dict[str, bytes], kwargs: dict[str, Any], error: type, message: str
) -> None:
    outputs = write_tree(tmp_path / "outputs", setup)
    with pytest.raises(error, match=message):
        publish(store, "out", outputs, **{"stage": "train", "input_key": INPUT_KEY, **kwargs})
    assert store.list() == []


def valid_document() -> dict[str, Any]:
    return {
        "schema": 1,
        "stage": "train",
        "inputKey": INPUT_KEY,
        "createdAt": "2025-01-02T03:04:05Z",
        "files": [{"path": "a/b.bin", "size": 3, "sha256": "cd" * 32}],
        "metadata": {},
    }


def canonical(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def with_change(change: Callable[[dict[str, Any]], Any]) -> bytes:
    document = valid_document()
    change(document)
    return canonical(document)


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        (b"not json", "Expecting value"),
        (b"\xff\xfe", "invalid manifest"),
        (canonical([1, 2]), "JSON object"),
        (with_change(lambda d: d.update(schema=2)), "unsupported manifest schema 2"),
        (with_change(lambda d: d.update(schema=True)), "unsupported manifest schema True"),
        (with_change(lambda d: d.pop("files")), "missing ['files']"),
        (with_change(lambda d: d.update(extra=1)), "unknown ['extra']"),
        (with_change(lambda d: d.update(inputKey="xyz")), "inputKey"),
        (with_change(lambda d: d.update(createdAt="yesterday")), "RFC 3339"),
        (with_change(lambda d: d.update(createdAt="2025-01-02T03:04:05")), "time zone"),
        (with_change(lambda d: d.update(metadata=[])), "metadata"),
        (with_change(lambda d: d["files"][0].update(path="../escape")), "'..' segment"),
        (with_change(lambda d: d["files"][0].update(path=MANIFEST_NAME)), "its own"),
        (with_change(lambda d: d["files"][0].update(size=-1)), "non-negative"),
        (with_change(lambda d: d["files"][0].update(size="3")), "non-negative"),
        (with_change(lambda d: d["files"][0].update(sha256="CD" * 32)), "lowercase hex"),
        (with_change(lambda d: d["files"][0].pop("sha256")), "needs exactly"),
        (with_change(lambda d: d["files"].append(dict(d["files"][0]))), "more than once"),
        (json.dumps(valid_document(), indent=2).encode(), "canonical"),
    ],
)
def test_read_manifest_rejects_an_invalid_manifest_clearly(store: LocalStore, stored: bytes, message: str) -> None:
    store.put_bytes(f"out/{MANIFEST_NAME}", stored)
    with pytest.raises(ManifestError, match="manifest") as raised:
        read_manifest(store, "out")
    assert message in str(raised.value)


def test_a_valid_hand_written_canonical_manifest_parses(store: LocalStore) -> None:
    store.put_bytes(f"out/{MANIFEST_NAME}", canonical(valid_document()))
    manifest = read_manifest(store, "out")
    assert isinstance(manifest, Manifest)
    assert manifest.to_json() == valid_document()
