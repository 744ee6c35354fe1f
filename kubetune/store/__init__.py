"""The object store: stage inputs and outputs under ``s3://bucket/prefix`` or a local folder."""

from typing import TYPE_CHECKING, Any

from kubetune.store.base import Download, ObjectInfo, Store, Upload
from kubetune.store.errors import (
    BucketNotFoundError,
    IntegrityError,
    NotAnObjectError,
    ObjectNotFoundError,
    StoreAccessDeniedError,
    StoreAccessError,
    StoreConfigError,
    StoreCredentialsError,
    StoreError,
    StoreUnavailableError,
    StoreUnreachableError,
)
from kubetune.store.factory import open_store
from kubetune.store.hashing import sha256_file
from kubetune.store.keys import join_key, validate_key, validate_prefix
from kubetune.store.local import LocalStore
from kubetune.store.manifest import (
    LINEAGE_NAME,
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ManifestFile,
    content_digest,
    fetch,
    manifest_digest,
    publish,
    read_manifest,
)

if TYPE_CHECKING:
    from kubetune.store.s3 import S3Settings, S3Store


def __getattr__(name: str) -> Any:
    # The S3 backend is imported on first use: boto3 takes a tenth of a second, which every stage job would pay.
    if name in ("S3Settings", "S3Store"):
        from kubetune.store import s3

        return getattr(s3, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LINEAGE_NAME",
    "MANIFEST_NAME",
    "BucketNotFoundError",
    "Download",
    "IntegrityError",
    "LocalStore",
    "Manifest",
    "ManifestError",
    "ManifestFile",
    "NotAnObjectError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "S3Settings",
    "S3Store",
    "Store",
    "StoreAccessDeniedError",
    "StoreAccessError",
    "StoreConfigError",
    "StoreCredentialsError",
    "StoreError",
    "StoreUnavailableError",
    "StoreUnreachableError",
    "Upload",
    "content_digest",
    "fetch",
    "join_key",
    "manifest_digest",
    "open_store",
    "publish",
    "read_manifest",
    "sha256_file",
    "validate_key",
    "validate_prefix",
]
