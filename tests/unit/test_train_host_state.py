"""In the memory-lean mode (`training.activationOffload`) a frozen input embedding that is not tied to the output head
waits in host memory and looks its rows up there: the loss and every LoRA gradient are exactly those of the table on
the device, the table is no parameter that `.to()` could move back, the adapter files are unchanged, and tied, trained
or LoRA-adapted embeddings stay in the model as they were. (On a CPU "host" and device are one; on a GPU the table is
pinned and the rows travel without blocking.)"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlamaConfig, Qwen2Config

from kubetune.jobs.train_host_state import HostAdamW, embedding_on_host, keep_input_embedding_on_host
from kubetune.jobs.train_loop import LoopSettings, load_optimizer_state, make_optimizer
from kubetune.jobs.train_model import LoadedModel, build_model
from tests.unit.test_train_offload import SHAPE, Lora, load, tiny_model, two_steps


def input_embedding(loaded: LoadedModel) -> torch.nn.Module:
    module = loaded.model.get_base_model().get_input_embeddings()
    assert isinstance(module, torch.nn.Module)
    return module


def test_host_embedding_gives_exactly_the_device_embedding_loss_and_gradients(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path, LlamaConfig(**SHAPE))
    on_device = load(folder, offload=False)
    on_host = load(folder, offload=True)
    assert not on_device.host_embedding and not embedding_on_host(input_embedding(on_device))
    assert on_host.host_embedding and embedding_on_host(input_embedding(on_host))
    device_losses, device_grads = two_steps(on_device)
    host_losses, host_grads = two_steps(on_host)
    assert host_losses == device_losses
    assert host_grads.keys() == device_grads.keys()
    for name, grad in device_grads.items():
        assert torch.equal(host_grads[name], grad), name


def test_the_table_is_no_parameter_and_to_never_moves_it(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path, LlamaConfig(**SHAPE))
    reference = load(folder, offload=False).model.get_base_model().get_input_embeddings().weight.detach().clone()
    loaded = load(folder, offload=True)
    base = loaded.model.get_base_model()
    table = base.get_input_embeddings().weight
    assert torch.equal(table, reference) and not isinstance(table, torch.nn.Parameter)
    assert all(p is not table for p in loaded.model.parameters())
    assert all(b is not table for b in loaded.model.buffers())
    assert not any(name.endswith("embed_tokens.weight") for name in base.state_dict())
    loaded.model.to(torch.device("meta"))  # every parameter and buffer moves; the table stays where it is
    assert next(loaded.model.parameters()).device.type == "meta"
    assert base.get_input_embeddings().weight is table and table.device.type == "cpu"
    assert torch.equal(table, reference)


def test_the_device_copy_of_the_table_is_freed(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path, LlamaConfig(**SHAPE))
    loaded = load(folder, offload=False)  # offload off: the table is still the model's parameter
    base = loaded.model.get_base_model()
    parameter = weakref.ref(base.get_input_embeddings().weight)
    assert keep_input_embedding_on_host(base, torch.device("cpu"))
    assert parameter() is None
    assert not keep_input_embedding_on_host(base, torch.device("cpu"))  # once


def test_eval_forwards_read_the_same_rows(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path, LlamaConfig(**SHAPE))
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]])
    logits = []
    for offload in (False, True):
        model = load(folder, offload=offload).model
        model.eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    assert torch.equal(logits[0], logits[1])


def adapter_tensors(loaded: LoadedModel, folder: Path) -> dict[str, torch.Tensor]:
    assert isinstance(loaded.model, PeftModel)
    loaded.model.save_pretrained(str(folder), save_embedding_layers=False)  # as the checkpoints save it
    return load_file(str(folder / "adapter_model.safetensors"))


def test_the_adapter_files_are_unchanged(tmp_path: Path) -> None:
    folder = tiny_model(tmp_path / "model", LlamaConfig(**SHAPE))
    on_device, on_host = load(folder, offload=False), load(folder, offload=True)
    two_steps(on_device), two_steps(on_host)
    for loaded in (on_device, on_host):  # one optimizer step each: the adapter then differs from its start
        with torch.no_grad():
            for parameter in loaded.model.parameters():
                if parameter.grad is not None:
                    parameter -= 0.1 * parameter.grad
    expected = adapter_tensors(on_device, tmp_path / "device")
    saved = adapter_tensors(on_host, tmp_path / "host")
    assert saved.keys() == expected.keys() and not any("embed" in name for name in saved)
    for name, tensor in expected.items():
        assert torch.equal(saved[name], tensor), name


class LoraOnTheEmbedding(Lora):
    target_modules = ["q_proj", "embed_tokens"]  # noqa: RUF012 - as Lora's


def test_tied_trained_or_adapted_embeddings_stay_in_the_model(tmp_path: Path) -> None:
    tied = load(tiny_model(tmp_path / "tied", Qwen2Config(**SHAPE, tie_word_embeddings=True)), offload=True)
    assert tied.offloaded_layers == 3 and not tied.host_embedding
    base = tied.model.get_base_model()
    assert base.get_input_embeddings().weight is base.get_output_embeddings().weight
    untied = tiny_model(tmp_path / "untied", LlamaConfig(**SHAPE))
    # Two added tokens: peft trains their rows (trainable tokens wrap the embedding).
    trained = build_model(untied, 258, method="lora", quantization=None, lora=Lora(), device=torch.device("cpu"),
                          gradient_checkpointing=True, activation_offload=True)
    assert trained.new_token_ids == [256, 257] and not trained.host_embedding
    adapted = build_model(untied, 256, method="lora", quantization=None, lora=LoraOnTheEmbedding(),
                          device=torch.device("cpu"), gradient_checkpointing=True, activation_offload=True)
    assert not adapted.host_embedding
    for loaded in (tied, trained, adapted):
        assert not embedding_on_host(input_embedding(loaded))


def lora_like_parameters(seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((4, 16), (16, 4), (8,))]


def train(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: range) -> None:
    """Steps with seeded gradients; the last parameter gets none in odd steps (AdamW then leaves it alone)."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - (steps.start + step) / 10)
    for step in steps:
        generator = torch.Generator().manual_seed(100 + step)
        for index, param in enumerate(params):
            param.grad = None if index == 2 and step % 2 else torch.randn(param.shape, generator=generator)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def test_host_adamw_steps_as_fused_adamw_and_keeps_no_state_with_the_parameters() -> None:
    expected, host = lora_like_parameters(0), lora_like_parameters(0)
    train(torch.optim.AdamW(expected, lr=0.1, weight_decay=0.01, fused=True), expected, range(5))
    optimizer = HostAdamW(host, lr=0.1, weight_decay=0.01)
    train(optimizer, host, range(5))
    for param, reference in zip(host, expected, strict=True):
        assert torch.equal(param, reference)
    assert not optimizer.state  # the moments are the host optimizer's, by its mirrors
    assert len(optimizer.host.state) == 3


