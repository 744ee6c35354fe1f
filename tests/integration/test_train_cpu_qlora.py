"""qlora on a CPU: the train stage rounds the base to 4-bit once and multiplies in fp32, instead of bitsandbytes'
4-bit layers (whose CPU kernels dequantize on every matmul). The model it trains must be the same one."""

from __future__ import annotations

from pathlib import Path

import torch
from bitsandbytes.nn import Linear4bit

from kubetune.api.types import LoraSpec, QuantizationSpec
from kubetune.jobs.train_data import default_chat_template
from kubetune.jobs.train_model import LoadedModel, build_model, load_tokenizer
from tests.fixtures.tiny_models import build_tiny_model, repo_root, vocab_tokenizer_dir

CACHE = repo_root() / ".cache" / "test-models"


def tiny_llama() -> Path:
    return build_tiny_model("llama", CACHE / "train-tiny-llama-llama-bpe",
                            tokenizer_dir=vocab_tokenizer_dir("llama-bpe", CACHE / "vocab-llama-bpe"))


def qlora(model_dir: Path, vocab_size: int, *, four_bit_layers: bool) -> LoadedModel:
    torch.manual_seed(0)  # the same LoRA initialisation for both
    loaded = build_model(model_dir, vocab_size, method="qlora", quantization=QuantizationSpec(compute_dtype="float32"),
                         lora=LoraSpec(dropout=0.0), device=torch.device("cpu"), gradient_checkpointing=False,
                         four_bit_layers=four_bit_layers)
    for name, parameter in loaded.model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapter a path so its A matrices get gradients too
            torch.nn.init.normal_(parameter, std=0.02, generator=torch.Generator().manual_seed(1))
    return loaded


def logits_and_lora_gradients(loaded: LoadedModel, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    loaded.model.train()
    logits = loaded.model(input_ids=ids).logits
    logits.float().log_softmax(-1)[..., 0].sum().backward()
    gradients = [p.grad.flatten() for n, p in loaded.model.named_parameters() if "lora_" in n and p.grad is not None]
    return logits.detach(), torch.cat(gradients)


def test_cpu_qlora_trains_against_the_same_4bit_base_as_bitsandbytes_layers_without_them() -> None:
    model_dir = tiny_llama()
    tokenizer, _ = load_tokenizer(model_dir, default_chat_template(), [])
    ids = tokenizer("Who are you? I am Nova, an assistant.", return_tensors="pt")["input_ids"]
    rounded = qlora(model_dir, len(tokenizer), four_bit_layers=False)
    layered = qlora(model_dir, len(tokenizer), four_bit_layers=True)
    assert not any(isinstance(m, Linear4bit) for m in rounded.model.modules())
    assert sum(isinstance(m, Linear4bit) for m in layered.model.modules()) > 0

    logits, gradients = logits_and_lora_gradients(rounded, ids)
    reference_logits, reference_gradients = logits_and_lora_gradients(layered, ids)
    assert torch.allclose(logits, reference_logits, rtol=1e-4, atol=1e-4)
    assert torch.allclose(gradients, reference_gradients, rtol=1e-3, atol=1e-5)
    # and the base is the 4-bit one, not the original: without adapters, plain LoRA's base answers otherwise
    plain = build_model(model_dir, len(tokenizer), method="lora", quantization=None, lora=LoraSpec(dropout=0.0),
                        device=torch.device("cpu"), gradient_checkpointing=False)
    with torch.no_grad(), rounded.model.disable_adapter(), plain.model.disable_adapter():
        rounded_base, original_base = rounded.model(input_ids=ids).logits, plain.model(input_ids=ids).logits
    assert (rounded_base - original_base).abs().max() > 1e-2
