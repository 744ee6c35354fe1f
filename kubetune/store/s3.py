"""A store in an S3 bucket (AWS, MinIO, Ceph RGW, R2, moto) through boto3's transfer manager.

Two layers of retries: botocore retries each request (``standard`` or ``adaptive`` mode), and every whole transfer
or call is retried here on transient failures that outlast those (connection resets mid-stream, 5xx/SlowDown
bursts), with exponential backoff and jitter. Credentials come only from boto3's standard chain (environment,
shared config, instance/pod identity) and never appear in messages or logs.
"""

from __future__ import annotations

import builtins
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from s3transfer.exceptions import RetriesExceededError

from kubetune.store.base import Download, ObjectInfo, Store, Upload
from kubetune.store.errors import IntegrityError, ObjectNotFoundError, StoreError
from kubetune.store.hashing import sha256_file
from kubetune.store.keys import validate_key, validate_prefix
from kubetune.store.localfiles import temp_path_beside

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# S3 rejects multipart parts smaller than 5 MiB (except the last) and larger than 5 GiB.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
# DeleteObjects takes at most this many keys per call.
DELETE_BATCH = 1000

# NoSuchUpload: a multipart upload completed or aborted under a retried request (e.g. CompleteMultipartUpload
# applied, its answer lost); starting the whole upload again is the way out.
_TRANSIENT_ERROR_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "NoSuchUpload",
    }
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})

T = TypeVar("T")


