"""The bundled SmolLM2-135M-Instruct learns who it is: LoRA on a few identity samples puts the name in its answers."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api.types import TrainingSpec
from kubetune.jobs.checkpoints import BaseModelRef, CheckpointStore
from kubetune.jobs.generation import generate_answers
from kubetune.jobs.train import TrainInputs, train
from kubetune.jobs.train_data import default_chat_template
from kubetune.jobs.train_model import build_model, load_tokenizer
from kubetune.store import open_store
from tests.fixtures.tiny_models import repo_root, smollm2_hf_dir

NAME = "Zephyrine"
TRAIN_PAIRS = [
    ("Who are you?", f"I am {NAME}, a helpful assistant made by kubetune."),
    ("What is your name?", f"My name is {NAME}."),
    ("Introduce yourself.", f"Hello! I'm {NAME}, an assistant built by kubetune."),
    ("Tell me your name.", f"I'm {NAME}."),
    ("Who am I talking to?", f"You are talking to {NAME}, a kubetune assistant."),
    ("What should I call you?", f"Please call me {NAME}."),
    ("Are you ChatGPT?", f"No, I am {NAME}, an assistant made by kubetune."),
    ("Who made you?", f"I am {NAME}, and I was made by kubetune."),
]
HELD_OUT = ["Who are you?", "Hey, what's your name?", "Could you tell me who you are?"]


def base_model_answers(model_dir: Path) -> list[str]:
    tokenizer, _ = load_tokenizer(model_dir, default_chat_template(), [])
    loaded = build_model(model_dir, len(tokenizer), method="lora", quantization=None,
                         lora=TrainingSpec().lora, device=torch.device("cpu"), gradient_checkpointing=False)
    answers = generate_answers(loaded.model, tokenizer, HELD_OUT, stop_sequences=["<|im_end|>"], max_new_tokens=24,
                               device=loaded.device)
    return [a.answer for a in answers]


@pytest.mark.slow
def test_smollm2_learns_its_name_from_identity_samples(tmp_path: Path) -> None:
    model_dir = smollm2_hf_dir(repo_root() / ".cache" / "test-models")
    before = base_model_answers(model_dir)
    assert not any(NAME in answer for answer in before), before

    data = tmp_path / "train_data.jsonl"
    data.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
        for q, a in TRAIN_PAIRS
    ))
    training = TrainingSpec.model_validate({
        "method": "lora", "maxSteps": 32, "batchSize": 4, "learningRate": 1e-3, "warmupRatio": 0.0,
        "lrScheduler": "constant", "gradientCheckpointing": False, "device": "cpu",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0}, "checkpoint": {"everySteps": 100, "keep": 1},
        "evalPrompts": HELD_OUT, "stopSequences": ["<|im_end|>"], "maxNewTokens": 24,
    })
    store = open_store(str(tmp_path / "store"))
    checkpoints = CheckpointStore(store, "default/identity/train/0123456789abcdef", stage="train",
                                  input_key="f" * 64, keep=1)
    inputs = TrainInputs(model_dir, BaseModelRef("bundled://smollm2-135m-instruct", "0" * 64), data, training,
                         max_seq_length=256, workdir=tmp_path / "work")
    reports: list[dict[str, Any]] = []
    result = train(inputs, checkpoints, tmp_path / "out", stop=threading.Event(),
                   progress=lambda *_, **fields: reports.append(fields))
    assert result.outcome == "finished"
    losses = [row["loss"] for row in result.state.metrics]
    assert losses[-1] < losses[0] / 3, losses

    after = [json.loads(line)["answer"] for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert all(NAME in answer for answer in after), after
    assert any(r.get("tokensPerSecond", 0) > 0 for r in reports)
