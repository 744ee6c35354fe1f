"""An unusable store URI or S3 endpoint is a StoreConfigError (also a ValueError) raised by open_store before anything
is sent: one line that names what was given and what would work."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.store import S3Store, StoreConfigError, StoreError, open_store


@pytest.mark.parametrize(
    ("uri", "options", "message"),
    [
        ("", {}, "empty store URI: use s3://bucket/prefix"),
        ("gs://bucket/prefix", {}, "unsupported store URI scheme 'gs'"),
        ("s3:///prefix-without-bucket", {}, "needs a bucket name: s3://bucket/prefix"),
        ("s3://user@bucket/x", {}, "needs a bucket name"),
        ("s3://bad bucket/x", {}, "store URI 's3://bad bucket/x': invalid S3 bucket name 'bad bucket'"),
        ("s3://bad bucket", {}, "store URI 's3://bad bucket': invalid S3 bucket name 'bad bucket'"),
        ("s3://bucket//double", {}, "store URI 's3://bucket//double'"),
        ("s3://bucket/p?versionId=1", {}, "query or fragment"),
        ("s3://bucket/p", {"endpoint": "minio:9000"}, "http(s) URL such as http://minio:9000, got 'minio:9000'"),
        ("s3://bucket/p", {"endpoint": "ftp://minio:21"}, "http(s) URL"),
        ("s3://bucket/p", {"endpoint": "http://minio:port"}, "'http://minio:port' has an invalid port"),
        ("s3://bucket/p", {"endpoint": "http://minio:99999"}, "invalid port"),
        ("s3://bucket/p", {"endpoint": "http://key:secret@minio:9000"}, "not in the URL"),
        ("s3://bucket/p", {"endpoint": "http://minio:9000/?x=1"}, "plain http(s)://host[:port] URL"),
        ("file:///tmp/x", {"endpoint": "http://minio:9000"}, "S3 endpoint (http://minio:9000) was given for the local"),
    ],
)
def test_an_unusable_uri_or_endpoint_is_a_one_line_config_error(
    uri: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(StoreConfigError) as raised:
        open_store(uri, **options)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, StoreError)


def test_the_endpoint_is_checked_when_the_store_is_made_directly_too() -> None:
    with pytest.raises(StoreConfigError, match="http\\(s\\) URL"):
        S3Store("bucket", endpoint="localhost:9000")


def test_a_credential_in_the_endpoint_never_reaches_the_message() -> None:
    with pytest.raises(StoreConfigError) as raised:
        open_store("s3://bucket/p", endpoint="http://key:TOP-SECRET@minio:9000")
    assert "TOP-SECRET" not in str(raised.value)
