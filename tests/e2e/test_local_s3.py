"""`kubetune run` end to end with an S3 store on a real S3 server (SeaweedFS): the base model comes from the bucket,
every stage reads its inputs from and publishes its outputs to the bucket, and a second run is served from it.

Kept cheap: a tiny random-weight Llama (the README's main job on the bundled model is test_local_identity.py), a few
training steps, q8_0 only. A random model cannot pass an answer gate, so evaluation runs with no pass rate to meet.
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

from kubetune.store import S3Store, fetch, read_manifest
from tests.fixtures.s3 import REGION, S3Server
from tests.fixtures.tiny_models import build_tiny_model, small_bpe_tokenizer_dir

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

STAGES = ("dataset", "train", "merge", "convert", "evaluate")


def manifest(bucket: str, endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneRun",
        "metadata": {"name": "s3-tiny"},
        "spec": {
            "storage": {"uri": f"s3://{bucket}/runs", "endpoint": endpoint, "region": REGION, "pathStyle": True},
            "baseModel": {"uri": f"s3://{bucket}/models/tiny-llama"},
            "dataset": {"uri": "bundled", "categories": ["identity"], "maxSeqLength": 128},
            "training": {
                "method": "lora",
                "epochs": 0.05,
                "batchSize": 4,
                "gradientCheckpointing": False,
                "compile": False,
                "loggingSteps": 1,
                "evalPrompts": [],
                "maxNewTokens": 8,
            },
            "merge": {"dtype": "float32"},
            "export": {"types": ["q8_0"]},
            "evaluate": {"prompts": [{"prompt": "Who are you?"}], "minPassRate": 0.0, "maxTokens": 8},
        },
    }


def kubetune(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-P", "-m", "kubetune.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=800, check=False)  # fmt: skip


def test_a_run_with_an_s3_store_reads_and_publishes_everything_in_the_bucket(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    tiny = build_tiny_model("llama", tmp_path / "tiny", tokenizer_dir=small_bpe_tokenizer_dir(tmp_path / "tokenizer"))
    bucket = S3Store(s3_bucket, "", endpoint=s3_server.endpoint, region=REGION, path_style=True)
    bucket.put_dir("models/tiny-llama", tiny)
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(manifest(s3_bucket, s3_server.endpoint)), encoding="utf-8")
    workdir = tmp_path / "work"
    workdir.mkdir()

    first = kubetune(workdir, "run", str(run_file))
    assert first.returncode == 0, first.stderr[-4000:]
    assert "FineTuneRun default/s3-tiny: Succeeded" in first.stdout

    status = json.loads((workdir / ".kubetune/runs/default/s3-tiny/status.json").read_text())["status"]
    store = S3Store(s3_bucket, "runs", endpoint=s3_server.endpoint, region=REGION, path_style=True)
    for stage in STAGES:
        block = status["stages"][stage]
        assert block["phase"] == "Succeeded", (stage, block)
        uris = [output["uri"] for output in block["outputs"]]
        assert uris and all(uri.startswith(f"s3://{s3_bucket}/runs/default/s3-tiny/{stage}/") for uri in uris)
        prefix = "/".join(uris[0].removeprefix(f"s3://{s3_bucket}/runs/").split("/")[:4])  # <ns>/<run>/<stage>/<key>
        published = read_manifest(store, prefix)
        assert published is not None and published.input_key == block["inputKey"]
        fetch(store, prefix, tmp_path / "check" / stage, published)  # every file there, every sha256 right
    assert next(a["uri"] for a in status["artifacts"] if a["name"].endswith("q8_0.gguf")).startswith("s3://")
    assert not list((workdir / ".kubetune").glob("store")), "nothing may fall back to the local store"

    again = kubetune(workdir, "run", str(run_file))
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("Cached") == len(STAGES)
