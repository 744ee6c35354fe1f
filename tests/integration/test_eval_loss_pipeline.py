"""The eval-loss gate through `kubetune run`: a tiny random Llama trained on the bundled identity samples with an eval
split learns, so the default gate (not worse than the base on held-out data) passes and the figures reach the train
output, the evaluate output and the run's status; a `maxEvalLoss` it cannot meet then fails the run at the evaluate
stage alone (the bound is in no other stage's key), with the field and the figures in the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.store import open_store, read_manifest
from tests.fixtures.tiny_models import build_tiny_model, repo_root, small_bpe_tokenizer_dir
from tests.integration.local_run import run_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
CACHE = repo_root() / ".cache" / "test-models"
NAME = "held-out"


def tiny_model() -> Path:
    """A tiny Llama on a 400-token BPE vocabulary with a ChatML template of its own."""
    return build_tiny_model("llama", CACHE / "stop-tiny-llama", tokenizer_dir=small_bpe_tokenizer_dir(
        CACHE / "stop-tokenizer"))


def manifest(evaluate: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneRun",
        "metadata": {"name": NAME},
        "spec": {
            "baseModel": {"uri": str(tiny_model())},
            "dataset": {"uri": "bundled", "categories": ["identity"], "maxSeqLength": 96, "evalSplit": 0.1},
            "training": {"method": "lora", "maxSteps": 6, "batchSize": 4, "learningRate": 1e-2, "device": "cpu",
                         "compile": False, "gradientCheckpointing": False, "evalPrompts": [],
                         "stopSequences": ["</output>"], "checkpoint": {"everySteps": 3, "keep": 2},
                         "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "export": {"types": ["f16"]},
            "evaluate": {"prompts": [{"prompt": "Who are you?"}], "maxTokens": 8, **evaluate},
        },
    }


def published_metadata(tmp_path: Path, stage: str) -> dict[str, Any]:
    store = open_store(str(tmp_path / "store"))
    (folder,) = (tmp_path / "store" / "default" / NAME / stage).iterdir()
    found = read_manifest(store, f"default/{NAME}/{stage}/{folder.name}")
    assert found is not None, f"{stage} published nothing"
    return dict(found.metadata)


def test_the_default_gate_passes_a_model_that_learnt_and_a_bound_it_misses_fails_the_evaluate_stage_alone(
    tmp_path: Path,
) -> None:
    first = run_manifest(tmp_path, manifest({}))
    assert first.returncode == 0, first.stderr[-3000:]

    train = published_metadata(tmp_path, "train")
    base, final = train["baseEvalLoss"], train["finalEvalLoss"]
    assert train["evalSamples"] > 0 and final < base, train
    verdict = published_metadata(tmp_path, "evaluate")["evalLoss"]
    assert (verdict["checked"], verdict["failure"], verdict["maxEvalLossRatio"]) == (True, None, 1.0)
    status = json.loads((tmp_path / ".kubetune" / "runs" / "default" / NAME / "status.json").read_text())["status"]
    assert (status["progress"]["evalLoss"], status["progress"]["baseEvalLoss"]) == (final, base)

    bound = round(final / 2, 4)
    second = run_manifest(tmp_path, manifest({"maxEvalLoss": bound}))
    assert second.returncode != 0
    assert f"gate failed: eval loss {final:.4f} > evaluate.maxEvalLoss {bound:g}" in second.stderr + second.stdout
    stages = json.loads((tmp_path / ".kubetune" / "runs" / "default" / NAME / "status.json").read_text())[
        "status"]["stages"]
    assert [stage for stage, view in stages.items() if view["phase"] == "Cached"] == ["dataset", "train", "merge",
                                                                                      "convert"]
