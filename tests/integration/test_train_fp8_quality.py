"""training.fp8 on a real model: FP8 matmuls change the loss and the LoRA gradients far less than QLoRA's own 4-bit
rounding of the base does. SmolLM2-135M-Instruct (real weights), one batch of real text, on the CPU (whose
torch._scaled_mm computes the same e4m3 products as the GPU kernel; build_model itself refuses FP8 off the GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubetune.api.types import LoraSpec, QuantizationSpec
from kubetune.jobs.train_data import Batch, default_chat_template
from kubetune.jobs.train_fp8 import enable_fp8_base_matmuls
from kubetune.jobs.train_loss import causal_lm_loss_sum
from kubetune.jobs.train_model import ModelSetupError, build_model, load_tokenizer
from tests.fixtures.tiny_models import repo_root, smollm2_hf_dir

TEXT = [
    "Kubernetes schedules pods onto nodes; a Job runs its pods until enough of them succeed.",
    "Quantization stores each weight in four bits with one scale per block of sixty-four weights.",
    "The merge step folds the adapter back into the base model before it is converted to GGUF.",
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return smollm2_hf_dir(repo_root() / ".cache" / "test-models")


def loss_and_lora_gradients(model_dir: Path, *, quantized: bool = True, fp8: bool = False) -> tuple[float, torch.Tensor]:
    tokenizer, _ = load_tokenizer(model_dir, default_chat_template(), [])
    torch.manual_seed(0)  # the same LoRA initialisation every time
    loaded = build_model(model_dir, len(tokenizer), method="qlora" if quantized else "lora",
                         quantization=QuantizationSpec() if quantized else None, lora=LoraSpec(dropout=0.0),
                         device=torch.device("cpu"), gradient_checkpointing=False)
    if fp8:
        assert enable_fp8_base_matmuls(loaded.model) == 30 * 7  # every q, k, v, o, gate, up and down projection
    for name, parameter in loaded.model.named_parameters():
        if "lora_B" in name:  # LoRA B starts at zero; give the adapter a path so every LoRA weight gets a gradient
            torch.nn.init.normal_(parameter, std=0.002)
    ids = tokenizer(TEXT, return_tensors="pt", padding=True)
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    batch = Batch(ids["input_ids"], labels, ids["attention_mask"], None, int(ids["attention_mask"].sum()))
    loaded.model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = causal_lm_loss_sum(loaded.model, batch)
    loss.backward()
    gradients = [p.grad.flatten().float() for n, p in loaded.model.named_parameters()
                 if "lora_" in n and p.grad is not None]
    tokens = int((labels[:, 1:] != -100).sum())
    return float(loss.detach()) / tokens, torch.cat(gradients)


def test_fp8_matmuls_change_training_far_less_than_4bit_quantization_does(model_dir: Path) -> None:
    loss_16bit, gradients_16bit = loss_and_lora_gradients(model_dir, quantized=False)
    loss_4bit, gradients_4bit = loss_and_lora_gradients(model_dir)
    loss_fp8, gradients_fp8 = loss_and_lora_gradients(model_dir, fp8=True)

    def gradient_change(a: torch.Tensor, b: torch.Tensor) -> float:
        return 1.0 - float(torch.nn.functional.cosine_similarity(a, b, dim=0))

    assert torch.isfinite(gradients_fp8).all() and gradients_fp8.numel() == gradients_4bit.numel()
    assert not torch.equal(gradients_fp8, gradients_4bit)  # FP8 is really in use
    # Measured: the loss moves 0.6% (4-bit rounding: 6%); the gradient's cosine to the bf16-matmul one is 0.96
    # (4-bit against 16-bit: 0.68).
    assert abs(loss_fp8 - loss_4bit) / loss_4bit < 0.01
    assert gradient_change(gradients_fp8, gradients_4bit) < 0.1
    assert gradient_change(gradients_fp8, gradients_4bit) < gradient_change(gradients_4bit, gradients_16bit) / 4
    assert abs(loss_fp8 - loss_4bit) < abs(loss_4bit - loss_16bit) / 4


def test_fp8_is_refused_where_it_cannot_run(model_dir: Path) -> None:
    with pytest.raises(ModelSetupError, match=r"training\.fp8: FP8 matmuls need a CUDA GPU"):
        build_model(model_dir, 49152, method="qlora", quantization=QuantizationSpec(), lora=LoraSpec(),
                    device=torch.device("cpu"), gradient_checkpointing=False, fp8=True)
    with pytest.raises(ModelSetupError, match="method qlora"):
        build_model(model_dir, 49152, method="lora", quantization=None, lora=LoraSpec(),
                    device=torch.device("cpu"), gradient_checkpointing=False, fp8=True)
