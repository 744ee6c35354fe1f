"""The S3 store against a real S3 server (SeaweedFS), directly and through a fault-injecting proxy."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.store import (
    MANIFEST_NAME,
    IntegrityError,
    ObjectInfo,
    ObjectNotFoundError,
    S3Settings,
    S3Store,
    StoreUnavailableError,
    fetch,
    manifest_digest,
    open_store,
    publish,
    read_manifest,
)
from kubetune.store.keys import TEMP_MARKER
from tests.fixtures.s3 import FaultPlan, FaultProxy, S3Server

pytest_plugins = ["tests.fixtures.s3"]
pytestmark = pytest.mark.integration

MiB = 1024 * 1024
INPUT_KEY = "ef" * 32
# Small parts so a 12 MiB file goes up and down in three 5 MiB (S3's minimum) parts; quick backoff between our
# whole-transfer retries keeps fault tests fast.
SMALL_PARTS = {"multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB, "max_concurrency": 4}
FAST_RETRIES = {"retry_backoff_s": 0.05}

StoreFactory = Callable[..., S3Store]


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def big_payload() -> bytes:
    return os.urandom(12 * MiB + 12345)


@pytest.fixture
def open_s3(s3_bucket: str, s3_server: S3Server) -> StoreFactory:
    """Opens an S3 store on this test's bucket under ``runs/``; straight to SeaweedFS unless given another endpoint."""

    def opener(endpoint: str | None = None, **settings: Any) -> S3Store:
        store = open_store(
            f"s3://{s3_bucket}/runs",
            endpoint=endpoint or s3_server.endpoint,
            region="us-east-1",
            path_style=True,
            s3_settings=S3Settings(**{**SMALL_PARTS, **FAST_RETRIES, **settings}),
        )
        assert isinstance(store, S3Store)
        return store

    return opener


@pytest.fixture
def store(open_s3: StoreFactory) -> S3Store:
    return open_s3()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if TEMP_MARKER in path.name]


def small_files(count: int) -> dict[str, bytes]:
    return {f"shard-{index:02d}/part.bin": os.urandom(1000 + index) for index in range(count)}


# -- objects and folders -------------------------------------------------------------------------------------------


def test_objects_live_under_the_store_prefix_in_the_bucket(store: S3Store, s3_bucket: str, s3_server: S3Server) -> None:
    store.put_bytes("ns/run/progress.json", b'{"phase": "Running"}')
    raw = s3_server.client().get_object(Bucket=s3_bucket, Key="runs/ns/run/progress.json")
    assert raw["Body"].read() == b'{"phase": "Running"}'
    assert store.get_bytes("ns/run/progress.json") == b'{"phase": "Running"}'
    assert store.uri_for("ns/run/progress.json") == f"s3://{s3_bucket}/runs/ns/run/progress.json"


def test_exists_delete_and_missing_keys(store: S3Store, tmp_path: Path) -> None:
    store.put_bytes("a/b", b"x")
    assert store.exists("a/b")
    assert not store.exists("a")  # a folder is not an object
    store.delete("a/b")
    store.delete("a/b")  # idempotent, like S3 itself
    assert not store.exists("a/b")
    with pytest.raises(ObjectNotFoundError, match=r"s3://.*/runs/a/b"):
        store.get_bytes("a/b")
    with pytest.raises(ObjectNotFoundError):
        store.get_file("a/b", tmp_path / "b")
    assert not (tmp_path / "b").exists()
    assert leftovers(tmp_path) == []


def test_list_is_recursive_sorted_with_sizes_and_folder_scoped(
    store: S3Store, s3_bucket: str, s3_server: S3Server
) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="outside-the-prefix", Body=b"not ours")
    for key, data in {"b/2": b"22", "a/bc/1": b"1", "a/b/z": b"zzz", "a/b/y/x": b""}.items():
        store.put_bytes(key, data)
    assert store.list() == [
        ObjectInfo("a/b/y/x", 0),
        ObjectInfo("a/b/z", 3),
        ObjectInfo("a/bc/1", 1),
        ObjectInfo("b/2", 2),
    ]
    assert [info.key for info in store.list("a/b")] == ["a/b/y/x", "a/b/z"]
    assert store.list("absent") == []


def test_delete_prefix_removes_only_that_folder(store: S3Store) -> None:
    for key in ("run/train/1", "run/train/sub/2", "run/trainer/3", "run/merge/4"):
        store.put_bytes(key, b"x")
    store.delete_prefix("run/train")
    assert [info.key for info in store.list()] == ["run/merge/4", "run/trainer/3"]
    with pytest.raises(ValueError, match="whole store"):
        store.delete_prefix("")


