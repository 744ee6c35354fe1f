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

Under offload the layer inputs no longer dominate; one layer's recompute and backward over a whole micro-batch does,
and in a llama-family layer much of that is the MLP: gate and up outputs, their SiLU product and its gradients are
each tokens × intermediate values (5,000 tokens of Qwen2.5-1.5B: ~90 MB each). Opt-in (`mlp_chunk_elements`), the
MLP of every offloaded layer runs in token chunks (`ChunkedMLP`): forward computes its output chunk by chunk without
keeping intermediates and saves only its input; backward recomputes and differentiates one chunk at a time. The
layer's own recompute (for the attention half's saved tensors) skips the MLP: its output only feeds the residual add,
which saves nothing, so the checkpoint stops recomputing right after the MLP has saved its input. The MLP's forward
thus runs twice per step, as under plain checkpointing, and its transient shrinks to one chunk's. Exact per token
(the maths of each row is unchanged; LoRA gradients are summed over chunks, so they match plain checkpointing to
rounding). Only where the MLP's LoRA dropout is off (p = 0): a dropout mask drawn per chunk would differ from the one
drawn over the whole micro-batch, and those layers keep the plain MLP. Measured on an H100 (Llama-3.1-8B, one
5,044-token micro-batch, `benchmarks/train_offload_check.py`): the peak drops 7.41 → 6.77 GiB, but the step takes
twice as long (0.52 → 1.03 s in 5 chunks; 3.2 s in 18: every chunk dequantizes each 4-bit weight again and pays a
compiled call and an autograd pass), slower than splitting the step into more micro-batches for the same memory,
hence not on by default. There the LoRA gradients differed from plain checkpointing by up to 11.5% (relative norm)
where two plain runs differ by 1.7%, the same for every chunk size: most likely the graph break at the MLP, which
rounds its output and its input's gradient to bf16 where the compiled layer kept them in fp32 inside fused kernels
(on a CPU in bf16 autocast one chunk is plain checkpointing bit for bit, `tests/unit/test_train_offload.py`); not
verified on a GPU.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

# Families whose decoder layer feeds the MLP's output only to the residual add (nothing after it saves tensors for
# backward), which the skipped MLP in the layer's recompute relies on. Gemma's post-feedforward norm, for one, would
# save the MLP output.
CHUNKED_MLP_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# A chunk size to start from: this many intermediate values (gate or up output) per chunk, 32 MiB in bf16
# (Qwen2.5-1.5B: 1,872 tokens; Llama-3.1-8B: 1,170).
MLP_CHUNK_ELEMENTS = 2**24
Phase = Literal["forward", "recompute"] | None


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
        # What the layer running now does: its forward, its recompute in backward, or neither (no checkpoint: eval,
        # no grad). The chunked MLP reads it (and ends a recompute's phase: the recompute stops after the MLP).
        self.phase: Phase = None

    def checkpoint(self, function: Callable[..., Any], hidden: torch.Tensor, *args: Any) -> Any:
        """Called as transformers calls a layer's `_gradient_checkpointing_func`: `function(hidden, *args)`."""
        if not torch.is_grad_enabled():
            self.phase = None
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
            self.phase = "forward" if saved.forward_input is not None else "recompute"
            return function(saved.tensor(), *args)

        # The empty anchor on the layer's device is what makes the checkpoint save and restore that device's RNG
        # state for the recompute (it looks at the tensor arguments for devices).
        anchor = torch.empty(0, device=saved.device)
        try:
            output = checkpoint(run, anchor, use_reentrant=False)
        finally:
            self.phase = None
        saved.forward_done()
        return output


def _mlp_forward(mlp: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The MLP's own forward (its class's: the instance's is the chunking one)."""
    output: torch.Tensor = type(mlp).forward(mlp, x)
    return output


class ChunkedMLP(torch.autograd.Function):
    """A decoder layer's MLP over its tokens in chunks (see the module docstring). Inputs: the MLP's runner, its
    input, then its trainable parameters (LoRA), whose gradients backward returns summed over the chunks."""

    @staticmethod
    def forward(ctx: Any, runner: MLPChunks, x: torch.Tensor, skip: bool, *parameters: torch.Tensor) -> torch.Tensor:
        ctx.runner = runner
        ctx.autocast = (torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type))
        ctx.save_for_backward(x)
        flat = x.reshape(-1, x.shape[-1])
        if skip:  # the layer's recompute: its output is never read (see CHUNKED_MLP_MODEL_TYPES)
            return x.new_zeros(x.shape)
        output: torch.Tensor | None = None
        for start, stop in runner.spans(flat.shape[0]):
            part = runner.run(flat[start:stop])
            if output is None:
                output = part.new_empty((flat.shape[0], part.shape[-1]))
            output[start:stop] = part
            del part
        assert output is not None
        return output.view(*x.shape[:-1], output.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        runner: MLPChunks = ctx.runner
        (x,) = ctx.saved_tensors
        needs_input = ctx.needs_input_grad[1]
        parameters = runner.parameters
        wanted = [p for p, needed in zip(parameters, ctx.needs_input_grad[3:], strict=True) if needed]
        flat, flat_grad = x.reshape(-1, x.shape[-1]), grad_output.reshape(-1, grad_output.shape[-1])
        grad_input = torch.empty_like(flat) if needs_input else None
        sums: list[torch.Tensor | None] = [None] * len(wanted)
        enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=enabled):
            for start, stop in runner.spans(flat.shape[0]):
                leaf = flat[start:stop].detach().requires_grad_(needs_input)
                # The MLP reads a view, as it read a layer's intermediate: autocast caches its casts of leaves that
                # require grad (meant for weights), which would sum the input's gradients in bf16 (not in fp32).
                output = runner.run(leaf.view_as(leaf))
                inputs = ([leaf] if needs_input else []) + wanted
                grads = torch.autograd.grad(output, inputs, flat_grad[start:stop])
                del output
                if needs_input:
                    assert grad_input is not None
                    grad_input[start:stop] = grads[0]
                    grads = grads[1:]
                for index, grad in enumerate(grads):
                    total = sums[index]
                    sums[index] = grad if total is None else total.add_(grad)
        by_parameter = dict(zip((id(p) for p in wanted), sums, strict=True))
        return (None, grad_input.view_as(x) if grad_input is not None else None, None,
                *(by_parameter.get(id(p)) for p in parameters))


