"""What the S3 store says when it cannot work, against a real server (SeaweedFS checks signatures and permissions):
one typed StoreError per cause, one line naming the URI, the endpoint and what to check, never botocore's own
exception (that stays on ``__cause__``), and no long waits for a server that is not there."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.store import (
    BucketNotFoundError,
    S3Settings,
    S3Store,
    StoreAccessDeniedError,
    StoreCredentialsError,
    StoreError,
    StoreUnavailableError,
    StoreUnreachableError,
)
from tests.fixtures.s3 import (
    FAKE_SECRET_KEY,
    READ_ONLY_ACCESS_KEY,
    READ_ONLY_SECRET_KEY,
    REGION,
    FaultProxy,
    S3Server,
    free_port,
)

pytest_plugins = ["tests.fixtures.s3"]
pytestmark = pytest.mark.integration

MiB = 1024 * 1024
# Parts as small as S3 allows, so the multipart path is taken; no long backoff between the store's retries.
SETTINGS = S3Settings(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, retry_backoff_s=0.05)

Operation = Callable[[S3Store, Path], object]


def put_small(store: S3Store, tmp_path: Path) -> object:
    store.put_bytes("k/small", b"x")
    return None


def put_multipart(store: S3Store, tmp_path: Path) -> object:
    source = tmp_path / "big.bin"
    source.write_bytes(b"\x01" * (6 * MiB))
    store.put_file("k/big.bin", source)
    return None


def get_small(store: S3Store, tmp_path: Path) -> object:
    return store.get_bytes("k/small")


def download(store: S3Store, tmp_path: Path) -> object:
    store.get_file("k/small", tmp_path / "down" / "small")
    return None


def list_folder(store: S3Store, tmp_path: Path) -> object:
    return store.list("k")


def delete_folder(store: S3Store, tmp_path: Path) -> object:
    store.delete_prefix("k")
    return None


EVERY_OPERATION = [put_small, put_multipart, get_small, download, list_folder]
WRITES = [put_small, put_multipart, delete_folder]


def open_s3(bucket: str, endpoint: str, **settings: Any) -> S3Store:
    merged = {**vars(SETTINGS), **settings}
    return S3Store(bucket, "runs", endpoint=endpoint, region=REGION, path_style=True, settings=S3Settings(**merged))


def assert_one_line_naming(error: StoreError, *needles: str) -> None:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    assert FAKE_SECRET_KEY not in message and READ_ONLY_SECRET_KEY not in message


@pytest.fixture
def seeded(s3_bucket: str, s3_server: S3Server) -> str:
    """The test's bucket with one object at runs/k/small (written with the full-rights identity)."""
    s3_server.client().put_object(Bucket=s3_bucket, Key="runs/k/small", Body=b"x")
    return s3_bucket


@pytest.mark.parametrize("operation", EVERY_OPERATION, ids=lambda op: op.__name__)
def test_a_wrong_secret_key_is_a_credentials_error_naming_the_store_and_the_keys_to_check(
    seeded: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, operation: Operation
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StoreCredentialsError) as raised:
        operation(open_s3(seeded, s3_server.endpoint), tmp_path)
    assert_one_line_naming(raised.value, f"s3://{seeded}/runs", s3_server.endpoint, "SignatureDoesNotMatch",
                           "AWS_SECRET_ACCESS_KEY")  # fmt: skip
    assert raised.value.__cause__ is not None  # botocore's error, for a debug log


def test_an_unknown_access_key_is_a_credentials_error(
    seeded: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody-has-this-key")
    with pytest.raises(StoreCredentialsError, match="InvalidAccessKeyId.*AWS_ACCESS_KEY_ID") as raised:
        get_small(open_s3(seeded, s3_server.endpoint), tmp_path)
    assert_one_line_naming(raised.value, f"s3://{seeded}/runs/k/small", s3_server.endpoint)


@pytest.mark.parametrize("operation", EVERY_OPERATION, ids=lambda op: op.__name__)
def test_missing_credentials_are_reported_before_anything_is_sent(
    seeded: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, operation: Operation
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreCredentialsError, match="no usable S3 credentials") as raised:
        operation(open_s3(seeded, s3_server.endpoint), tmp_path)
    assert_one_line_naming(raised.value, f"s3://{seeded}/runs", "AWS_ACCESS_KEY_ID")


@pytest.mark.parametrize("operation", WRITES, ids=lambda op: op.__name__)
def test_an_identity_that_may_only_read_gets_access_denied_on_writes(
    seeded: str, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, operation: Operation
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", READ_ONLY_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", READ_ONLY_SECRET_KEY)
    reader = open_s3(seeded, s3_server.endpoint)
    assert reader.get_bytes("k/small") == b"x"  # the identity works: reading is allowed
    with pytest.raises(StoreAccessDeniedError, match="AccessDenied") as raised:
        operation(reader, tmp_path)
    assert_one_line_naming(raised.value, f"s3://{seeded}/runs", s3_server.endpoint, "permissions")
    assert reader.get_bytes("k/small") == b"x"  # nothing was deleted


@pytest.mark.parametrize("operation", [*EVERY_OPERATION, delete_folder], ids=lambda op: op.__name__)
def test_a_bucket_that_does_not_exist_is_named(
    s3_server: S3Server, s3_credentials: None, tmp_path: Path, operation: Operation
) -> None:
    with pytest.raises(BucketNotFoundError, match="no bucket 'kt-no-such-bucket'") as raised:
        operation(open_s3("kt-no-such-bucket", s3_server.endpoint), tmp_path)
    assert_one_line_naming(raised.value, "s3://kt-no-such-bucket/runs", s3_server.endpoint, "create the bucket")


def test_exists_cannot_tell_a_missing_bucket_from_a_missing_key(s3_server: S3Server, s3_credentials: None) -> None:
    # HEAD answers have no body: a 404 is all the server says. The planner then runs the stage, whose first write
    # fails with BucketNotFoundError (above).
    assert open_s3("kt-no-such-bucket", s3_server.endpoint).exists("k/small") is False


@pytest.mark.parametrize("operation", [*EVERY_OPERATION, delete_folder], ids=lambda op: op.__name__)
def test_a_closed_port_is_unreachable_after_the_request_retries_only(
    s3_credentials: None, tmp_path: Path, caplog: pytest.LogCaptureFixture, operation: Operation
) -> None:
    (tmp_path / "k").mkdir()
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = open_s3("kt-bucket", endpoint, max_attempts=3, transfer_attempts=3)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="kubetune.store.s3"), pytest.raises(StoreUnreachableError) as raised:
        operation(store, tmp_path)
    assert time.monotonic() - started < 10
    assert_one_line_naming(raised.value, "s3://kt-bucket/runs", endpoint, "cannot connect", "storage.endpoint")
    assert not [record for record in caplog.records if "retrying" in record.getMessage()]  # botocore's retries only


def test_a_server_that_keeps_failing_is_unavailable_after_every_retry(
    seeded: str, fault_proxy: FaultProxy, s3_credentials: None, tmp_path: Path
) -> None:
    fault_proxy.fail_next("slowdown", 4)
    store = open_s3(seeded, fault_proxy.endpoint, max_attempts=2, transfer_attempts=2)
    with pytest.raises(StoreUnavailableError, match="SlowDown") as raised:
        store.get_bytes("k/small")
    assert_one_line_naming(raised.value, f"s3://{seeded}/runs/k/small", fault_proxy.endpoint, "every retry")
    assert fault_proxy.injected["slowdown"] == 4
