"""A store in an S3 bucket (AWS, MinIO, Ceph RGW, SeaweedFS, R2) through boto3's transfer manager.

Two layers of retries: botocore retries each request (``standard`` or ``adaptive`` mode), and every whole transfer
or call is retried here on transient failures that outlast those (connection resets mid-stream, 5xx/SlowDown
bursts), with exponential backoff and jitter. A connection that cannot be opened at all gets botocore's retries
only, so an unreachable endpoint fails within seconds. Credentials come only from boto3's standard chain
(environment, shared config, instance/pod identity) and never appear in messages or logs.

Whatever finally fails leaves as a one-line ``StoreError`` (``kubetune.store.errors``) naming the URI, the endpoint
and what to check; botocore's exception is its ``__cause__``.
"""

from __future__ import annotations

import builtins
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from s3transfer.exceptions import RetriesExceededError

from kubetune.store.base import Download, ObjectInfo, Store, Upload
from kubetune.store.errors import (
    BucketNotFoundError,
    IntegrityError,
    ObjectNotFoundError,
    StoreAccessDeniedError,
    StoreAccessError,
    StoreConfigError,
    StoreCredentialsError,
    StoreError,
    StoreUnavailableError,
    StoreUnreachableError,
)
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
# The server does not know the access key or the signature is wrong (a wrong secret key).
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId"}
)
# HEAD answers carry no body, so a HEAD refused for any reason comes back as a bare "403".
_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})
# The set of names botocore itself accepts (it refuses others before sending); AWS's own rules are stricter.
_BUCKET_NAME = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")
_CREDENTIALS_HINT = (
    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (in a cluster: the Secret named by storage.credentialsSecret)"
)

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
    connect_timeout_s: float = 5.0
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
        if not _BUCKET_NAME.fullmatch(bucket):
            # A ValueError like the prefix's key rules: open_store names the store URI as it was given.
            raise ValueError(
                f"invalid S3 bucket name {bucket!r}: use letters, digits, '.', '-' and '_' (s3://bucket/prefix)"
            )
        if endpoint is not None:
            check_endpoint(endpoint)
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
        try:
            self.client: Any = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
        except ValueError as error:  # botocore's own endpoint URL check
            raise StoreConfigError(f"unusable S3 endpoint {endpoint!r}: {error}") from None
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

    def read_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        full_key = self._full_key(key)
        what = f"get {self.uri_for(key)}"
        body = self._retrying(what, lambda: self.client.get_object(Bucket=self.bucket, Key=full_key)["Body"], key=key)
        try:
            yield from body.iter_chunks(chunk_size)
        except Exception as error:  # noqa: BLE001 - a connection dropped mid-object: our one-line error
            self._raise_translated(error, key, what)
        finally:
            body.close()

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
                raise self._refusal(
                    self.uri_for_prefix(prefix),
                    str(first.get("Code", "")),
                    str(first.get("Message", "")),
                    f"deleting {len(errors)} object(s), first {first.get('Key')}",
                    transient=False,
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
                            failed.append((transfer, error))
            except BaseException:
                for transfer in pending:  # interrupted: leave no temp files (abandon is a no-op once finished)
                    transfer.abandon()
                raise
            if not failed:
                return
            fatal = [(transfer, error) for transfer, error in failed if not is_transient(error)]
            if fatal or attempt == self.settings.transfer_attempts:
                first, first_error = (fatal or failed)[0]
                self._raise_translated(first_error, first.key, first.describe())
            self._pause_before_retry(
                f"{len(failed)} transfer(s), e.g. {failed[0][0].describe()}", failed[0][1], attempt
            )
            pending = [transfer for transfer, _ in failed]

    def _retrying(self, what: str, call: Callable[[], T], *, key: str | None = None) -> T:
        for attempt in range(1, self.settings.transfer_attempts + 1):
            try:
                return call()
            except Exception as error:  # noqa: BLE001 - re-raised below, translated, unless retried
                if not is_transient(error) or attempt == self.settings.transfer_attempts:
                    self._raise_translated(error, key, what)
                self._pause_before_retry(what, error, attempt)
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

    def _raise_translated(self, error: Exception, key: str | None, what: str) -> NoReturn:
        translated = self._translate(error, key, what)
        if translated is error:
            raise error
        raise translated from error

    def _refusal(self, uri: str, code: str, message: str, what: str, *, transient: bool) -> StoreAccessError:
        """The error for a request the server answered with an S3 error ``code``."""
        endpoint = self.endpoint
        if code == "NoSuchBucket":
            return BucketNotFoundError(
                uri, endpoint, f"no bucket {self.bucket!r}", "create the bucket, or fix the bucket in the store URI"
            )
        if code in _CREDENTIAL_CODES:
            return StoreCredentialsError(
                uri, endpoint, f"the S3 server rejected the credentials ({code})", _CREDENTIALS_HINT
            )
        if code in _DENIED_CODES:
            return StoreAccessDeniedError(
                uri,
                endpoint,
                f"access denied ({code}) on {what}",
                "the credentials may not do this here: check the identity's permissions for this bucket and prefix",
            )
        problem = f"{what} failed: {code}: {message}".rstrip(": ")
        if transient:
            return StoreUnavailableError(
                uri, endpoint, problem, "the server kept failing through every retry; check its health and load"
            )
        return StoreAccessError(uri, endpoint, problem, "the server refused the request")

    def _code_behind_bare_status(self, code: str) -> str:
        """A HEAD refused with 403 or 404 has no body to say why; a one-key listing of the store (refused for the
        same reason: credentials, permissions, no bucket) does. Only asked on the failure path."""
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._full_prefix(""), MaxKeys=1)
        except botocore.exceptions.ClientError as error:
            return _error_code(error)
        except botocore.exceptions.BotoCoreError:
            pass
        return code

    def _translate(self, error: Exception, key: str | None, what: str) -> Exception:
        """The store's one-line error for what botocore raised; our own errors and local file errors as they are."""
        if isinstance(error, (StoreError, FileNotFoundError, ValueError)):
            return error
        cause = _unwrap(error)
        uri = self.uri_for(key) if key is not None else self.uri_for_prefix("")
        if isinstance(cause, botocore.exceptions.ClientError):
            code = _error_code(cause)
            if code == "403" or (code == "404" and key is not None):
                code = self._code_behind_bare_status(code)
            if key is not None and code in _NOT_FOUND_CODES:
                return ObjectNotFoundError(uri)
            message = str(cause.response.get("Error", {}).get("Message", ""))
            return self._refusal(uri, code, message, what, transient=is_transient(cause))
        endpoint = self.endpoint
        if isinstance(cause, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
            return StoreCredentialsError(
                uri, endpoint, f"no usable S3 credentials ({cause})", f"{_CREDENTIALS_HINT}, or an AWS profile"
            )
        if isinstance(cause, botocore.exceptions.CredentialRetrievalError):
            return StoreCredentialsError(
                uri, endpoint, f"S3 credentials could not be loaded ({cause})", _CREDENTIALS_HINT
            )
        if _is_connect_failure(cause):
            return StoreUnreachableError(
                uri,
                endpoint,
                f"cannot connect to the S3 endpoint ({type(cause).__name__}: {cause})",
                "check the endpoint URL (storage.endpoint), that the server is running, and that it is reachable "
                "from here",
            )
        if is_transient(cause):
            return StoreUnavailableError(
                uri,
                endpoint,
                f"{what} kept failing: {_describe(cause)}",
                "the connection broke or timed out on every retry; check the server's health and the network",
            )
        if isinstance(cause, botocore.exceptions.BotoCoreError):
            return StoreAccessError(uri, endpoint, f"{what} failed: {_describe(cause)}", "check the store settings")
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

    def describe(self) -> str:
        return f"download {self.store.uri_for(self.key)} to {self.path}"


def is_transient(error: BaseException) -> bool:
    """Whether retrying the whole operation may succeed: dropped connections, timeouts, 5xx and throttling.
    A connection that could not be opened at all is not: botocore has already retried it with backoff."""
    error = _unwrap(error)
    if isinstance(error, (StoreError, FileNotFoundError, ValueError)) or _is_connect_failure(error):
        return False
    if isinstance(
        error,
        (
            botocore.exceptions.HTTPClientError,  # connection closed/reset, read timeouts, broken streams
            botocore.exceptions.IncompleteReadError,
            urllib3.exceptions.ProtocolError,  # an error answer's body cut off: botocore reads it unwrapped
            ConnectionError,  # raw socket resets surfacing from a body read
            TimeoutError,
        ),
    ):
        return True
    if isinstance(error, botocore.exceptions.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _error_code(error) in _TRANSIENT_ERROR_CODES or int(status) >= 500
    return False


def check_endpoint(endpoint: str) -> None:
    """Refuse an endpoint botocore could only fail on later, with a message that names it (credentials masked)."""
    parts = urlsplit(endpoint)
    if "@" in parts.netloc:
        masked = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()
        raise StoreConfigError(
            f"S3 endpoint {masked!r} must be a plain http(s)://host[:port] URL: credentials go in "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, not in the URL"
        )
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise StoreConfigError(f"S3 endpoint {endpoint!r} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StoreConfigError(f"S3 endpoint must be an http(s) URL such as http://minio:9000, got {endpoint!r}")
    if parts.query or parts.fragment:
        raise StoreConfigError(f"S3 endpoint {endpoint!r} must be a plain http(s)://host[:port] URL (no query)")


def _unwrap(error: BaseException) -> BaseException:
    # s3transfer gives up re-reading a download stream with the last socket error inside.
    if isinstance(error, RetriesExceededError) and error.last_exception is not None:
        return error.last_exception
    return error


def _is_connect_failure(error: BaseException) -> bool:
    # EndpointConnectionError (refused, unknown host), ConnectTimeoutError, proxy and TLS handshake failures.
    return isinstance(error, botocore.exceptions.ConnectionError)


def _error_code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _describe(error: BaseException) -> str:
    # Exception text from botocore names the operation and the server's message; it never carries credentials.
    return f"{type(error).__name__}: {error}"
