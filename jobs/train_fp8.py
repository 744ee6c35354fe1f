"""FP8 matmuls for the frozen 4-bit base weights while training (GPUs with FP8 tensor cores).

In QLoRA the base weights never change, so each base matmul in training is two products: forward `y = x·Wᵀ` and,
in backward, the input gradient `dx = dy·W` (no weight gradient). Those two are most of a step's FLOPs. With
`training.fp8` they run as FP8 (e4m3) matmuls with fp32 scales: per row for activations and gradients (one scale per
token), per output channel for W in forward and per input channel in backward. A weight's scales are fixed, taken
once from its dequantized values; each call dequantizes it with bitsandbytes' kernel and scales it to e4m3 in plain
torch ops, which a compiled decoder layer fuses with the quantizing of the activations into its own kernels.

LoRA adapters, attention, norms, the head and the loss stay in bf16, and so does every pass without grad (eval,
generation): the adapter is judged with the numerics of the merged model. The weights' own 4-bit rounding is far
coarser than e4m3's (3 mantissa bits); what FP8 adds is rounding of activations and gradients, which moves training
much less than the 4-bit rounding does (tests/integration/test_train_fp8_quality.py).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Any, NamedTuple, cast

import torch
from bitsandbytes.functional import QuantState
from bitsandbytes.nn import Linear4bit

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
# The smallest amax a row is scaled by: an all-zero row (padding, a masked gradient) stays zero instead of NaN.
MIN_AMAX = 1e-12
# torch._scaled_mm wants both matrix dimensions of the weight to be multiples of 16.
ALIGNMENT = 16


def fp8_unsupported_reason(device: torch.device, compute_dtype: torch.dtype | None) -> str | None:
    """Why FP8 base matmuls cannot run here, or None when they can."""
    if device.type != "cuda":
        return f"FP8 matmuls need a CUDA GPU; training runs on {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        return (f"FP8 matmuls need compute capability 8.9 or newer (Ada, Hopper, Blackwell); "
                f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}")
    if compute_dtype != torch.bfloat16:
        return f"FP8 matmuls produce bfloat16; quantization.computeDtype is {compute_dtype}"
    return None


def quantize_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`matrix` (rows × columns) in e4m3 with one fp32 scale per row: matrix ≈ fp8 · scale."""
    amax = matrix.abs().amax(dim=-1, keepdim=True).float().clamp(min=MIN_AMAX)
    scale = amax / FP8_MAX
    return (matrix.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def scaled_matmul(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor) -> torch.Tensor:
    """(a · scale_a) @ (b · scale_b) in bf16; `a` row-major, `b` column-major, scales (rows, 1) and (1, columns)."""
    return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)


class Nf4Tensors(NamedTuple):
    """What dequantizing one bitsandbytes NF4 weight needs, all tensors (so that the layers of a compiled model share
    one graph: a Python float would be a constant of each layer's own)."""

    packed: torch.Tensor  # uint8, two 4-bit codes per byte
    absmax: torch.Tensor  # fp32 per block; with double quantization, fp32 per group of `absmax_codes`
    absmax_codes: torch.Tensor | None  # double quantization: uint8 per block, into `absmax_table`
    absmax_table: torch.Tensor | None
    absmax_offset: torch.Tensor | None


@dataclass(frozen=True)
class Nf4Layout:
    out_features: int
    in_features: int
    blocksize: int
    absmax_blocksize: int  # double quantization's group of blocks; 0 without


def quant_state(layer: Linear4bit) -> QuantState | None:
    state: QuantState | None = getattr(layer.weight, "quant_state", None)
    return state


def nf4_tensors(layer: Linear4bit) -> tuple[Nf4Tensors, Nf4Layout]:
    state = quant_state(layer)
    assert state is not None
    packed = layer.weight.data
    out_features, in_features = (int(size) for size in state.shape)
    if not state.nested:
        return (Nf4Tensors(packed, state.absmax, None, None, None),
                Nf4Layout(out_features, in_features, int(state.blocksize), 0))
    nested = state.state2
    offset = torch.as_tensor(state.offset, dtype=torch.float32, device=packed.device)
    return (Nf4Tensors(packed, nested.absmax, state.absmax, nested.code, offset),
            Nf4Layout(out_features, in_features, int(state.blocksize), int(nested.blocksize)))


def dequantize_nf4(weight: Nf4Tensors, layout: Nf4Layout) -> torch.Tensor:
    """The weight in bf16, (out_features, in_features), by bitsandbytes' own kernels (the values its matmul uses)."""
    absmax = weight.absmax
    if weight.absmax_codes is not None:
        assert weight.absmax_table is not None and weight.absmax_offset is not None
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
            weight.absmax_codes, weight.absmax, weight.absmax_table, layout.absmax_blocksize, torch.float32,
        ) + weight.absmax_offset
    return torch.ops.bitsandbytes.dequantize_4bit.default(
        weight.packed, absmax, layout.blocksize, "nf4", [layout.out_features, layout.in_features], torch.bfloat16)


def forward_fp8_weight(weight: Nf4Tensors, layout: Nf4Layout, output_scale: torch.Tensor) -> torch.Tensor:
    """Wᵀ (in × out) in e4m3, scaled per output channel, column-major as torch._scaled_mm takes its second operand."""
    values = dequantize_nf4(weight, layout).float() / output_scale.view(-1, 1)
    return values.clamp(-FP8_MAX, FP8_MAX).to(FP8).t()


