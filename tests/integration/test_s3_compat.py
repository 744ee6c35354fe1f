"""The S3 store works the same on two independent S3 implementations: SeaweedFS (``weed mini``) and rclone's
``serve s3`` over a local folder. Where the servers differ, the test pins each one's behaviour and says why the store
does not depend on it (docs/contracts.md, "S3 servers")."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest

from kubetune.store import (
    MANIFEST_NAME,
    BucketNotFoundError,
    ObjectInfo,
    S3Settings,
    S3Store,
    StoreCredentialsError,
    fetch,
    publish,
    read_manifest,
)
from tests.fixtures.s3 import REGION, FaultProxy, S3Server, new_bucket, proxy_to

pytest_plugins = ["tests.fixtures.s3"]
pytestmark = pytest.mark.integration

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part
SETTINGS = S3Settings(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=4, retry_backoff_s=0.05)
SERVERS = {"seaweedfs": "s3_server", "rclone": "rclone_s3_server"}


@pytest.fixture(params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> S3Server:
    found: S3Server = request.getfixturevalue(SERVERS[request.param])
    return found


@pytest.fixture
def bucket(server: S3Server, s3_credentials: None) -> str:
    return new_bucket(server)


@pytest.fixture
def proxy(server: S3Server) -> Iterator[FaultProxy]:
    with proxy_to(server) as opened:
        yield opened


def open_s3(bucket: str, endpoint: str) -> S3Store:
    return S3Store(bucket, "runs", endpoint=endpoint, region=REGION, path_style=True, settings=SETTINGS)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def multipart_etag(data: bytes, part_size: int) -> str:
    """S3's ETag for a multipart upload: the MD5 of the parts' binary MD5s, a dash, the part count."""
    parts = [data[start : start + part_size] for start in range(0, len(data), part_size)]
    joined = b"".join(hashlib.md5(part, usedforsecurity=False).digest() for part in parts)
    return f"{md5(joined)}-{len(parts)}"


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_requests_name_the_bucket_in_the_path_and_signatures_hold_for_a_custom_host(
    bucket: str, proxy: FaultProxy
) -> None:
    # localhost (not 127.0.0.1) in the endpoint: the Host header the client signs is what the server must check.
    store = open_s3(bucket, f"http://localhost:{proxy.port}")
    store.put_bytes("k/v.txt", b"path style")
    assert store.get_bytes("k/v.txt") == b"path style"
    assert store.list("k") == [ObjectInfo("k/v.txt", 10)]
    assert store.exists("k/v.txt") and not store.exists("k/absent")
    assert len(proxy.requests) >= 4
    assert all(request.path.startswith(f"/{bucket}/") or request.path.startswith(f"/{bucket}?")
               for request in proxy.requests)  # fmt: skip


def test_a_single_put_has_the_md5_of_its_content_as_etag(server: S3Server, bucket: str) -> None:
    store = open_s3(bucket, server.endpoint)
    store.put_bytes("one/part", b"single put")
    head = server.client().head_object(Bucket=bucket, Key="runs/one/part")
    assert head["ETag"].strip('"') == md5(b"single put")


# The multipart ETag: SeaweedFS follows AWS; rclone serve s3 answers the whole object's MD5 (it streams the parts
# into one file and hashes that). The store verifies content by sha256 from the manifest, never by ETag.
MULTIPART_ETAG_IS_AWS_FORM = {"seaweedfs": True, "rclone": False}


def test_a_file_over_the_threshold_goes_up_in_parts_and_comes_back_whole(
    server: S3Server, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(2 * PART + 4321)
    source = tmp_path / "model.gguf"
    source.write_bytes(data)
    store = open_s3(bucket, server.endpoint)
    store.put_file("big/model.gguf", source)

    head = server.client().head_object(Bucket=bucket, Key="runs/big/model.gguf")
    assert head["ContentLength"] == len(data)
    expected = multipart_etag(data, PART) if MULTIPART_ETAG_IS_AWS_FORM[server.name] else md5(data)
    assert head["ETag"].strip('"') == expected
    store.get_file("big/model.gguf", tmp_path / "copy.gguf", sha256=hashlib.sha256(data).hexdigest())
    assert (tmp_path / "copy.gguf").read_bytes() == data


def test_listing_is_recursive_folder_scoped_sorted_and_pages_past_a_thousand_keys(
    server: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = open_s3(bucket, server.endpoint)
    many = {f"shard-{index // 100:02d}/{index:05d}.json": b"{}" for index in range(1001)}
    store.put_dir("many", write_tree(tmp_path / "many", many))
    for key in ("a/b/1", "a/bc/2", "a/b/c/3"):
        store.put_bytes(key, key.encode())

    listed = store.list("many")  # ListObjectsV2 answers at most 1000 keys a page
    assert [info.key for info in listed] == sorted(f"many/{relative}" for relative in many)
    assert [info.key for info in store.list("a/b")] == ["a/b/1", "a/b/c/3"]  # not a/bc
    assert store.list("absent") == []

    store.delete_prefix("many")  # DeleteObjects takes 1000 keys a call: two calls
    assert [info.key for info in store.list()] == ["a/b/1", "a/b/c/3", "a/bc/2"]


def test_publish_writes_every_file_before_the_manifest_and_fetch_verifies_them(
    bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    files = {"weights.bin": os.urandom(PART + 10), "config.json": b"{}", "tok/tokenizer.json": b'{"v": 1}'}
    store = open_s3(bucket, proxy.endpoint)
    published = publish(store, "out", write_tree(tmp_path / "outputs", files), stage="merge", input_key="ab" * 32)

    writes = [request for request in proxy.requests if request.method in ("PUT", "POST")]
    assert writes[-1].path.split("?")[0].endswith(f"/out/{MANIFEST_NAME}")
    assert sum(MANIFEST_NAME in request.path for request in writes) == 1
    assert read_manifest(store, "out") == published
    assert fetch(store, "out", tmp_path / "dest") == published
    for relative, data in files.items():
        assert (tmp_path / "dest" / relative).read_bytes() == data


def test_unicode_and_punctuation_in_keys_round_trip(server: S3Server, bucket: str, tmp_path: Path) -> None:
    store = open_s3(bucket, server.endpoint)
    keys = ["ünï/日本語 file.txt", "sp ace/a&b=c;d,e", "plus+sign/100%.bin", "emoji/🙂.json", "tilde~/(paren)[x]"]
    for index, key in enumerate(keys):
        store.put_bytes(key, f"value {index}".encode())
    assert [info.key for info in store.list()] == sorted(keys)
    for index, key in enumerate(keys):
        assert store.get_bytes(key) == f"value {index}".encode()
    store.get_dir("ünï", tmp_path / "down")
    assert (tmp_path / "down" / "日本語 file.txt").read_bytes() == b"value 0"


def test_overwriting_a_key_replaces_its_content_size_and_etag(server: S3Server, bucket: str) -> None:
    store = open_s3(bucket, server.endpoint)
    store.put_bytes("k", b"first version")
    store.put_bytes("k", b"second")
    assert store.get_bytes("k") == b"second"
    assert store.list() == [ObjectInfo("k", 6)]
    assert server.client().head_object(Bucket=bucket, Key="runs/k")["ETag"].strip('"') == md5(b"second")


# Conditional create (If-None-Match: *): SeaweedFS refuses to overwrite, rclone serve s3 ignores the header. The
# store never relies on it: publication is ordered (manifest last), not conditional.
HONOURS_IF_NONE_MATCH = {"seaweedfs": True, "rclone": False}


def test_a_conditional_create_is_honoured_by_seaweedfs_and_ignored_by_rclone(server: S3Server, bucket: str) -> None:
    client = server.client()
    client.put_object(Bucket=bucket, Key="runs/once", Body=b"first")
    if HONOURS_IF_NONE_MATCH[server.name]:
        with pytest.raises(botocore.exceptions.ClientError, match="PreconditionFailed"):
            client.put_object(Bucket=bucket, Key="runs/once", Body=b"second", IfNoneMatch="*")
        assert client.get_object(Bucket=bucket, Key="runs/once")["Body"].read() == b"first"
    else:
        client.put_object(Bucket=bucket, Key="runs/once", Body=b"second", IfNoneMatch="*")
        assert client.get_object(Bucket=bucket, Key="runs/once")["Body"].read() == b"second"


# rclone keeps objects as files, so a key cannot also be a folder of other keys (it answers 500). SeaweedFS, like
# AWS, keeps both. Store layouts never do this: a stage's files sit below its prefix, its manifest beside them.
KEY_CAN_ALSO_BE_A_FOLDER = {"seaweedfs": True, "rclone": False}


def test_a_key_that_is_also_a_folder_works_on_seaweedfs_only(server: S3Server, bucket: str) -> None:
    client = server.client()
    client.put_object(Bucket=bucket, Key="runs/x", Body=b"object")
    if KEY_CAN_ALSO_BE_A_FOLDER[server.name]:
        client.put_object(Bucket=bucket, Key="runs/x/y", Body=b"inside")
        assert [item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]] == ["runs/x", "runs/x/y"]
    else:
        with pytest.raises(botocore.exceptions.ClientError, match="InternalError"):
            client.put_object(Bucket=bucket, Key="runs/x/y", Body=b"inside")


def test_wrong_keys_and_a_missing_bucket_are_the_same_typed_errors_on_both(
    server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BucketNotFoundError, match="no bucket 'kt-missing-bucket'"):
        open_s3("kt-missing-bucket", server.endpoint).list()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StoreCredentialsError, match="SignatureDoesNotMatch"):
        open_s3(bucket, server.endpoint).put_bytes("k", b"v")
