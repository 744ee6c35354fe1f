"""``open_store``: pick the backend from the store URI."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from kubetune.store.base import Store
from kubetune.store.errors import StoreConfigError
from kubetune.store.local import LocalStore

if TYPE_CHECKING:
    from kubetune.store.s3 import S3Settings

_SUPPORTED = "use s3://bucket/prefix, file:///absolute/dir or a local path"


def open_store(
    uri: str,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    path_style: bool = False,
    s3_settings: S3Settings | None = None,
) -> Store:
    """Open the store at ``uri``: ``s3://bucket/prefix``, ``file:///abs/dir`` or a plain (local) path.

    ``endpoint``, ``region`` and ``path_style`` configure S3-compatible services (MinIO, Ceph, SeaweedFS, R2); an
    endpoint with a local store is a configuration mistake and is refused. An unusable URI or endpoint raises
    ``StoreConfigError`` (a ``ValueError``) before anything is sent.
    """
    if not uri:
        raise StoreConfigError(f"empty store URI: {_SUPPORTED}")
    if any(ord(char) < 0x20 or char == "\x7f" for char in uri):
        # urlsplit drops tabs and newlines without a word (`s3://a\tb/x` opens bucket `ab`): refused, not guessed.
        raise StoreConfigError(f"store URI {uri!r} holds a control character")
    if "://" not in uri:
        if uri.startswith("file:"):  # a URI, not a folder named "file:" in the current one
            raise StoreConfigError(f"store URI {uri!r} must name an absolute path: file:///absolute/dir")
        _refuse_endpoint_for_local(uri, endpoint)
        return LocalStore(_local_root(uri, Path(uri).expanduser()).resolve())
    try:
        parts = urlsplit(uri)
    except ValueError as error:  # "Invalid IPv6 URL" for a '[' in the host part
        raise StoreConfigError(f"store URI {uri!r}: {error}") from None
    if parts.query or parts.fragment:
        raise StoreConfigError(f"store URI {uri!r} must not have a query or fragment")
    if parts.scheme == "s3":
        if not parts.netloc or "@" in parts.netloc or ":" in parts.netloc:
            raise StoreConfigError(f"store URI {uri!r} needs a bucket name: s3://bucket/prefix")
        from kubetune.store.s3 import S3Store  # boto3 takes a tenth of a second to import: only for an S3 store

        try:
            return S3Store(
                parts.netloc,
                parts.path[1:],
                endpoint=endpoint,
                region=region,
                path_style=path_style,
                settings=s3_settings,
            )
        except StoreConfigError:
            raise
        except ValueError as error:  # the bucket name's and the prefix's key rules
            raise StoreConfigError(f"store URI {uri!r}: {error}") from None
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreConfigError(f"store URI {uri!r} must name an absolute path: file:///absolute/dir")
        _refuse_endpoint_for_local(uri, endpoint)
        return LocalStore(_local_root(uri, Path(unquote(parts.path))))  # the scheme as split: FILE:// too
    raise StoreConfigError(f"unsupported store URI scheme {parts.scheme!r} in {uri!r}: {_SUPPORTED}")


def local_uri_path(uri: str) -> Path:
    """The path a `file://` URI names, percent-decoded, or a plain path as written. Check it after decoding: a
    percent-encoded '..' (%2e%2e) passes a check of the URI as written."""
    return Path(unquote(urlsplit(uri).path)) if uri.startswith("file://") else Path(uri)


def _refuse_endpoint_for_local(uri: str, endpoint: str | None) -> None:
    if endpoint is not None:
        raise StoreConfigError(f"an S3 endpoint ({endpoint}) was given for the local store {uri!r}")


def _local_root(uri: str, path: Path) -> Path:
    """The folder a local store URI names. A file:// URI is checked after percent-decoding, as the API checks
    `spec.storage.uri`: `file:///data/%2e%2e/etc` must not reach /etc past a check of the URI as written. A plain
    path is the shell's (`--store ../store`): its '..' is resolved, as cd would."""
    if "\x00" in str(path):  # a percent-encoded one: no path holds it
        raise StoreConfigError(f"store URI {uri!r} holds a NUL character")
    if uri.startswith("file://") and (".." in path.parts or not path.is_absolute()):
        raise StoreConfigError(f"store URI {uri!r} must name an absolute path without '..': file:///absolute/dir")
    return path
