"""``open_store``: pick the backend from the store URI."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from kubetune.store.base import Store
from kubetune.store.local import LocalStore
from kubetune.store.s3 import S3Settings, S3Store

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

    ``endpoint``, ``region`` and ``path_style`` configure S3-compatible services (MinIO, Ceph, R2); an endpoint
    with a local store is a configuration mistake and is refused.
    """
    if not uri:
        raise ValueError(f"empty store URI: {_SUPPORTED}")
    if "://" not in uri:
        _refuse_endpoint_for_local(uri, endpoint)
        return LocalStore(Path(uri).expanduser().resolve())
    parts = urlsplit(uri)
    if parts.query or parts.fragment:
        raise ValueError(f"store URI {uri!r} must not have a query or fragment")
    if parts.scheme == "s3":
        if not parts.netloc or "@" in parts.netloc or ":" in parts.netloc:
            raise ValueError(f"store URI {uri!r} needs a bucket name: s3://bucket/prefix")
        if endpoint is not None:
            _check_endpoint(endpoint)
        return S3Store(
            parts.netloc,
            parts.path[1:],
            endpoint=endpoint,
            region=region,
            path_style=path_style,
            settings=s3_settings,
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"store URI {uri!r} must name an absolute path: file:///absolute/dir")
        _refuse_endpoint_for_local(uri, endpoint)
        return LocalStore(Path(unquote(parts.path)))
    raise ValueError(f"unsupported store URI scheme {parts.scheme!r} in {uri!r}: {_SUPPORTED}")


def _refuse_endpoint_for_local(uri: str, endpoint: str | None) -> None:
    if endpoint is not None:
        raise ValueError(f"an S3 endpoint ({endpoint}) was given for the local store {uri!r}")


def _check_endpoint(endpoint: str) -> None:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"S3 endpoint must be an http(s) URL such as http://minio:9000, got {endpoint!r}")
