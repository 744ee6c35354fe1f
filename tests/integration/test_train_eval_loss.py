"""Held-out loss in the train stage: the base model's before training, one per checkpoint, in the checkpoints'
metadata, in progress reports and in the outputs (metrics.json, metrics.csv, the stage's manifest figures)."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path
from typing import Any

import torch

from kubetune.api.types import TrainingSpec
from kubetune.jobs.checkpoints import BaseModelRef, CheckpointStore
from kubetune.jobs.eval_loss import eval_loss, load_eval_set
from kubetune.jobs.train import TrainInputs, TrainResult, output_metadata, train
from kubetune.jobs.train_data import default_chat_template, make_batcher
from kubetune.jobs.train_loss import causal_lm_loss_sum
from kubetune.jobs.train_model import build_model, load_tokenizer, pad_token_id
from kubetune.store import open_store, read_manifest
from tests.fixtures.tiny_models import build_tiny_model, repo_root, vocab_tokenizer_dir

CACHE = repo_root() / ".cache" / "test-models"
PREFIX = "default/held-out/train/0123456789abcdef"


def tiny_model() -> Path:
    return build_tiny_model("qwen2", CACHE / "train-tiny-qwen2-qwen2",
                            tokenizer_dir=vocab_tokenizer_dir("qwen2", CACHE / "vocab-qwen2"))


def write_conversations(path: Path, numbers: range) -> Path:
    """A learnable set: whatever the question, the same answer."""
    records = [{"messages": [{"role": "user", "content": f"Question number {i}?"},
                             {"role": "assistant", "content": "The answer is always forty two."}]}
               for i in numbers]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def training_spec() -> TrainingSpec:
    return TrainingSpec.model_validate({
        "maxSteps": 6, "batchSize": 4, "learningRate": 1e-2, "loggingSteps": 1, "device": "cpu",
        "lrScheduler": "constant", "warmupRatio": 0.0, "gradientCheckpointing": False,
        "checkpoint": {"everySteps": 2, "keep": 5}, "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    })


def run_train(tmp: Path, *, eval_split: bool) -> tuple[TrainResult, list[dict[str, Any]], CheckpointStore]:
    store = open_store(str(tmp / "store"))
    checkpoints = CheckpointStore(store, PREFIX, stage="train", input_key="b" * 64, keep=5)
    eval_path = write_conversations(tmp / "eval_data.jsonl", range(100, 106)) if eval_split else None
    inputs = TrainInputs(tiny_model(), BaseModelRef("file:///tiny", "c" * 64),
                         write_conversations(tmp / "train_data.jsonl", range(16)), training_spec(),
                         max_seq_length=48, workdir=tmp / "work", eval_data_path=eval_path)
    reports: list[dict[str, Any]] = []
    result = train(inputs, checkpoints, tmp / "out", stop=threading.Event(),
                   progress=lambda *_, **fields: reports.append(fields))
    return result, reports, checkpoints


def test_eval_loss_is_recorded_for_the_base_model_and_every_checkpoint_and_falls_as_the_model_learns(
    tmp_path: Path,
) -> None:
    result, reports, checkpoints = run_train(tmp_path, eval_split=True)

    assert result.outcome == "finished"
    records = result.state.eval_losses
    assert [r["step"] for r in records] == [0, 2, 4, 6]
    losses = [r["eval_loss"] for r in records]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] / 2, losses

    published = [read_manifest(checkpoints.store, checkpoints.prefix(name)) for name in checkpoints.names()]
    assert [m.metadata["evalLoss"] for m in published if m is not None] == losses[1:]
    assert [r["evalLoss"] for r in reports if "evalLoss" in r] == losses
    assert {r["baseEvalLoss"] for r in reports if "evalLoss" in r} == {losses[0]}

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["baseEvalLoss"] == losses[0] and metrics["finalEvalLoss"] == losses[-1]
    assert metrics["evalSamples"] == 6
    assert [e["evalLoss"] for e in metrics["evalLosses"]] == losses
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    assert [(row["step"], row["eval_loss"] != "") for row in rows] == [
        ("0", True), ("1", False), ("2", True), ("3", False), ("4", True), ("5", False), ("6", True)]
    figures = output_metadata(result)
    assert (figures["baseEvalLoss"], figures["finalEvalLoss"], figures["evalSamples"]) == (losses[0], losses[-1], 6)


def test_without_an_eval_split_nothing_is_measured_and_the_outputs_say_so(tmp_path: Path) -> None:
    result, reports, _ = run_train(tmp_path, eval_split=False)

    assert result.state.eval_losses == []
    assert not any("evalLoss" in r for r in reports)
    assert not (tmp_path / "out" / "metrics.json").exists()
    figures = output_metadata(result)
    assert (figures["baseEvalLoss"], figures["finalEvalLoss"], figures["evalSamples"]) == (None, None, 0)


def test_eval_loss_is_the_mean_over_assistant_tokens_however_the_split_is_batched(tmp_path: Path) -> None:
    model_dir = tiny_model()
    tokenizer, _ = load_tokenizer(model_dir, default_chat_template(), [])
    lora = training_spec().lora
    model = build_model(model_dir, len(tokenizer), method="lora", quantization=None, lora=lora,
                        device=torch.device("cpu"), gradient_checkpointing=False).model
    path = write_conversations(tmp_path / "eval_data.jsonl", range(7))
    figures = []
    for packing, batch_size in ((False, 1), (False, 3), (True, 2)):
        batcher = make_batcher(packing=packing, batch_size=batch_size, max_seq_length=48,
                               pad_token_id=pad_token_id(tokenizer))
        eval_set = load_eval_set(path, tokenizer, batcher, max_seq_length=48, seed=0)
        assert eval_set is not None and eval_set.samples == 7
        # The full-logits loss: the same sum the training loss computes in chunks.
        figures.append(eval_loss(model, eval_set, torch.device("cpu"), loss_function=causal_lm_loss_sum))
        figures.append(eval_loss(model, eval_set, torch.device("cpu")))
    assert max(figures) - min(figures) < 1e-5 * figures[0], figures
    assert model.training  # the model is left in the mode it was in