class MLPChunks:
    """One layer's MLP, run in token chunks while its layer is checkpointed with offload (`ChunkedMLP`), as itself
    otherwise (no grad, or a forward outside a checkpoint)."""

    def __init__(self, mlp: torch.nn.Module, offloader: ActivationOffloader, chunk_tokens: int,
                 compiled: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None) -> None:
        self.mlp = mlp  # a reference cycle (the MLP holds this as its forward), as long-lived as the model
        self.offloader = offloader
        self.chunk_tokens = chunk_tokens
        self.forward = compiled or _mlp_forward
        self.parameters = [p for p in mlp.parameters() if p.requires_grad]

    def spans(self, tokens: int) -> list[tuple[int, int]]:
        """Even chunks of at most `chunk_tokens` tokens."""
        chunks = max(1, -(-tokens // self.chunk_tokens))
        size = -(-tokens // chunks)
        return [(start, min(start + size, tokens)) for start in range(0, tokens, size)]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(self.mlp, x)

    @torch.compiler.disable  # the compiled layer calls out to it (a graph break): autograd inside backward
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        phase = self.offloader.phase
        if phase is None or not torch.is_grad_enabled():
            return self.run(x)
        self.offloader.phase = None  # the MLP ends a layer's phase (a recompute stops right after it)
        output: torch.Tensor = ChunkedMLP.apply(self, x, phase == "recompute", *self.parameters)
        return output


def dropout_off(mlp: torch.nn.Module) -> bool:
    """No LoRA dropout anywhere in the MLP (peft keeps an Identity or a p = 0 Dropout per adapter)."""
    dropouts = [d for m in mlp.modules() for d in getattr(m, "lora_dropout", {}).values()]
    return all(isinstance(d, torch.nn.Identity) or (isinstance(d, torch.nn.Dropout) and d.p == 0) for d in dropouts)


def enable_activation_offload(model: PreTrainedModel, device: torch.device, *,
                              mlp_chunk_elements: int | None = None, compile_mlp: bool = False) -> int:
    """Offload the inputs of every checkpointed decoder layer of `model` (checkpointing must be enabled on them);
    returns how many layers offload. With `mlp_chunk_elements`, their MLPs run in chunks of that many intermediate
    values where the family and the LoRA dropout allow it (`chunked_mlp_layers` counts them), through one
    `torch.compile`d MLP forward with `compile_mlp` (the compiled layers call out to it)."""
    offloader = ActivationOffloader(device)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    chunkable = mlp_chunk_elements and getattr(model.config, "model_type", None) in CHUNKED_MLP_MODEL_TYPES
    # Shape-generic, and one compilation serves every layer's MLP (the module is an input).
    compiled = torch.compile(_mlp_forward, dynamic=True) if chunkable and compile_mlp else None
    for layer in layers:
        # An attribute transformers sets on each layer when checkpointing is enabled (nn.Module types it as a
        # submodule or tensor, hence setattr).
        setattr(layer, "_gradient_checkpointing_func", offloader.checkpoint)  # noqa: B010
        mlp = getattr(layer, "mlp", None)
        if chunkable and isinstance(mlp, torch.nn.Module) and dropout_off(mlp):
            intermediate: int = getattr(mlp, "intermediate_size", 0) or getattr(getattr(mlp, "gate_proj", None), "out_features", 0)
            if not intermediate:
                continue
            assert mlp_chunk_elements is not None
            # The instance's forward: the module's __call__ (hooks, peft) and its state dict stay as they were.
            mlp.forward = MLPChunks(mlp, offloader, max(1, mlp_chunk_elements // intermediate), compiled)
    return len(layers)


def chunked_mlp_layers(model: torch.nn.Module) -> int:
    return sum(isinstance(getattr(m, "forward", None), MLPChunks) for m in model.modules())
