"""Tiny random Llama / Qwen2 models with real tokenizers train, checkpoint to the store, stop and resume exactly."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from bitsandbytes.nn import Linear4bit
from peft import PeftModel
from safetensors.torch import load_file

from kubetune.api.types import LoraSpec, QuantizationSpec, TrainingSpec
from kubetune.jobs.checkpoints import BaseModelRef, CheckpointStore
from kubetune.jobs.generation import generate_answers
from kubetune.jobs.train import TrainInputs, TrainResult, train
from kubetune.jobs.train_data import default_chat_template
from kubetune.jobs.train_model import build_model, load_tokenizer
from kubetune.store import open_store, read_manifest
from tests.fixtures.tiny_models import Family, VocabName, build_tiny_model, repo_root, vocab_tokenizer_dir

CACHE = repo_root() / ".cache" / "test-models"
PREFIX = "default/demo/train/0123456789abcdef"
ADDED = ["<output>", "</output>"]

CASES: dict[str, tuple[Family, VocabName, dict[str, Any]]] = {
    "qwen2 lora padded": ("qwen2", "qwen2", {"method": "lora"}),
    "llama-bpe qlora packed": ("llama", "llama-bpe", {"method": "qlora", "packing": True,
                                                      "quantization": {"type": "nf4", "computeDtype": "float32"}}),
}


def tiny_model(family: Family, vocab: VocabName) -> Path:
    return build_tiny_model(family, CACHE / f"train-tiny-{family}-{vocab}",
                            tokenizer_dir=vocab_tokenizer_dir(vocab, CACHE / f"vocab-{vocab}"))


def write_dataset(path: Path, count: int = 12) -> Path:
    records = [
        {"messages": [{"role": "user", "content": f"Question number {i}?"},
                      {"role": "assistant", "content": f"<output>Answer {i}: I am Nova.</output>"}]}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def training_spec(**overrides: Any) -> TrainingSpec:
    fields: dict[str, Any] = {"maxSteps": 4, "batchSize": 2, "learningRate": 1e-3, "loggingSteps": 1, "device": "cpu",
              "checkpoint": {"everySteps": 2, "keep": 3}, "addedSpecialTokens": ADDED,
              "evalPrompts": ["Who are you?"], "maxNewTokens": 6, "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}
    fields.update(overrides)
    return TrainingSpec.model_validate(fields)


def run_train(tmp: Path, model_dir: Path, training: TrainingSpec, *, stop_at: int | None = None) -> TrainResult:
    store = open_store(str(tmp / "store"))
    checkpoints = CheckpointStore(store, PREFIX, stage="train", input_key="b" * 64, keep=training.checkpoint.keep)
    inputs = TrainInputs(model_dir, BaseModelRef("file:///tiny", "c" * 64), write_dataset(tmp / "data.jsonl"),
                         training, max_seq_length=48, workdir=tmp / "work")
    stop = threading.Event()
    reports: list[dict[str, Any]] = []

    def progress(phase: str = "Running", *, force: bool = False, **fields: Any) -> None:
        reports.append(fields)
        if stop_at is not None and fields.get("step") == stop_at and "loss" in fields:
            stop.set()  # what the SIGTERM handler does

    return train(inputs, checkpoints, tmp / "out", stop=stop, progress=progress)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_stopped_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(tmp_path: Path, case: str) -> None:
    family, vocab, overrides = CASES[case]
    model_dir = tiny_model(family, vocab)
    training = training_spec(**overrides)

    straight = run_train(tmp_path / "straight", model_dir, training)
    assert straight.outcome == "finished" and straight.state.step == 4

    stopped = run_train(tmp_path / "interrupted", model_dir, training, stop_at=3)
    assert stopped.outcome == "stopped" and stopped.state.last_checkpoint == "checkpoint-00000003"
    assert not (tmp_path / "interrupted" / "out").exists()  # outputs come only from a finished run
    resumed = run_train(tmp_path / "interrupted", model_dir, training)
    assert resumed.outcome == "finished" and resumed.state.step == 4

    # The curve continues from the checkpoint (steps 1-3 from before, 4 after) and equals the uninterrupted run.
    assert [row["step"] for row in resumed.state.metrics] == [1, 2, 3, 4]
    losses = [row["loss"] for row in resumed.state.metrics]
    assert losses == pytest.approx([row["loss"] for row in straight.state.metrics], rel=1e-4)
    assert resumed.added_tokens == straight.added_tokens

    out = tmp_path / "interrupted" / "out"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "metrics.csv").read_text().splitlines()[0] == "step,epoch,loss,learning_rate,tokens_per_second"
    assert len((out / "metrics.csv").read_text().splitlines()) == 5
    assert json.loads((out / "generations.jsonl").read_text().splitlines()[0])["prompt"] == "Who are you?"
    adapter = out / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "base_model.json"):
        assert (adapter / name).is_file(), name
    assert (adapter / "chat_template.jinja").read_text() == default_chat_template()
    assert json.loads((adapter / "base_model.json").read_text()) == {"uri": "file:///tiny", "digest": "c" * 64}
    # The new tokens' rows travel in the adapter, and only those rows.
    rows = {k: v.shape for k, v in load_file(str(adapter / "adapter_model.safetensors")).items() if "token" in k}
    assert rows and all(shape[0] == len(resumed.added_tokens) for shape in rows.values())

    store = open_store(str(tmp_path / "interrupted" / "store"))
    names = sorted({info.key.split("/")[5] for info in store.list(f"{PREFIX}/checkpoints")})
    assert names == ["checkpoint-00000002", "checkpoint-00000003", "checkpoint-00000004"]
    manifest = read_manifest(store, f"{PREFIX}/checkpoints/checkpoint-00000004")
    assert manifest is not None and manifest.metadata["step"] == 4
    files = {f.path for f in manifest.files}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pt", "trainer_state.json", "generations.jsonl"} <= files


@pytest.mark.slow
def test_extra_epochs_continue_a_finished_run_by_whole_epochs(tmp_path: Path) -> None:
    model_dir = tiny_model("qwen2", "qwen2")
    # 12 records / batch 4 = 3 steps per epoch.
    first = run_train(tmp_path, model_dir, training_spec(maxSteps=None, epochs=1, batchSize=4, evalPrompts=[]))
    assert first.state.step == 3 and first.state.epoch == pytest.approx(1.0)
    more = run_train(tmp_path, model_dir, training_spec(maxSteps=None, epochs=1, extraEpochs=1, batchSize=4,
                                                        evalPrompts=[]))
    assert more.state.step == 6 and more.state.epoch == pytest.approx(2.0)
    assert [row["step"] for row in more.state.metrics] == [1, 2, 3, 4, 5, 6]


def test_cpu_4bit_weights_stay_trainable_after_eval_generation() -> None:
    model_dir = tiny_model("llama", "llama-bpe")
    tokenizer, _ = load_tokenizer(model_dir, default_chat_template(), [])
    loaded = build_model(model_dir, len(tokenizer), method="qlora", quantization=QuantizationSpec(compute_dtype="float32"),
                         lora=LoraSpec(), device=torch.device("cpu"), gradient_checkpointing=True)
    assert isinstance(loaded.model, PeftModel)
    generate_answers(loaded.model, tokenizer, ["Hi"], stop_sequences=["</output>"], max_new_tokens=3,
                     device=loaded.device)
    quantized = [m for m in loaded.model.modules() if isinstance(m, Linear4bit)]
    assert quantized
    assert not any(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False) for m in quantized)
