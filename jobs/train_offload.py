"""Activation offload for checkpointed decoder layers (`training.activationOffload`).

With gradient checkpointing a decoder layer keeps only its input (the hidden states at the layer boundary) from
forward to backward; on a long model that is still layers × tokens × hidden values in GPU memory. Offload moves each
layer's input to pinned CPU memory on a side CUDA stream as soon as the layer has read it, and brings it back in
backward: when layer i starts recomputing, layer i-1's input is already being copied back on the side stream, so
the copy overlaps the recompute and GPU memory holds about one layer's activations (plus the next input) on top of
the weights, the LoRA state and the loss chunk.

How: each layer's checkpoint function becomes `ActivationOffloader.checkpoint`. It runs torch's own non-reentrant
checkpoint (which restores the RNG and autocast state for the recompute, so dropout masks match, and works with
compiled layers) over a closure that takes the hidden states from an `OffloadedInput` rather than as an argument:
the checkpoint then holds no reference to them, and the only copy that outlives the layer's forward is the CPU one.
The recompute reads the restored copy, bit for bit the tensor forward read, so losses and gradients are exactly those
of plain checkpointing. On a CPU the "offload" is a plain copy (the same code path, nothing to save): tests check
that gradients are unchanged.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer


class OffloadedInput:
    """One checkpointed layer's input: on the GPU until forward is done with it, then in pinned CPU memory, then
    back on the GPU (prefetched) for the layer's recompute."""

    def __init__(self, hidden: torch.Tensor, stream: torch.cuda.Stream | None,
                 previous: OffloadedInput | None) -> None:
        self.requires_grad = hidden.requires_grad
        self.device = hidden.device
        self.stream = stream
        # The layer run before this one: the next whose input backward needs (weak, so that a finished micro-batch's
        # inputs are freed with its graph).
        self.previous = weakref.ref(previous) if previous is not None else None
        self.forward_input: torch.Tensor | None = hidden  # until the layer's forward has run
        self.restored: torch.Tensor | None = None
        self.ready: torch.cuda.Event | None = None
        if stream is None:  # CPU: a plain copy stands for the host copy
            self.host = hidden.detach().clone()
            return
        self.host = torch.empty(hidden.shape, dtype=hidden.dtype, pin_memory=True)
        stream.wait_stream(torch.cuda.current_stream(self.device))  # the producer of `hidden` has run
        with torch.cuda.stream(stream):
            self.host.copy_(hidden.detach(), non_blocking=True)
        hidden.record_stream(stream)  # the allocator keeps its memory until the copy has read it

    def tensor(self) -> torch.Tensor:
        """The input for the layer's function: the live tensor in forward, the restored copy in the recompute."""
        if self.forward_input is not None:
            return self.forward_input
        self.prefetch()
        restored, self.restored = self.restored, None  # the recompute's graph keeps what it needs
        assert restored is not None
        if self.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(self.ready)
        previous = self.previous() if self.previous is not None else None
        if previous is not None:
            previous.prefetch()  # backward goes layer by layer downwards: the next recompute needs that one
        return restored.requires_grad_(self.requires_grad)

    def forward_done(self) -> None:
        self.forward_input = None

    def prefetch(self) -> None:
        """Start copying the input back to the GPU (once)."""
        if self.restored is not None or self.forward_input is not None:
            return
        if self.stream is None:
            self.restored = self.host.clone()
            return
        main = torch.cuda.current_stream(self.device)
        # Allocated on the main stream (which uses it); the side stream writes it once main's earlier use of that
        # memory is done.
        restored = torch.empty(self.host.shape, dtype=self.host.dtype, device=self.device)
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            restored.copy_(self.host, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record(self.stream)
        self.restored = restored


class ActivationOffloader:
    """The checkpoint function of every decoder layer of one model (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.last: weakref.ref[OffloadedInput] | None = None

    def checkpoint(self, function: Callable[..., Any], hidden: torch.Tensor, *args: Any) -> Any:
        """Called as transformers calls a layer's `_gradient_checkpointing_func`: `function(hidden, *args)`."""
        if not torch.is_grad_enabled():
            return function(hidden, *args)
        if hidden.requires_grad and hidden.grad_fn is None:
            # The embedding output, which peft marks as requiring grad (reentrant checkpointing needs that): as a
            # leaf, autograd would hold it until backward, and nothing needs its gradient.
            hidden = hidden.detach()
        previous = self.last() if self.last is not None else None
        saved = OffloadedInput(hidden, self.stream, previous)
        self.last = weakref.ref(saved)
        del hidden  # from here on only `saved` refers to the GPU input, and only until the forward below is done

        def run(_anchor: torch.Tensor) -> Any:
            return function(saved.tensor(), *args)

        # The empty anchor on the layer's device is what makes the checkpoint save and restore that device's RNG
        # state for the recompute (it looks at the tensor arguments for devices).
        anchor = torch.empty(0, device=saved.device)
        output = checkpoint(run, anchor, use_reentrant=False)
        saved.forward_done()
        return output


def enable_activation_offload(model: PreTrainedModel, device: torch.device) -> int:
    """Offload the inputs of every checkpointed decoder layer of `model` (checkpointing must be enabled on them);
    returns how many layers offload."""
    offloader = ActivationOffloader(device)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    for layer in layers:
        # An attribute transformers sets on each layer when checkpointing is enabled (nn.Module types it as a
        # submodule or tensor, hence setattr).
        setattr(layer, "_gradient_checkpointing_func", offloader.checkpoint)  # noqa: B010
    return len(layers)