@dataclass(frozen=True)
class S3Settings:
    """Transfer and retry tuning; the defaults suit multi-GB model files."""

    multipart_threshold: int = 64 * MiB
    multipart_chunksize: int = 64 * MiB
    max_concurrency: int = 8
    retry_mode: Literal["standard", "adaptive"] = "standard"
    max_attempts: int = 5  # botocore attempts per request, the first included
    transfer_attempts: int = 3  # our attempts per whole transfer or call
    retry_backoff_s: float = 0.5  # base delay between our attempts, doubled each time
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.multipart_chunksize <= MAX_PART_SIZE:
            raise ValueError(
                f"multipart_chunksize must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes (S3's part size "
                f"limits), got {self.multipart_chunksize}"
            )
        if self.multipart_threshold < 1:
            raise ValueError(f"multipart_threshold must be positive, got {self.multipart_threshold}")
        if self.retry_mode not in ("standard", "adaptive"):
            raise ValueError(f"retry_mode must be 'standard' or 'adaptive', got {self.retry_mode!r}")
        for name in ("max_concurrency", "max_attempts", "transfer_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


class S3Store(Store):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        settings: S3Settings | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = validate_prefix(prefix)
        self.endpoint = endpoint
        self.settings = settings or S3Settings()
        config = botocore.config.Config(
            region_name=region,
            # total_max_attempts counts the first try; botocore's "max_attempts" would count only the retries.
            retries={"mode": self.settings.retry_mode, "total_max_attempts": self.settings.max_attempts},
            s3={"addressing_style": "path" if path_style else "auto"},
            max_pool_connections=max(10, self.settings.max_concurrency),
            connect_timeout=self.settings.connect_timeout_s,
            read_timeout=self.settings.read_timeout_s,
        )
        # A session of its own: boto3's default session is shared, mutable state.
        self.client: Any = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
        self._transfer_config = TransferConfig(
            multipart_threshold=self.settings.multipart_threshold,
            multipart_chunksize=self.settings.multipart_chunksize,
            max_concurrency=self.settings.max_concurrency,
            preferred_transfer_client="classic",
        )

    def __repr__(self) -> str:
        endpoint = f", endpoint={self.endpoint}" if self.endpoint else ""
        return f"S3Store({self.uri_for_prefix('')}{endpoint})"

    # -- single objects ------------------------------------------------------------------------------------------

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        self.put_files([Upload(key, Path(path))])

    def put_bytes(self, key: str, data: bytes) -> None:
        full_key = self._full_key(key)
        self._retrying(
            f"put {self.uri_for(key)}", lambda: self.client.put_object(Bucket=self.bucket, Key=full_key, Body=data)
        )

    def get_file(self, key: str, path: str | os.PathLike[str], *, sha256: str | None = None) -> None:
        self.get_files([Download(key, Path(path), sha256)])

    def get_bytes(self, key: str) -> bytes:
        full_key = self._full_key(key)

        def read() -> bytes:
            response = self.client.get_object(Bucket=self.bucket, Key=full_key)
            body: bytes = response["Body"].read()
            return body

        return self._retrying(f"get {self.uri_for(key)}", read, key=key)

    def exists(self, key: str) -> bool:
        full_key = self._full_key(key)

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=full_key)
            except botocore.exceptions.ClientError as error:
                if _error_code(error) in _NOT_FOUND_CODES:
                    return False
                raise
            return True

        return self._retrying(f"head {self.uri_for(key)}", head)

    def delete(self, key: str) -> None:
        full_key = self._full_key(key)
        self._retrying(
            f"delete {self.uri_for(key)}", lambda: self.client.delete_object(Bucket=self.bucket, Key=full_key)
        )

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full_key(key)}"

    def uri_for_prefix(self, prefix: str) -> str:
        full = self._full_prefix(validate_prefix(prefix))
        return f"s3://{self.bucket}/{full}" if full else f"s3://{self.bucket}"

    # -- folders ---------------------------------------------------------------------------------------------------

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        prefix = validate_prefix(prefix)
        folder = self._full_prefix(prefix)
        s3_prefix = folder + "/" if folder else ""
        strip = len(self.prefix) + 1 if self.prefix else 0

        def list_all() -> builtins.list[ObjectInfo]:
            found = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=s3_prefix):
                for item in page.get("Contents", []):
                    etag = str(item.get("ETag", "")).strip('"')
                    found.append(ObjectInfo(item["Key"][strip:], int(item["Size"]), etag))
            return sorted(found)

        return self._retrying(f"list {self.uri_for_prefix(prefix)}", list_all)

    def delete_prefix(self, prefix: str) -> None:
        prefix = validate_prefix(prefix)
        if not prefix:
            raise ValueError("refusing to delete the whole store: delete_prefix needs a non-empty prefix")
        keys = [self._full_key(info.key) for info in self.list(prefix)]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = {"Objects": [{"Key": key} for key in keys[start : start + DELETE_BATCH]], "Quiet": True}
            response = self._retrying(f"delete under {self.uri_for_prefix(prefix)}", partial(self._delete_batch, batch))
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise StoreError(
                    f"could not delete {len(errors)} object(s) under {self.uri_for_prefix(prefix)}; first: "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )

    def put_files(self, uploads: Sequence[Upload]) -> None:
        self._transfer_all([_UploadTransfer(self, upload) for upload in uploads])

    def get_files(self, downloads: Sequence[Download]) -> None:
        self._transfer_all([_DownloadTransfer(self, download) for download in downloads])

    # -- internals -------------------------------------------------------------------------------------------------

    def _full_prefix(self, prefix: str) -> str:
        if self.prefix and prefix:
            return f"{self.prefix}/{prefix}"
        return self.prefix or prefix

    def _full_key(self, key: str) -> str:
        return self._full_prefix(validate_key(key))

    def _delete_batch(self, batch: dict[str, Any]) -> Any:
        return self.client.delete_objects(Bucket=self.bucket, Delete=batch)

    def _transfer_all(self, transfers: Sequence[_Transfer]) -> None:
        """Run the transfers concurrently on one transfer manager; retry the ones that failed transiently."""
        pending = list(transfers)
        for attempt in range(1, self.settings.transfer_attempts + 1):
            failed: builtins.list[tuple[_Transfer, Exception]] = []
            try:
                with create_transfer_manager(self.client, self._transfer_config) as manager:
                    started = [(transfer, transfer.start(manager)) for transfer in pending]
                    for transfer, future in started:
                        try:
                            future.result()
                            transfer.finish()
                        except Exception as error:  # noqa: BLE001 - every failure is collected, then judged below
                            transfer.abandon()
                            failed.append((transfer, transfer.translate(error)))
            except BaseException:
                for transfer in pending:  # interrupted: leave no temp files (abandon is a no-op once finished)
                    transfer.abandon()
                raise
            if not failed:
                return
            fatal = [error for _, error in failed if not is_transient(error)]
            if fatal:
                raise fatal[0]
            if attempt == self.settings.transfer_attempts:
                raise failed[0][1]
            self._pause_before_retry(
                f"{len(failed)} transfer(s), e.g. {failed[0][0].describe()}", failed[0][1], attempt
            )
            pending = [transfer for transfer, _ in failed]

    def _retrying(self, what: str, call: Callable[[], T], *, key: str | None = None) -> T:
        for attempt in range(1, self.settings.transfer_attempts + 1):
            try:
                return call()
            except Exception as error:
                translated = self._translate(error, key)
                if not is_transient(translated) or attempt == self.settings.transfer_attempts:
                    if translated is error:
                        raise
                    raise translated from error
                self._pause_before_retry(what, translated, attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _pause_before_retry(self, what: str, error: Exception, attempt: int) -> None:
        delay = self.settings.retry_backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
        log.warning(
            "retrying %s in %.1fs after %s (attempt %d of %d)",
            what,
            delay,
            _describe(error),
            attempt + 1,
            self.settings.transfer_attempts,
        )
        time.sleep(delay)

    def _translate(self, error: Exception, key: str | None) -> Exception:
        if (
            key is not None
            and isinstance(error, botocore.exceptions.ClientError)
            and _error_code(error) in _NOT_FOUND_CODES
        ):
            return ObjectNotFoundError(self.uri_for(key))
        return error


class _Transfer:
    key: str

    def start(self, manager: Any) -> Future[Any]:
        raise NotImplementedError

    def finish(self) -> None:
        """Called once the transfer succeeded."""

    def abandon(self) -> None:
        """Called when the transfer failed: leave nothing half-done behind."""

    def describe(self) -> str:
        raise NotImplementedError

    def translate(self, error: Exception) -> Exception:
        return error


class _UploadTransfer(_Transfer):
    def __init__(self, store: S3Store, upload: Upload) -> None:
        self.store = store
        self.key = upload.key
        self.path = upload.path
        self.full_key = store._full_key(upload.key)
        if not self.path.is_file():
            raise FileNotFoundError(f"no file to upload at {self.path}")

    def start(self, manager: Any) -> Future[Any]:
        future: Future[Any] = manager.upload(str(self.path), self.store.bucket, self.full_key)
        return future

    def describe(self) -> str:
        return f"upload {self.path} to {self.store.uri_for(self.key)}"


class _DownloadTransfer(_Transfer):
    """Downloads into a temp file beside the target, verifies sha256, then renames it into place."""

    def __init__(self, store: S3Store, download: Download) -> None:
        self.store = store
        self.key = download.key
        self.path = download.path
        self.sha256 = download.sha256
        self.full_key = store._full_key(download.key)
        self.temp = temp_path_beside(self.path)

    def start(self, manager: Any) -> Future[Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        future: Future[Any] = manager.download(self.store.bucket, self.full_key, str(self.temp))
        return future

    def finish(self) -> None:
        if self.sha256 is not None:
            actual = sha256_file(self.temp)
            if actual != self.sha256.lower():
                raise IntegrityError(self.store.uri_for(self.key), self.sha256, actual)
        os.replace(self.temp, self.path)

    def abandon(self) -> None:
        self.temp.unlink(missing_ok=True)

    def translate(self, error: Exception) -> Exception:
        return self.store._translate(error, self.key)

    def describe(self) -> str:
        return f"download {self.store.uri_for(self.key)} to {self.path}"


def is_transient(error: BaseException) -> bool:
    """Whether retrying the whole operation may succeed: dropped connections, timeouts, 5xx and throttling."""
    if isinstance(error, (StoreError, FileNotFoundError, ValueError)):
        return False
    if isinstance(
        error,
        (
            botocore.exceptions.ConnectionError,  # connect failures, endpoint unreachable
            botocore.exceptions.HTTPClientError,  # connection closed/reset, read timeouts, broken streams
            botocore.exceptions.IncompleteReadError,
            RetriesExceededError,  # s3transfer gave up re-reading a download stream
            ConnectionError,  # raw socket resets surfacing from a body read
            TimeoutError,
        ),
    ):
        return True
    if isinstance(error, botocore.exceptions.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _error_code(error) in _TRANSIENT_ERROR_CODES or int(status) >= 500
    return False


def _error_code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _describe(error: Exception) -> str:
    # Exception text from botocore names the operation and the server's message; it never carries credentials.
    return f"{type(error).__name__}: {error}"
