"""Frozen state that waits in host memory in the memory-lean mode (`training.activationOffload`).

The input embedding table. On a model whose embedding is not tied to the output head (Llama-3.1-8B: 128,256 x 4,096
bf16 values, 0.98 GiB) the table only serves lookups: each micro-batch reads its tokens' rows once, and with the
table frozen nothing flows back into it. `keep_input_embedding_on_host` moves such a table to pinned host memory and
makes the module's forward look the rows up there (`index_select` into a pinned buffer) and copy them to the GPU
without blocking: 5,044 tokens x 4,096 x 2 bytes = 40 MB per micro-batch, where the table would have cost its whole
size for the whole run. The rows are the very values the GPU lookup returns (a lookup is a copy), so losses and
gradients are unchanged. Reading the token ids on the host waits for their copy to the GPU, the one wait it adds: at
the start of a step the GPU has nothing queued (the loop reads the step's loss), so only micro-batches after the
first of a step wait for the previous one's backward to drain.

Left on the GPU: a tied table (the head multiplies with it), trained rows (added tokens: peft's trainable tokens
wrap the module), LoRA on the embedding (peft wraps it too), and families whose embedding module does more than a
lookup (Gemma's scaled embedding).

The table is no parameter or buffer of the model any more: `Module.to`/`.cuda()` never move it back, `parameters()`
no longer lists it (so `model.device` is the decoder's), and the base's state dict lacks it, which nothing here
reads: checkpoints and the final adapter hold LoRA tensors only, and the merge reads the base model's files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import AdamW
from transformers import PreTrainedModel


class HostEmbeddingLookup:
    """The forward of an input embedding whose table is in host memory: token ids (on any device) to their rows on
    `device`."""

    def __init__(self, table: torch.Tensor, device: torch.device) -> None:
        self.table = table
        self.device = device

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.to("cpu").reshape(-1)
        # Pinned, so the copy below runs without blocking; the host allocator reuses the buffer only once that copy
        # has read it.
        rows = torch.empty((ids.numel(), self.table.shape[1]), dtype=self.table.dtype,
                           pin_memory=self.device.type == "cuda")
        torch.index_select(self.table, 0, ids, out=rows)
        return rows.view(*input_ids.shape, self.table.shape[1]).to(self.device, non_blocking=True)


def embedding_on_host(module: torch.nn.Module) -> bool:
    return isinstance(module.forward, HostEmbeddingLookup)


def keep_input_embedding_on_host(model: PreTrainedModel, device: torch.device) -> bool:
    """Move `model`'s input embedding table to (pinned, on CUDA) host memory and look rows up there, where the table
    is frozen, untied and looked up plainly (see the module docstring); returns whether it did."""
    embedding = model.get_input_embeddings()
    if type(embedding) is not torch.nn.Embedding or embedding.max_norm is not None or embedding_on_host(embedding):
        return False  # wrapped by peft (trained rows, LoRA), or a lookup that renormalises or scales rows
    weight = embedding.weight
    if weight.requires_grad or tied_to_head(model, weight):
        return False
    table = torch.empty(weight.shape, dtype=weight.dtype, pin_memory=device.type == "cuda")
    table.copy_(weight.detach())
    del embedding.weight  # out of the module's parameters: the device copy is freed, `.to()` never sees the table
    # A plain attribute (nn.Module keeps non-parameter tensors as such), for readers of `get_input_embeddings().weight`.
    setattr(embedding, "weight", table)  # noqa: B010 - the attribute is typed as a Parameter
    # The instance's forward: the module's __call__ (its hooks, e.g. peft's input-requires-grad one) stays.
    setattr(embedding, "forward", HostEmbeddingLookup(table, device))  # noqa: B010
    return True


def tied_to_head(model: PreTrainedModel, weight: torch.Tensor) -> bool:
    head = model.get_output_embeddings()
    head_weight = getattr(head, "weight", None)
    if not isinstance(head_weight, torch.Tensor):
        return False
    return head_weight is weight or head_weight.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()


class HostAdamW(AdamW):
    """AdamW whose moments stay in host memory: each step copies the parameters and their gradients to pinned host
    mirrors, updates the mirrors there (torch's fused CPU AdamW: the same update rule in fp32) and copies the
    parameters back. The GPU then holds no optimizer state (LoRA r16 of Qwen2.5-1.5B: 0.14 GiB; of Llama-3.1-8B:
    0.31 GiB), for two copies of the parameters and one of the gradients per optimizer step and the CPU's update.

    Its param groups hold the model's own parameters, so gradient clipping, the gradient sum over ranks and the
    learning-rate schedule see what they see with `AdamW`; its state dict has `AdamW`'s layout (moments by parameter
    index), so a checkpoint resumes with either."""

    def __init__(self, params: list[torch.nn.Parameter], *, lr: float, weight_decay: float) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)  # one group: the model's parameters
        self.pinned = any(p.is_cuda for p in params)
        self.mirrors = [torch.empty(p.shape, dtype=p.dtype, pin_memory=self.pinned) for p in params]
        self.grads = [torch.empty(p.shape, dtype=p.dtype, pin_memory=self.pinned) for p in params]
        self.host = AdamW(self.mirrors, lr=lr, weight_decay=weight_decay, fused=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("HostAdamW takes no closure")
        (group,) = self.param_groups
        stepped = []
        for param, mirror, grad in zip(group["params"], self.mirrors, self.grads, strict=True):
            # As AdamW: a parameter without a gradient keeps its value and moments (the host AdamW skips it too).
            mirror.grad = None if param.grad is None else grad
            if param.grad is not None:
                mirror.copy_(param, non_blocking=self.pinned)
                grad.copy_(param.grad, non_blocking=self.pinned)
                stepped.append((param, mirror))
        if self.pinned:
            torch.cuda.current_stream().synchronize()  # the mirrors hold this step's values
        self.host.param_groups[0]["lr"] = group["lr"]  # the schedule sets the outer group's rate
        self.host.step()
        for param, mirror in stepped:
            # Asynchronous; the next step's copies into the mirror queue behind it on the same stream.
            param.copy_(mirror, non_blocking=self.pinned)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["state"] = self.host.state_dict()["state"]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "state": {}})  # the groups (rates, schedule); no device moments
        (group,) = state_dict["param_groups"]
        self.host.load_state_dict({"state": state_dict["state"], "param_groups": [{**group, "fused": True}]})
