"""Activation offload (`training.activationOffload`) changes where checkpointed layer inputs wait, never the maths:
the loss and every LoRA gradient are exactly those of plain checkpointing, with LoRA dropout on (the recompute must
draw the same masks), packed rows, eager or compiled layers. On a CPU the offload is a plain copy of the same path;
on a GPU (pinned memory, a side stream) `benchmarks/train_offload_check.py` compares it with plain checkpointing."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config
from transformers.modeling_layers import GradientCheckpointingLayer

from kubetune.jobs.train_data import IGNORE_INDEX, PackedBatcher, Sample
from kubetune.jobs.train_loss import chunked_causal_lm_loss_sum
from kubetune.jobs.train_model import LoadedModel, ModelSetupError, build_model
from kubetune.jobs.train_offload import MLPChunks, chunked_mlp_layers

SHAPE: dict[str, Any] = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                         "num_attention_heads": 4, "num_key_value_heads": 2}


class Lora:
    r, alpha, dropout, target_modules = 4, 8, 0.1, ["all-linear"]  # dropout: the recompute must repeat its masks


def tiny_model(folder: Path, config: LlamaConfig | Qwen2Config) -> Path:
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    return folder


def load(folder: Path, *, offload: bool, compile_layers: bool = False, recompute_share: float = 1.0) -> LoadedModel:
    torch.manual_seed(0)
    loaded = build_model(folder, 256, method="lora", quantization=None, lora=Lora(), device=torch.device("cpu"),
                         gradient_checkpointing=True, recompute_share=recompute_share,
                         compile_layers=compile_layers, activation_offload=offload)
    for name, parameter in loaded.model.named_parameters():  # LoRA B starts at zero: give it a gradient path
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    return loaded


def two_steps(loaded: LoadedModel) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Two micro-batches of packed rows, gradients accumulated (as the train loop does)."""
    data = [Sample(list(range(3, 3 + n)), [IGNORE_INDEX] * 2 + list(range(5, 3 + n))) for n in (11, 7, 13, 5, 9, 6)]
    batcher = PackedBatcher(batch_size=2, max_seq_length=20, pad_token_id=0)
    losses = []
    torch.manual_seed(1)
    loaded.model.train()
    for rows in ([data[:2], data[2:4]], [data[4:]]):
        loss = chunked_causal_lm_loss_sum(loaded.model, batcher.collate(rows))
        loss.backward()
        losses.append(float(loss.detach()))
    grads = {name: p.grad.clone() for name, p in loaded.model.named_parameters() if p.grad is not None}
    return losses, grads


@pytest.mark.parametrize("config", [LlamaConfig(**SHAPE), Qwen2Config(**SHAPE)], ids=["llama", "qwen2"])
def test_offloaded_inputs_give_exactly_the_checkpointed_loss_and_gradients(tmp_path: Path, config: LlamaConfig) -> None:
    folder = tiny_model(tmp_path, config)
    plain_losses, plain_grads = two_steps(load(folder, offload=False))
    offloaded = load(folder, offload=True)
    assert offloaded.offloaded_layers == 3
    losses, grads = two_steps(offloaded)
    assert losses == plain_losses
    assert grads.keys() == plain_grads.keys() and len(grads) == 3 * 7 * 2  # A and B of 7 linears in 3 layers
    for name, grad in plain_grads.items():
        assert torch.equal(grads[name], grad), name


def test_offload_works_with_compiled_layers(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path, LlamaConfig(**SHAPE))
    plain_losses, plain_grads = two_steps(load(folder, offload=False, compile_layers=True))
    loaded = load(folder, offload=True, compile_layers=True)
    assert loaded.compiled
    losses, grads = two_steps(loaded)
    assert losses == pytest.approx(plain_losses, rel=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_offload_recomputes_every_layer(tmp_path: Path) -> None:
    loaded = load(tiny_model(tmp_path, LlamaConfig(**SHAPE)), offload=True, recompute_share=0.5)
    layers = [m for m in loaded.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(layers) == 3 and all(layer.gradient_checkpointing for layer in layers)


def test_offload_without_checkpointing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelSetupError, match="gradientCheckpointing"):
        build_model(tiny_model(tmp_path, LlamaConfig(**SHAPE)), 256, method="lora", quantization=None, lora=Lora(),
                    device=torch.device("cpu"), gradient_checkpointing=False, activation_offload=True)


def test_eval_forwards_offload_nothing(tmp_path: Path) -> None:
    loaded = load(tiny_model(tmp_path, LlamaConfig(**SHAPE)), offload=True)
    loaded.model.eval()
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([[3, 4, 5, 6]])).logits
    assert logits.shape == (1, 4, 256)


