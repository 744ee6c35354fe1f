"""The chunked head + cross-entropy gives the same loss and gradients as full logits, without a batch × vocab tensor."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config

from kubetune.jobs import train_loss
from kubetune.jobs.train_data import IGNORE_INDEX, PackedBatcher, Sample
from kubetune.jobs.train_loss import (
    ChunkedHeadCrossEntropy,
    causal_lm_loss_sum,
    chunked_causal_lm_loss_sum,
    plain_head_parts,
)

VOCAB = 320
SHAPE: dict[str, Any] = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}
CONFIGS: dict[str, PretrainedConfig] = {
    "qwen2-tied": Qwen2Config(**SHAPE, tie_word_embeddings=True),
    "llama-untied": LlamaConfig(**SHAPE, tie_word_embeddings=False),
}


@pytest.mark.parametrize("rows, chunk", [(1, 1), (7, 3), (16, 16), (16, 5), (33, 64)])
def test_chunked_head_cross_entropy_matches_full_logits_in_value_and_gradient(rows: int, chunk: int) -> None:
    generator = torch.Generator().manual_seed(rows * 100 + chunk)
    hidden = torch.randn(rows, 24, generator=generator, dtype=torch.float64, requires_grad=True)
    head = torch.randn(50, 24, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 50, (rows,), generator=generator)

    chunked = ChunkedHeadCrossEntropy.apply(hidden, head, targets, chunk)
    (chunked * 0.5).backward()
    assert hidden.grad is not None
    chunked_grad = hidden.grad.clone()
    hidden.grad = None
    full = F.cross_entropy(hidden @ head.t(), targets, reduction="sum")
    (full * 0.5).backward()

    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(chunked_grad, hidden.grad)


def lora_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(CONFIGS[name], attn_implementation="sdpa")
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():  # LoRA B starts at zero: make the adapters matter so their gradients are compared too
        for parameter_name, parameter in model.named_parameters():
            if "lora_B" in parameter_name:
                parameter.normal_(std=0.02)
    return model


def packed_batch() -> object:
    generator = torch.Generator().manual_seed(1)
    samples = []
    for length in (9, 5, 12, 7):
        ids = torch.randint(0, VOCAB, (length,), generator=generator).tolist()
        samples.append(Sample(ids, [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]))
    return PackedBatcher(batch_size=2, max_seq_length=20, pad_token_id=0).collate([samples[:2], samples[2:]])


def loss_and_grads(model: torch.nn.Module, loss_function: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_function(model, packed_batch())  # type: ignore[operator]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("chunk_logits", [VOCAB * 3, 2**28])  # several chunks, one chunk
def test_chunked_loss_equals_the_full_logits_loss_through_a_lora_model(
    name: str, chunk_logits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = lora_model(name)
    assert plain_head_parts(model) is not None
    monkeypatch.setattr(train_loss, "CHUNK_LOGITS", chunk_logits)
    chunked, chunked_grads = loss_and_grads(model, chunked_causal_lm_loss_sum)
    full, full_grads = loss_and_grads(model, causal_lm_loss_sum)

    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    assert chunked_grads.keys() == full_grads.keys() and len(full_grads) > 0
    for key, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[key], grad, rtol=1e-4, atol=1e-6)


def test_a_trained_head_falls_back_to_the_full_logits_loss() -> None:
    model: Any = lora_model("llama-untied")
    model.get_base_model().get_output_embeddings().weight.requires_grad_(True)
    assert plain_head_parts(model) is None
    chunked, chunked_grads = loss_and_grads(model, chunked_causal_lm_loss_sum)
    full, _ = loss_and_grads(model, causal_lm_loss_sum)
    assert torch.equal(chunked, full)
    assert any("lm_head" in key for key in chunked_grads)
