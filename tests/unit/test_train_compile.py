"""Compiled decoder layers train the same model as eager ones: same loss, same LoRA gradients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

from kubetune.jobs.train_data import IGNORE_INDEX, PackedBatcher, PaddedBatcher, Sample
from kubetune.jobs.train_loss import chunked_causal_lm_loss_sum
from kubetune.jobs.train_model import ModelSetupError, build_model, recomputed_layers


class Lora:
    r, alpha, dropout, target_modules = 4, 8, 0.0, ["all-linear"]


def tiny_model(folder: Path, config: PretrainedConfig) -> Path:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    return folder


def step(folder: Path, *, compile_layers: bool, packed: bool = True) -> tuple[float, dict[str, torch.Tensor], bool]:
    torch.manual_seed(0)
    loaded = build_model(folder, 256, method="lora", quantization=None, lora=Lora(), device=torch.device("cpu"),
                         gradient_checkpointing=True, compile_layers=compile_layers)
    for name, parameter in loaded.model.named_parameters():  # LoRA B starts at zero: give it a gradient path
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    data = [Sample(list(range(3, 3 + n)), [IGNORE_INDEX] * 2 + list(range(5, 3 + n))) for n in (11, 7, 13, 5)]
    if packed:
        batch = PackedBatcher(batch_size=2, max_seq_length=20, pad_token_id=0).collate([data[:2], data[2:]])
    else:
        batch = PaddedBatcher(batch_size=4, pad_token_id=0).collate([[sample] for sample in data])
    loss = chunked_causal_lm_loss_sum(loaded.model, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in loaded.model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, loaded.compiled


SHAPE: dict[str, Any] = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.mark.parametrize("config", [LlamaConfig(**SHAPE), Qwen2Config(**SHAPE), Qwen3Config(**SHAPE, head_dim=16),
                                    MistralConfig(**SHAPE)], ids=["llama", "qwen2", "qwen3", "mistral"])
def test_compiled_layers_give_the_eager_loss_and_gradients(tmp_path: Path, config: PretrainedConfig) -> None:
    folder = tiny_model(tmp_path, config)
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    eager_loss, eager_grads, eager_compiled = step(folder, compile_layers=False)
    assert counters["stats"]["unique_graphs"] == graphs
    compiled_loss, compiled_grads, compiled = step(folder, compile_layers=True)
    assert compiled and not eager_compiled
    assert counters["stats"]["unique_graphs"] == graphs + 1, "one graph for both layers"
    assert sum(counters["graph_break"].values()) == breaks
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
    assert compiled_grads.keys() == eager_grads.keys() and len(eager_grads) == 2 * 7 * 2  # A and B, 7 linears, 2 layers
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-5, rtol=1e-3, msg=name)


def test_compiled_layers_give_the_eager_gradients_on_padded_batches_too(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path, LlamaConfig(**SHAPE))
    eager_loss, eager_grads, _ = step(folder, compile_layers=False, packed=False)
    compiled_loss, compiled_grads, _ = step(folder, compile_layers=True, packed=False)
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-4)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-5, rtol=1e-3, msg=name)


def test_a_family_we_do_not_compile_stays_eager(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path, GPT2Config(vocab_size=256, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    loaded = build_model(folder, 256, method="lora", quantization=None, lora=Lora(), device=torch.device("cpu"),
                         gradient_checkpointing=False, compile_layers=True)
    assert not loaded.compiled


@pytest.mark.parametrize("share, expected", [
    (1.0, "RRRRRRRR"), (0.0, "kkkkkkkk"), (0.5, "kRkRkRkR"), (0.75, "kRRRkRRR"), (0.25, "kkkRkkkR"),
])
def test_a_share_of_the_layers_recomputes_spread_evenly(share: float, expected: str) -> None:
    assert "".join("R" if r else "k" for r in recomputed_layers(8, share)) == expected


def test_only_the_chosen_layers_keep_checkpointing(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path, LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1))
    loaded = build_model(folder, 256, method="lora", quantization=None, lora=Lora(), device=torch.device("cpu"),
                         gradient_checkpointing=True, recompute_share=0.5, compile_layers=False)
    layers = loaded.model.get_base_model().model.layers
    assert [layer.gradient_checkpointing for layer in layers] == [False, True, False, True]
    with pytest.raises(ModelSetupError, match=r"within \[0, 1\]"):
        recomputed_layers(4, 1.5)
