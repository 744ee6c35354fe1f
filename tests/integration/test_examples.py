"""Every manifest in examples/ is valid and runs through `kubetune run` as far as this machine allows: the dataset
stage (`--to-stage dataset`), with the bundled model's tokenizer for the token statistics.

What cannot run here is replaced, and only that: the S3 store of the cluster and full examples by a local folder
(`--store`, with their `spec.storage` removed), the full example's S3 dataset by the bundled tree and its Hub model
(no Hub access at run time) by the bundled model. Training
and later stages of the local examples are the end-to-end tier's (tests/e2e/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.validate import load_runs
from kubetune.datasets_new.placeholders import DEFAULT_PLACEHOLDERS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
BUNDLED_MODEL = "bundled://smollm2-135m-instruct"

pytestmark = pytest.mark.integration


def kubetune(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-P", "-m", "kubetune.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900, check=False)


def runnable_here(example: Path, folder: Path) -> Path:
    """The example as written, or a copy whose sources that need a network are replaced by local ones."""
    document: dict[str, Any] = yaml.safe_load(example.read_text(encoding="utf-8"))
    spec = document["spec"]
    changed = False
    if not str(spec.get("dataset", {}).get("uri", "bundled")).startswith(("bundled", "/", "file://", "./", "../")):
        spec["dataset"]["uri"] = str(ROOT / "datasets_new")
        changed = True
    if not str(spec.get("baseModel", {}).get("uri", BUNDLED_MODEL)).startswith("bundled://"):
        spec["baseModel"] = {"uri": BUNDLED_MODEL}
        changed = True
    if "storage" in spec:  # its endpoint and credentials belong to the S3 store; the test's store is a local folder
        del spec["storage"]
        changed = True
    if not changed:
        return example
    if str(spec.get("dataset", {}).get("uri", "")).startswith(("./", "../")):  # relative to the example, not the copy
        spec["dataset"]["uri"] = str((example.parent / spec["dataset"]["uri"]).resolve())
    copy = folder / example.name
    copy.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return copy


def dataset_records(store: Path) -> list[dict[str, Any]]:
    (train,) = store.rglob("train_data.jsonl")
    return [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.stem for example in EXAMPLES])
def test_every_example_is_valid_and_builds_its_dataset_through_kubetune_run(example: Path, tmp_path: Path) -> None:
    (run,) = load_runs(example, relative_paths=True)  # as `kubetune run` reads it
    manifest = runnable_here(example, tmp_path)
    store = tmp_path / "store"
    done = kubetune(tmp_path, "run", str(manifest), "--to-stage", "dataset", "--store", str(store))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped after the dataset stage" in done.stderr
    records = dataset_records(store)
    if run.spec.dataset.format != "tree":  # conversations as the file holds them: no categories, no placeholders
        source = Path(run.spec.dataset.uri)
        assert [record["messages"] for record in records] == [
            json.loads(line)["messages"] for line in source.read_text(encoding="utf-8").splitlines()]
        return
    expected = set(run.spec.dataset.categories) or {"identity"}
    assert expected <= {record["category"] for record in records}
    texts = [message["content"] for record in records for message in record["messages"]]
    assert not any("${" in text for text in texts), "a placeholder was left in the built dataset"
    identity = [text for record in records if record["category"] == "identity"
                for text in (message["content"] for message in record["messages"])]
    assert any(run.spec.dataset.placeholders["NAME"] in text for text in identity)


def test_the_minimal_example_runs_on_the_documented_placeholder_defaults() -> None:
    (run,) = load_runs(ROOT / "examples" / "local-minimal.yaml")
    assert run.spec.dataset.placeholders == DEFAULT_PLACEHOLDERS
