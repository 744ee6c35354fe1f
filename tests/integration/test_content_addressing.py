"""`kubetune run` re-runs exactly what an input edit affects: the real dataset stage on a copy of the bundled tree
(`--to-stage dataset`, token statistics off so no model is unpacked)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune.store import LINEAGE_NAME, ManifestFile, content_digest, manifest_digest, open_store, read_manifest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def copy_of_bundled_tree(folder: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "datasets_new" / "structure.enriched.json", folder)
    shutil.copytree(ROOT / "datasets_new" / "topics", folder / "topics")
    return folder


def run_dataset(cwd: Path, manifest: Path, *args: str) -> dict[str, Any]:
    """`kubetune run --to-stage dataset`; returns the run's status as `kubetune status` reads it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-P", "-m", "kubetune.cli", "run", str(manifest), "--to-stage", "dataset",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    status: dict[str, Any] = json.loads((cwd / ".kubetune" / "runs" / "default" / "demo" / "status.json").read_text())
    return status["status"]


def test_kubetune_run_reruns_the_dataset_only_when_its_tree_changed_and_one_content_has_one_key_in_two_stores(
        tmp_path: Path) -> None:
    tree = copy_of_bundled_tree(tmp_path / "tree")
    manifest = tmp_path / "run.yaml"
    manifest.write_text(json.dumps({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun",
                                    "metadata": {"name": "demo"},
                                    "spec": {"dataset": {"uri": str(tree), "tokenStats": False}}}))
    first = run_dataset(tmp_path, manifest)["stages"]["dataset"]
    assert first["phase"] == "Succeeded"

    again = run_dataset(tmp_path, manifest)
    assert again["stages"]["dataset"]["phase"] == "Cached"
    assert again["stages"]["dataset"]["inputKey"] == first["inputKey"]
    assert again["sources"]["dataset"]["uri"] == str(tree)

    topic = next((tree / "topics").rglob("*.json"))
    samples = json.loads(topic.read_text(encoding="utf-8"))
    samples[0]["output"] += " Edited."
    topic.write_text(json.dumps(samples), encoding="utf-8")
    edited = run_dataset(tmp_path, manifest)["stages"]["dataset"]
    assert edited["phase"] == "Succeeded"
    assert edited["inputKey"] != first["inputKey"] and edited["outputDigest"] != first["outputDigest"]

    other = run_dataset(tmp_path, manifest, "--store", str(tmp_path / "other-store"))["stages"]["dataset"]
    assert other["phase"] == "Succeeded"  # built again there, from the same content
    assert (other["inputKey"], other["outputDigest"]) == (edited["inputKey"], edited["outputDigest"])
    prefix = f"default/demo/dataset/{edited['inputKey'][:16]}"
    here = read_manifest(open_store(str(tmp_path / ".kubetune" / "store")), prefix)
    there = read_manifest(open_store(str(tmp_path / "other-store")), prefix)
    assert here is not None and there is not None
    def content(files: tuple[ManifestFile, ...]) -> list[ManifestFile]:
        return [f for f in files if f.path != LINEAGE_NAME]  # lineage.json names its store and time: not content

    assert content(here.files) == content(there.files)  # the dataset's files, stats.json included, are deterministic
    assert content_digest(here) == content_digest(there) == edited["outputDigest"]
    if here.created_at != there.created_at:
        assert manifest_digest(here) != manifest_digest(there)  # what the keys no longer depend on


def test_a_dataset_tree_that_cannot_be_resolved_fails_before_any_stage_naming_the_field(tmp_path: Path) -> None:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(json.dumps({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun",
                                    "metadata": {"name": "demo"},
                                    "spec": {"dataset": {"uri": str(tmp_path / "absent"), "tokenStats": False}}}))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-P", "-m", "kubetune.cli", "run", str(manifest)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"kubetune: default/demo: spec.dataset.uri: {tmp_path / 'absent'} is not a folder")
    assert "Traceback" not in done.stderr