def test_folders_round_trip(store: S3Store, tmp_path: Path) -> None:
    files = {"config.json": b"{}", "adapter/model.safetensors": os.urandom(70_000), **small_files(12)}
    uploaded = store.put_dir("ns/run/merge/k", write_tree(tmp_path / "up", files))
    assert sorted(info.key for info in uploaded) == sorted(f"ns/run/merge/k/{p}" for p in files)
    assert store.list("ns/run/merge/k") == sorted(uploaded)

    store.get_dir("ns/run/merge/k", tmp_path / "down")
    for relative, data in files.items():
        assert (tmp_path / "down" / relative).read_bytes() == data
    assert leftovers(tmp_path) == []


def test_a_file_larger_than_the_part_size_goes_up_and_down_in_parts(
    store: S3Store, s3_bucket: str, s3_server: S3Server, tmp_path: Path, big_payload: bytes
) -> None:
    source = tmp_path / "model.gguf"
    source.write_bytes(big_payload)
    store.put_file("big/model.gguf", source)

    head = s3_server.client().head_object(Bucket=s3_bucket, Key="runs/big/model.gguf")
    assert head["ContentLength"] == len(big_payload)
    assert head["ETag"].strip('"').endswith("-3")  # S3's multipart ETag: three parts of 5, 5 and 2 MiB

    target = tmp_path / "copy" / "model.gguf"
    store.get_file("big/model.gguf", target, sha256=sha256_of(big_payload))
    assert target.read_bytes() == big_payload
    assert leftovers(tmp_path) == []


def test_a_tampered_object_fails_sha256_verification_and_leaves_no_file(
    store: S3Store, s3_bucket: str, s3_server: S3Server, tmp_path: Path, big_payload: bytes
) -> None:
    store.put_bytes("w/small.bin", b"original")
    (tmp_path / "big.bin").write_bytes(big_payload)
    store.put_file("w/big.bin", tmp_path / "big.bin")
    raw = s3_server.client()
    raw.put_object(Bucket=s3_bucket, Key="runs/w/small.bin", Body=b"tampered")
    raw.put_object(Bucket=s3_bucket, Key="runs/w/big.bin", Body=big_payload[:-1] + b"\x00")

    for key, expected in (("w/small.bin", sha256_of(b"original")), ("w/big.bin", sha256_of(big_payload))):
        target = tmp_path / "dest" / key
        with pytest.raises(IntegrityError, match="sha256 mismatch"):
            store.get_file(key, target, sha256=expected)
        assert not target.exists()
    assert leftovers(tmp_path) == []


# -- atomic publication --------------------------------------------------------------------------------------------


def test_publish_read_manifest_fetch_round_trip(
    store: S3Store, s3_bucket: str, s3_server: S3Server, tmp_path: Path, big_payload: bytes
) -> None:
    files = {"model/weights.bin": big_payload, "tokenizer.json": b'{"v": 1}', **small_files(5)}
    outputs = write_tree(tmp_path / "outputs", files)
    prefix = "default/demo/merge/0123456789abcdef"
    published = publish(store, prefix, outputs, stage="merge", input_key=INPUT_KEY, metadata={"dtype": "bf16"})

    manifest = read_manifest(store, prefix)
    assert manifest == published
    stored = s3_server.client().get_object(Bucket=s3_bucket, Key=f"runs/{prefix}/{MANIFEST_NAME}")["Body"].read()
    assert manifest_digest(manifest) == sha256_of(stored)

    fetched = fetch(store, prefix, tmp_path / "dest")
    assert fetched == published
    for relative, data in files.items():
        assert (tmp_path / "dest" / relative).read_bytes() == data


