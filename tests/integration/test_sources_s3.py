"""Sources in S3 are addressed by content: the objects' ETags, never the prefix alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune.api import types as t
from kubetune.api.validate import validate_spec
from kubetune.sources import dataset_source
from kubetune.stages import stage_ref
from kubetune.store import Store, content_digest, open_store, publish, read_manifest
from tests.fixtures.sources import example_sources
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


def test_one_output_in_s3_and_in_a_folder_has_one_content_digest_and_gives_later_stages_one_key(
        s3_bucket: str, s3_server: Any, tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "train_data.jsonl").write_text('{"messages": []}\n')
    (outputs / "stats.json").write_text('{"samples": 1}')
    s3 = open_store(f"s3://{s3_bucket}/runs", endpoint=s3_server.endpoint, region="us-east-1", path_style=True)
    folder = open_store(str(tmp_path / "store"))
    digests = []
    for store in (s3, folder):
        publish(store, "default/demo/dataset/0123456789abcdef", outputs, stage="dataset", input_key="a" * 64,
                metadata={"publishedTo": repr(store)})  # metadata differs: it is not content
        manifest = read_manifest(store, "default/demo/dataset/0123456789abcdef")
        assert manifest is not None
        digests.append(content_digest(manifest))
    assert digests[0] == digests[1]
    spec, sources = validate_spec({}), example_sources()
    train_keys = {stage_ref("default", "demo", spec, "train", {"dataset": digest}, sources).key for digest in digests}
    assert len(train_keys) == 1