def inputs_alive_after_forward(loaded: LoadedModel) -> tuple[int, int]:
    """(layer inputs still alive after forward, layers); then runs backward."""
    loaded.model.train()
    layers = [m for m in loaded.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    inputs: list[weakref.ref[torch.Tensor]] = []
    hooks = [layer.register_forward_pre_hook(lambda _m, args: inputs.append(weakref.ref(args[0]))) for layer in layers]
    batch = PackedBatcher(batch_size=2, max_seq_length=20, pad_token_id=0).collate(
        [[Sample(list(range(3, 14)), list(range(3, 14)))]])
    loss = chunked_causal_lm_loss_sum(loaded.model, batch)
    for hook in hooks:
        hook.remove()
    alive = sum(ref() is not None for ref in inputs)
    loss.backward()
    return alive, len(layers)


def test_between_forward_and_backward_only_the_offloaded_copies_hold_the_layer_inputs(tmp_path: Path) -> None:
    """Plain checkpointing keeps every layer's input alive until backward; with offload the tensors the layers read
    are freed after forward (on a GPU that is what frees GPU memory); the CPU copies stand in for them."""
    folder = tiny_model(tmp_path, LlamaConfig(**SHAPE))
    assert inputs_alive_after_forward(load(folder, offload=False)) == (3, 3)
    assert inputs_alive_after_forward(load(folder, offload=True)) == (0, 3)


class LoraWithoutDropout(Lora):
    dropout = 0.0


def load_without_dropout(folder: Path, *, offload: bool, mlp_chunk_elements: int | None = None,
                         compile_layers: bool = False) -> LoadedModel:
    torch.manual_seed(0)
    loaded = build_model(folder, 256, method="lora", quantization=None, lora=LoraWithoutDropout(),
                         device=torch.device("cpu"), gradient_checkpointing=True, compile_layers=compile_layers,
                         activation_offload=offload, mlp_chunk_elements=mlp_chunk_elements)
    for name, parameter in loaded.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    return loaded


def chunk_calls(loaded: LoadedModel) -> list[int]:
    """Counts the MLP chunks each layer runs (forward and backward) from here on."""
    calls: list[int] = []
    for module in loaded.model.modules():
        forward = getattr(module, "forward", None)
        if isinstance(forward, MLPChunks):
            run = forward.run

            def counted(x: torch.Tensor, run: Any = run) -> torch.Tensor:
                calls.append(x.shape[:-1].numel())
                return run(x)

            forward.run = counted
    return calls


@pytest.mark.parametrize("config", [LlamaConfig(**SHAPE), Qwen2Config(**SHAPE)], ids=["llama", "qwen2"])
def test_chunked_mlps_give_the_checkpointed_loss_and_gradients(tmp_path: Path, config: LlamaConfig) -> None:
    """Without LoRA dropout the offloaded layers run their MLPs in token chunks (here 5 tokens: 128 intermediate
    values per token); each token's maths is unchanged, the LoRA gradients are sums over the chunks. One chunk is
    plain checkpointing bit for bit."""
    folder = tiny_model(tmp_path, config)
    plain_losses, plain_grads = two_steps(load_without_dropout(folder, offload=False))
    whole_losses, whole_grads = two_steps(load_without_dropout(folder, offload=True, mlp_chunk_elements=None))
    chunked = load_without_dropout(folder, offload=True, mlp_chunk_elements=5 * 128)
    assert chunked_mlp_layers(chunked.model) == 3 and chunked_mlp_layers(load(folder, offload=True).model) == 0
    calls = chunk_calls(chunked)
    losses, grads = two_steps(chunked)
    # Two micro-batches (2 rows of 18 tokens, then one of 15): 8 and 3 chunks per layer in forward and again in
    # backward; the layers' recomputes skip the MLP.
    assert calls == ([5] * 7 + [1]) * 3 * 2 + [5] * 3 * 3 * 2
    assert whole_losses == plain_losses  # one chunk: bit for bit
    assert losses == pytest.approx(plain_losses, rel=1e-6)  # a CPU matmul over 5 rows rounds a little differently
    assert grads.keys() == plain_grads.keys() and len(grads) == 3 * 7 * 2
    for name, grad in plain_grads.items():
        assert torch.equal(whole_grads[name], grad), name
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_chunked_mlps_with_compiled_layers(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path, LlamaConfig(**SHAPE))
    plain_losses, plain_grads = two_steps(load_without_dropout(folder, offload=False, compile_layers=True))
    loaded = load_without_dropout(folder, offload=True, mlp_chunk_elements=5 * 128, compile_layers=True)
    assert loaded.compiled and chunked_mlp_layers(loaded.model) == 3
    losses, grads = two_steps(loaded)
    assert losses == pytest.approx(plain_losses, rel=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_chunked_mlps_outside_a_checkpoint_run_whole(tmp_path: Path) -> None:
    """Eval forwards, with or without grad, see the plain MLP (no chunks, no skipped recompute)."""
    folder = tiny_model(tmp_path, LlamaConfig(**SHAPE))
    plain = load_without_dropout(folder, offload=False)
    chunked = load_without_dropout(folder, offload=True, mlp_chunk_elements=5 * 128)
    calls = chunk_calls(chunked)
    ids = torch.tensor([list(range(3, 23))])
    for model in (plain.model, chunked.model):
        model.eval()
    with torch.no_grad():
        expected = plain.model(input_ids=ids).logits
        assert torch.equal(chunked.model(input_ids=ids).logits, expected)
    assert torch.equal(chunked.model(input_ids=ids).logits.detach(), expected)  # grad on, eval mode
    assert calls == [20] * 3 * 2


def autocast_step(loaded: LoadedModel) -> tuple[float, dict[str, torch.Tensor]]:
    """One packed micro-batch, forward in bf16 autocast (as the train loop runs a GPU step), backward after."""
    data = [Sample(list(range(3, 3 + n)), [IGNORE_INDEX] * 2 + list(range(5, 3 + n))) for n in (17, 13, 19)]
    loaded.model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_causal_lm_loss_sum(loaded.model, PackedBatcher(batch_size=1, max_seq_length=60,
                                                                      pad_token_id=0).collate([data]))
    loss.backward()
    return float(loss.detach()), {name: p.grad.clone() for name, p in loaded.model.named_parameters()
                                  if p.grad is not None}


def test_chunked_mlps_under_autocast(tmp_path: Path) -> None:
    """In bf16 the MLP's maths stays that of plain checkpointing: one chunk bit for bit (its input's gradients are
    summed in fp32, as for a layer's intermediate), several chunks to bf16 rounding (LoRA weight gradients come
    per chunk from bf16 matmuls)."""
    folder = tiny_model(tmp_path, LlamaConfig(**SHAPE))
    plain_loss, plain_grads = autocast_step(load_without_dropout(folder, offload=False))
    one_loss, one_grads = autocast_step(load_without_dropout(folder, offload=True, mlp_chunk_elements=2**30))
    chunked_loss, chunked_grads = autocast_step(load_without_dropout(folder, offload=True,
                                                                     mlp_chunk_elements=7 * 128))
    assert one_loss == plain_loss and chunked_loss == pytest.approx(plain_loss, rel=1e-3)
    for name, grad in plain_grads.items():
        assert torch.equal(one_grads[name], grad), name
        assert float((chunked_grads[name] - grad).norm() / grad.norm()) < 1e-2, name
