"""On a CPU each LoRA linear layer trains as one fused op: peft's values and gradients; with int8 base matmuls, close
to them in training and exactly them in every pass without grad."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft.tuners.lora import Linear as PeftLoraLinear
from transformers import AutoModelForCausalLM, LlamaConfig

from kubetune.jobs import train_model
from kubetune.jobs.train_attention import VARLEN_ATTENTION
from kubetune.jobs.train_cpu_lora import CpuLoraLinear, QuantizedInput, quantize_rows
from kubetune.jobs.train_data import IGNORE_INDEX, JoinedBatcher, Sample
from kubetune.jobs.train_loss import chunked_causal_lm_loss_sum
from kubetune.jobs.train_model import LoadedModel, build_model

SHAPE: dict[str, Any] = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2}


class Lora:
    r, alpha, target_modules = 4, 5, ["all-linear"]  # scaling 1.25

    def __init__(self, dropout: float = 0.0) -> None:
        self.dropout = dropout


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE)).save_pretrained(str(folder))
    return folder


def load(model_dir: Path, *, fused: bool = True, int8: bool = False, dropout: float = 0.0,
         monkeypatch: pytest.MonkeyPatch | None = None) -> LoadedModel:
    if not fused:
        assert monkeypatch is not None
        monkeypatch.setattr(train_model, "fuse_cpu_lora_layers", lambda model, int8: (0, 0))
    torch.manual_seed(0)
    loaded = build_model(model_dir, 256, method="lora", quantization=None, lora=Lora(dropout),
                         device=torch.device("cpu"), gradient_checkpointing=False, int8=int8)
    if monkeypatch is not None:
        monkeypatch.undo()
    for name, parameter in loaded.model.named_parameters():  # LoRA B starts at zero: give A a gradient path
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02, generator=torch.Generator().manual_seed(len(name)))
    loaded.model.train()
    return loaded


def batch() -> Any:
    data = [Sample(list(range(3, 3 + n)), [IGNORE_INDEX] * 2 + list(range(5, 3 + n))) for n in (11, 7, 13, 5)]
    return JoinedBatcher(batch_size=4, pad_token_id=0).collate([[sample] for sample in data])


def loss_and_grads(loaded: LoadedModel) -> tuple[float, dict[str, torch.Tensor]]:
    loss = chunked_causal_lm_loss_sum(loaded.model, batch())
    loss.backward()
    grads = {name: p.grad.clone() for name, p in loaded.model.named_parameters() if p.grad is not None}
    loaded.model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_every_adapted_linear_layer_is_fused_on_a_cpu(model_dir: Path) -> None:
    loaded = load(model_dir)
    layers = [m for m in loaded.model.modules() if isinstance(m, PeftLoraLinear)]
    assert len(layers) == 2 * 7 and all(type(m) is CpuLoraLinear for m in layers)
    assert loaded.int8_layers == 0


def test_fused_layers_train_with_peft_values_and_gradients(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    peft_loss, peft_grads = loss_and_grads(load(model_dir, fused=False, monkeypatch=monkeypatch))
    fused_loss, fused_grads = loss_and_grads(load(model_dir))
    assert fused_loss == pytest.approx(peft_loss, rel=1e-6)
    assert fused_grads.keys() == peft_grads.keys() and len(fused_grads) == 2 * 7 * 2
    for name, grad in fused_grads.items():
        assert relative(grad, peft_grads[name]) < 1e-5, name


def test_int8_base_matmuls_train_close_to_fp32(model_dir: Path) -> None:
    exact_loss, exact_grads = loss_and_grads(load(model_dir))
    loaded = load(model_dir, int8=True)
    assert loaded.int8_layers == 2 * 7
    int8_loss, int8_grads = loss_and_grads(loaded)
    assert int8_loss == pytest.approx(exact_loss, rel=1e-2) and int8_loss != exact_loss
    for name, grad in int8_grads.items():
        assert relative(grad, exact_grads[name]) < 0.05, name


def test_passes_without_grad_keep_fp32_numerics_and_disabled_adapters_give_the_base(model_dir: Path) -> None:
    exact, int8 = load(model_dir), load(model_dir, int8=True)
    inputs = batch().model_inputs()
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation=VARLEN_ATTENTION).eval()
    with torch.no_grad():
        assert torch.equal(int8.model(**inputs).logits, exact.model(**inputs).logits)
        with exact.model.disable_adapter():
            without = exact.model(**inputs).logits
        torch.testing.assert_close(without, base(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_autocast_takes_peft_path_with_its_casts(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fused, unfused = load(model_dir, int8=True), load(model_dir, fused=False, monkeypatch=monkeypatch)
    inputs = batch().model_inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fused.model(**inputs).logits, unfused.model(**inputs).logits)


def test_layers_with_dropout_keep_peft_path(model_dir: Path) -> None:
    loaded = load(model_dir, dropout=0.1)
    assert not any(type(m) is CpuLoraLinear for m in loaded.model.modules())


@pytest.mark.parametrize("seed", range(5))
def test_row_quantization_is_within_half_a_step_and_keeps_zero_rows(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(17, 40, generator=generator) * torch.logspace(-6, 3, 17)[:, None]
    matrix[3] = 0.0
    quantized, scale = quantize_rows(matrix)
    assert quantized.dtype == torch.int8 and scale.shape == (17, 1)
    assert int(quantized.abs().max()) == 127 and torch.all(quantized[3] == 0)
    assert torch.all((quantized.float() * scale - matrix).abs() <= scale / 2 * (1 + 1e-5))


def test_an_input_shared_by_several_layers_is_quantized_once_until_it_changes() -> None:
    cache, source = QuantizedInput(), torch.randn(6, 8)
    first = cache.get(source, source)
    assert cache.get(source, source) is first
    source.mul_(2.0)  # in place: a new version
    second = cache.get(source, source)
    assert second is not first and torch.equal(second[1], first[1] * 2)
    assert cache.get(source.clone(), source) is not second