def fused_adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)  # as make_optimizer on a GPU


def test_host_adamw_checkpoints_resume_with_either_optimizer() -> None:
    straight = lora_like_parameters(1)
    train(fused_adamw(straight, lr=0.1, weight_decay=0.01), straight, range(6))
    for first, second in ((HostAdamW, fused_adamw), (fused_adamw, HostAdamW)):
        params = lora_like_parameters(1)
        before = first(params, lr=0.1, weight_decay=0.01)
        train(before, params, range(3))
        saved = before.state_dict()
        after = second(params, lr=0.1, weight_decay=0.01)
        load_optimizer_state(after, saved)  # as the train stage resumes
        # The saver's implementation flags stay behind: a fused AdamW resumed from the lean mode's state stays fused.
        assert after.param_groups[0]["fused"] is (True if second is fused_adamw else None)
        train(after, params, range(3, 6))
        for param, reference in zip(params, straight, strict=True):
            assert torch.equal(param, reference), f"{first.__name__} -> {second.__name__}"


def test_the_lean_modes_optimizer_follows_the_schedule_as_adamw_does() -> None:
    """`make_optimizer(host_moments=True)` (the train stage's choice under activation offload) gives HostAdamW,
    driven by the same schedule to the same parameters as the plain optimizer."""
    settings = LoopSettings(learning_rate=0.05, lr_scheduler="linear", warmup_ratio=0.25, gradient_accumulation=1,
                            seed=0, logging_steps=1, checkpoint_every=10)
    results = []
    for host_moments in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        optimizer, scheduler = make_optimizer(model, settings, 8, host_moments=host_moments)
        assert isinstance(optimizer, HostAdamW) == host_moments
        rates = []
        for step in range(8):
            model(torch.full((2, 4), float(step))).square().sum().backward()
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        results.append((rates, [p.detach().clone() for p in model.parameters()]))
    (rates, params), (host_rates, host_params) = results
    assert host_rates == rates and rates[0] == 0.0 and max(rates) == 0.05
    for param, host_param in zip(params, host_params, strict=True):
        torch.testing.assert_close(host_param, param)  # CPU AdamW unfused there, fused here: rounding apart
