"""Sources in S3 are addressed by content: the objects' ETags, never the prefix alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune.api import types as t
from kubetune.sources import dataset_source
from kubetune.store import Store, open_store
from tests.unit.test_sources import tree


def test_an_s3_dataset_prefix_is_addressed_by_its_objects_etags(s3_bucket: str, s3_server: Any,
                                                                tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/data/tree"

    def store_factory(where: str) -> Store:
        return open_store(where, endpoint=s3_server.endpoint, region="us-east-1", path_style=True)

    store = store_factory(uri)
    store.put_dir("", tree(tmp_path / "tree"))
    spec = t.DatasetSpec(uri=uri)
    before = dataset_source(spec, store_factory).digest
    assert dataset_source(spec, store_factory).digest == before
    store.put_bytes("README.md", b"not read by the builder")
    assert dataset_source(spec, store_factory).digest == before
    store.put_bytes("topics/identity/name.json", b'{"samples": ["changed"]}')
    assert dataset_source(spec, store_factory).digest != before