def test_an_output_is_absent_until_its_manifest_is_written(
    open_s3: StoreFactory, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    # The job dies exactly when it writes manifest.json: every PUT of it fails, and nothing retries for long.
    fault_proxy.set_plan(FaultPlan(error_rate=1.0, methods=frozenset({"PUT"}), path_contains=MANIFEST_NAME))
    dying = open_s3(fault_proxy.endpoint, max_attempts=2, transfer_attempts=1)
    files = small_files(4)
    with pytest.raises(StoreUnavailableError, match="InternalError"):
        publish(dying, "out", write_tree(tmp_path / "outputs", files), stage="train", input_key=INPUT_KEY)
    assert fault_proxy.injected["error"] == 2

    reader = open_s3()
    assert sorted(info.key for info in reader.list("out")) == sorted(f"out/{p}" for p in files)  # files are there
    assert read_manifest(reader, "out") is None  # ... but the output is not
    with pytest.raises(ObjectNotFoundError):
        fetch(reader, "out", tmp_path / "dest")


# -- addressing ----------------------------------------------------------------------------------------------------


def test_path_style_addressing_with_a_custom_endpoint(
    open_s3: StoreFactory, fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    endpoint = f"http://localhost:{fault_proxy.port}"
    store = open_s3(endpoint)
    store.put_bytes("k/v.txt", b"path style")
    assert store.get_bytes("k/v.txt") == b"path style"
    assert store.list("k") == [ObjectInfo("k/v.txt", 10)]
    assert fault_proxy.requests, "requests should have gone through the proxy"
    assert all(request.path.startswith(f"/{s3_bucket}") for request in fault_proxy.requests)


def test_virtual_host_addressing_is_botocores_default_and_path_style_overrides_it(s3_credentials: None) -> None:
    # Presigned URLs show the addressing without sending anything. Without path_style, botocore's "auto" applies:
    # virtual-host style on AWS, path style on custom endpoints (MinIO, Ceph and R2 accept it).
    def presigned(endpoint: str | None, path_style: bool) -> str:
        opened = open_store("s3://my-bucket/runs", endpoint=endpoint, region="us-east-1", path_style=path_style)
        assert isinstance(opened, S3Store)
        url: str = opened.client.generate_presigned_url("get_object", Params={"Bucket": "my-bucket", "Key": "runs/x"})
        return url.split("?")[0]

    assert presigned(None, False) == "https://my-bucket.s3.amazonaws.com/runs/x"
    assert presigned(None, True) == "https://s3.amazonaws.com/my-bucket/runs/x"
    assert presigned("http://minio:9000", True) == "http://minio:9000/my-bucket/runs/x"


# -- retries through injected faults -------------------------------------------------------------------------------


def upload_and_download_everything(store: S3Store, tmp_path: Path, big_payload: bytes) -> None:
    """A workload of ~40 requests: a multipart upload/download plus a folder of small files, all verified."""
    files = {"model.gguf": big_payload, **small_files(10)}
    outputs = write_tree(tmp_path / "outputs", files)
    publish(store, "out", outputs, stage="convert", input_key=INPUT_KEY)
    fetch(store, "out", tmp_path / "dest")
    for relative, data in files.items():
        assert (tmp_path / "dest" / relative).read_bytes() == data
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("plan", "expected_faults"),
    [
        (FaultPlan(error_rate=0.15, slowdown_rate=0.15, max_faults=8), {"error", "slowdown"}),
        (FaultPlan(reset_rate=0.2, max_faults=8), {"reset"}),
        (FaultPlan(reset_mid_body_rate=0.3, max_faults=8), {"reset_mid_body"}),
        (FaultPlan(delay_rate=0.3, delay_s=0.1), {"delay"}),
    ],
    ids=["5xx-and-slowdown", "connection-resets", "downloads-cut-off", "slow-responses"],
)
def test_transfers_retry_through_injected_faults_to_a_correct_result(
    open_s3: StoreFactory,
    fault_proxy: FaultProxy,
    tmp_path: Path,
    big_payload: bytes,
    plan: FaultPlan,
    expected_faults: set[str],
) -> None:
    fault_proxy.set_plan(plan)
    upload_and_download_everything(open_s3(fault_proxy.endpoint), tmp_path, big_payload)
    # Which request draws which fault depends on thread timing; the exact kinds are pinned by the fail_next tests.
    assert set(fault_proxy.injected) <= expected_faults, fault_proxy.injected
    assert sum(fault_proxy.injected.values()) >= 3, fault_proxy.injected


def test_adaptive_retry_mode_backs_off_through_slowdown(
    open_s3: StoreFactory, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    # Adaptive mode also slows the client's own send rate after throttling, so keep this workload light.
    fault_proxy.set_plan(FaultPlan(slowdown_rate=0.5, max_faults=3))
    store = open_s3(fault_proxy.endpoint, retry_mode="adaptive")
    files = small_files(6)
    store.put_dir("out", write_tree(tmp_path / "up", files))
    store.get_dir("out", tmp_path / "down")
    for relative, data in files.items():
        assert (tmp_path / "down" / relative).read_bytes() == data
    assert fault_proxy.injected["slowdown"] == 3


@pytest.mark.parametrize("kind", ["reset", "error", "slowdown"])
def test_whole_transfers_are_retried_when_request_retries_are_exhausted(
    open_s3: StoreFactory, fault_proxy: FaultProxy, tmp_path: Path, big_payload: bytes, kind: Any
) -> None:
    # botocore gets a single attempt per request here, so only the store's own retry can recover.
    store = open_s3(fault_proxy.endpoint, max_attempts=1, transfer_attempts=3)
    source = tmp_path / "model.gguf"
    source.write_bytes(big_payload)

    fault_proxy.fail_next(kind, 2)
    store.put_file("m/model.gguf", source)
    fault_proxy.fail_next(kind, 2)
    store.get_file("m/model.gguf", tmp_path / "copy.gguf", sha256=sha256_of(big_payload))
    fault_proxy.fail_next(kind, 2)
    assert store.get_bytes("m/model.gguf") == big_payload

    assert (tmp_path / "copy.gguf").read_bytes() == big_payload
    assert fault_proxy.injected[kind] == 6


def test_downloads_cut_off_mid_body_are_read_again(
    open_s3: StoreFactory, fault_proxy: FaultProxy, tmp_path: Path, big_payload: bytes
) -> None:
    store = open_s3(fault_proxy.endpoint, max_attempts=1, transfer_attempts=3)
    (tmp_path / "model.gguf").write_bytes(big_payload)
    store.put_file("m/model.gguf", tmp_path / "model.gguf")

    fault_proxy.fail_next("reset_mid_body", 2)  # ranged part GETs: s3transfer reads those parts again
    store.get_file("m/model.gguf", tmp_path / "copy.gguf", sha256=sha256_of(big_payload))
    fault_proxy.fail_next("reset_mid_body", 2)  # a whole-body read in our code: only the store's retry helps
    assert store.get_bytes("m/model.gguf") == big_payload

    assert (tmp_path / "copy.gguf").read_bytes() == big_payload
    assert (fault_proxy.injected["reset_mid_body"], fault_proxy.pending) == (4, 0)


def test_an_error_answer_cut_off_mid_body_is_read_again(open_s3: StoreFactory, fault_proxy: FaultProxy) -> None:
    # botocore reads an error's body itself and lets urllib3's ProtocolError out unwrapped: still a transient fault.
    store = open_s3(fault_proxy.endpoint, max_attempts=1, transfer_attempts=3)
    fault_proxy.fail_next("reset_mid_body", 2)  # the 404 NoSuchKey answers of a manifest not published yet
    assert read_manifest(store, "not/yet") is None
    assert (fault_proxy.injected["reset_mid_body"], fault_proxy.pending) == (2, 0)


def test_without_whole_transfer_retries_the_same_fault_is_fatal(open_s3: StoreFactory, fault_proxy: FaultProxy) -> None:
    store = open_s3(fault_proxy.endpoint, max_attempts=1, transfer_attempts=1)
    fault_proxy.fail_next("reset")
    with pytest.raises(StoreUnavailableError, match="(?i)connection"):
        store.put_bytes("k", b"v")


def test_a_read_timeout_on_a_slow_response_is_retried(open_s3: StoreFactory, fault_proxy: FaultProxy) -> None:
    store = open_s3(fault_proxy.endpoint, read_timeout_s=0.5)
    fault_proxy.set_plan(FaultPlan(delay_s=1.5))
    fault_proxy.fail_next("delay", 2)
    store.put_bytes("slow/key", b"eventually")
    assert store.get_bytes("slow/key") == b"eventually"
    assert fault_proxy.injected["delay"] == 2


def test_integrity_failures_are_not_retried(
    store: S3Store, open_s3: StoreFactory, fault_proxy: FaultProxy, s3_bucket: str, s3_server: S3Server,
    tmp_path: Path,
) -> None:  # fmt: skip
    s3_server.client().put_object(Bucket=s3_bucket, Key="runs/t/x.bin", Body=b"tampered")
    proxied = open_s3(fault_proxy.endpoint)
    with pytest.raises(IntegrityError):
        proxied.get_file("t/x.bin", tmp_path / "x.bin", sha256=sha256_of(b"original"))
    object_reads = [r for r in fault_proxy.requests if r.method == "GET" and r.path.endswith("/t/x.bin")]
    assert len(object_reads) == 1