def backward_fp8_weight(weight: Nf4Tensors, layout: Nf4Layout, input_scale: torch.Tensor) -> torch.Tensor:
    """W (out × in) in e4m3, scaled per input channel, column-major (laid out as Wᵀ)."""
    values = dequantize_nf4(weight, layout).float() / input_scale.view(1, -1)
    return values.clamp(-FP8_MAX, FP8_MAX).to(FP8).t().contiguous().t()


# The matmul is an opaque op only so that autograd routes x's gradient through it; the quantizing before it and the
# backward (quantized gradient, weight, matmul) are plain torch ops, which compiled layers trace and fuse.
@torch.library.custom_op("kubetune::fp8_base_matmul", mutates_args=())
def fp8_base_matmul(
    x: torch.Tensor, x8: torch.Tensor, x_scale: torch.Tensor, w8: torch.Tensor, output_scale: torch.Tensor,
    input_scale: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, absmax_codes: torch.Tensor | None,
    absmax_table: torch.Tensor | None, absmax_offset: torch.Tensor | None, layout: list[int],
) -> torch.Tensor:
    """x·Wᵀ from x's e4m3 rows `x8` (`x` only receives the gradient)."""
    return scaled_matmul(x8, w8, x_scale, output_scale.view(1, -1))


@fp8_base_matmul.register_fake
def _(x: torch.Tensor, x8: torch.Tensor, x_scale: torch.Tensor, w8: torch.Tensor, *_: Any) -> torch.Tensor:
    return x8.new_empty((x8.shape[0], w8.shape[1]), dtype=torch.bfloat16)


def _keep_weight_for_backward(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    *_, input_scale, packed, absmax, absmax_codes, absmax_table, absmax_offset, layout = inputs
    ctx.save_for_backward(input_scale, packed, absmax, absmax_codes, absmax_table, absmax_offset)
    ctx.layout = Nf4Layout(*layout)


def _input_gradient(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """dx = dy·W in FP8: dy per token, W per input channel (nothing of x was kept for it)."""
    input_scale, *weight = ctx.saved_tensors
    g8, g_scale = quantize_rows(grad_output)
    # In a compiled layer this weight, made from parameters only, is made in forward and kept for backward: 1 byte
    # per weight more for a layer that keeps its activations, nothing more for one that recomputes them.
    w8 = backward_fp8_weight(Nf4Tensors._make(weight), ctx.layout, input_scale)
    return (scaled_matmul(g8, w8, g_scale, input_scale.view(1, -1)),) + (None,) * 11


fp8_base_matmul.register_autograd(_input_gradient, setup_context=_keep_weight_for_backward)


class Fp8TrainingLinear4bit(Linear4bit):
    """A bitsandbytes 4-bit linear layer whose matmuls run in FP8 while training with grad; bitsandbytes' own path
    otherwise (eval, generation). Its NF4 tensors and FP8 scales are non-persistent buffers: the state dict is
    unchanged, and compiled layers take them as graph inputs."""

    nf4_layout: Nf4Layout
    fp8_output_scale: torch.Tensor
    fp8_input_scale: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        weight = Nf4Tensors(*(getattr(self, f"nf4_{name}") for name in Nf4Tensors._fields))
        rows = x.to(torch.bfloat16).reshape(-1, x.shape[-1])
        x8, x_scale = quantize_rows(rows)
        w8 = forward_fp8_weight(weight, self.nf4_layout, self.fp8_output_scale)
        y = fp8_base_matmul(rows, x8, x_scale, w8, self.fp8_output_scale, self.fp8_input_scale, *weight,
                            list(astuple(self.nf4_layout))).view(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def weight_scales(weight: torch.Tensor, largest: float = FP8_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed scales of a weight (out × in) for a format whose largest value is `largest` (e4m3's by default):
    per output channel (forward) and per input channel (backward)."""
    magnitude = weight.float().abs()
    per_output = magnitude.amax(dim=1).clamp(min=MIN_AMAX) / largest
    per_input = magnitude.amax(dim=0).clamp(min=MIN_AMAX) / largest
    return per_output, per_input


def fp8_capable(layer: Linear4bit) -> bool:
    state = quant_state(layer)
    return (state is not None and state.quant_type == "nf4" and len(state.shape) == 2
            and all(int(size) % ALIGNMENT == 0 for size in state.shape))


def enable_fp8_base_matmuls(model: torch.nn.Module) -> int:
    """Switch every eligible 4-bit linear layer of `model` to FP8 training matmuls; returns how many were switched.
    No weight is copied: each layer gains two small scale vectors."""
    switched = 0
    for module in model.modules():
        if type(module) is not Linear4bit or not fp8_capable(module):
            continue
        weight, layout = nf4_tensors(module)
        per_output, per_input = weight_scales(dequantize_nf4(weight, layout))
        module.__class__ = Fp8TrainingLinear4bit
        layer = cast(Fp8TrainingLinear4bit, module)
        for name, tensor in zip(Nf4Tensors._fields, weight, strict=True):
            layer.register_buffer(f"nf4_{name}", tensor, persistent=False)
        layer.register_buffer("fp8_output_scale", per_output, persistent=False)
        layer.register_buffer("fp8_input_scale", per_input, persistent=False)
        layer.nf4_layout = layout
        switched += 1
    return switched
