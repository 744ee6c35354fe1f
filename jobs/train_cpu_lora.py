"""LoRA layers for training on a CPU: one autograd op per adapted linear layer, optionally with int8 base matmuls.

peft's LoRA layer computes `base(x) + lora_B(lora_A(x)) · scaling`: the scaling and the sum are two passes over the
layer's (tokens × out) output in forward and one more in backward. On a CPU, where nothing fuses them, those
memory-bound passes cost a sizeable share of a step next to the small model's matmuls. Here the scaling applies to the
(tokens × r) product instead and the sum is the GEMM's own accumulate (`addmm_`), with the backward written out:

    out = x·Wᵀ (+ b) + h·Bᵀ,  h = s·x·Aᵀ
    dB = gᵀ·h,  dA = s·(g·B)ᵀ·x,  dx = g·W + s·(g·B)·A

The same values as peft's layer up to float rounding (the order of the scaling), and the same parameters, so
checkpoints, the adapter files and the merge are unchanged.

With `training.int8` the frozen base weight's two matmuls (forward, and the input gradient in backward) run as
int8 × int8 → int32 products (`torch._int_mm`, which oneDNN runs on VNNI or AMX units at several times the fp32
rate): per row for activations and gradients (one scale per token), per output channel for W in forward and per
input channel in backward — the scheme of `train_fp8` on GPUs. The LoRA matrices, attention, norms, head and loss
stay fp32, and so does every pass without grad (eval loss, generation): the adapter is judged with the numerics of
the merged model. Only layers with dropout 0 and a plain `nn.Linear` base take this path; any other keeps peft's.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from peft.tuners.lora import Linear as PeftLoraLinear

from kubetune.jobs.train_fp8 import MIN_AMAX, weight_scales

INT8_MAX = 127.0
INT8_ALIGNMENT = 8  # oneDNN's int8 GEMM wants both weight dimensions in multiples of 8


class Int8Weight:
    """A frozen weight (out × in) as int8 twice: Wᵀ scaled per output channel (forward) and W scaled per input
    channel (input gradient), each laid out as `torch._int_mm`'s right operand wants it (row-major)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.output_scale, self.input_scale = weight_scales(weight.detach(), INT8_MAX)
        self.forward_t = to_int8(weight.detach().float() / self.output_scale[:, None]).t().contiguous()
        self.backward = to_int8(weight.detach().float() / self.input_scale[None, :])


def to_int8(values: torch.Tensor) -> torch.Tensor:
    return values.round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)


def quantize_rows(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`matrix` (rows × columns) as int8 with one fp32 scale per row: matrix ≈ int8 · scale. Every value is within
    ±127 by the scale's choice, so no clamp; the |matrix| buffer is reused for the scaled values."""
    scaled = matrix.abs()
    amax = scaled.amax(dim=-1, keepdim=True).clamp_(min=MIN_AMAX)
    torch.mul(matrix, INT8_MAX / amax, out=scaled)
    return scaled.round_().to(torch.int8), amax.div_(INT8_MAX)


class QuantizedInput:
    """q, k and v (and the MLP's gate and up) read the same input tensor: it is quantized once for them. Holds the
    last input while its quantized copy is reused; a new tensor or an in-place change (its version) replaces it."""

    def __init__(self) -> None:
        self._source: torch.Tensor | None = None
        self._version = -1
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, source: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._source is not source or self._version != source._version or self._value is None:
            self._source, self._version, self._value = source, source._version, quantize_rows(rows)
        return self._value

    def clear(self) -> None:
        self._source = self._value = None


def dequantize(products: torch.Tensor, row_scale: torch.Tensor, column_scale: torch.Tensor) -> torch.Tensor:
    # int32 → fp32 first: torch.mul(int32, fp32) takes a type-promoting path several times slower.
    return products.float().mul_(column_scale).mul_(row_scale)


def base_output(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, int8: Int8Weight | None,
                x_int8: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """x·Wᵀ + b, from int8 products when `int8` is given (with `x_int8`, x quantized per row)."""
    if int8 is not None:
        assert x_int8 is not None
        out = dequantize(torch._int_mm(x_int8[0], int8.forward_t), x_int8[1], int8.output_scale)
        return out if bias is None else out.add_(bias)
    return torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())


def fused_output(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                 lora_b: torch.Tensor, scaling: float, int8: Int8Weight | None = None,
                 x_int8: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x·Wᵀ + b + h·Bᵀ, h) with h = s·x·Aᵀ."""
    h = torch.mm(x, lora_a.t()).mul_(scaling)
    return base_output(x, weight, bias, int8, x_int8).addmm_(h, lora_b.t()), h


class FusedLora(torch.autograd.Function):
    """x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ for 2-D `x`, W frozen; gradients for x, A and B."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float, int8: Int8Weight | None,
                x_int8: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        out, h = fused_output(x, weight, bias, lora_a, lora_b, scaling, int8, x_int8)
        ctx.save_for_backward(x, h, weight, lora_a, lora_b)
        ctx.scaling, ctx.int8 = scaling, int8
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, h, weight, lora_a, lora_b = ctx.saved_tensors
        int8: Int8Weight | None = ctx.int8
        grad = grad.contiguous()
        grad_h = torch.mm(grad, lora_b).mul_(ctx.scaling)
        grad_x = None
        if ctx.needs_input_grad[0]:
            if int8 is not None:
                grad_int8, grad_scale = quantize_rows(grad)
                grad_x = dequantize(torch._int_mm(grad_int8, int8.backward), grad_scale, int8.input_scale)
            else:
                grad_x = torch.mm(grad, weight)
            grad_x.addmm_(grad_h, lora_a)
        grad_a = torch.mm(grad_h.t(), x) if ctx.needs_input_grad[3] else None
        grad_b = torch.mm(grad.t(), h) if ctx.needs_input_grad[4] else None
        return grad_x, None, None, grad_a, grad_b, None, None, None


LAST_INPUT = QuantizedInput()


class CpuLoraLinear(PeftLoraLinear):
    """peft's LoRA linear layer whose plain forward (one active adapter, not merged, no dropout, fp32 without autocast)
    is one `FusedLora` op; peft's own path for everything else (adapters disabled, mixed batches, merged weights,
    autocast)."""

    int8_weight: Int8Weight | None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapters = self.active_adapters
        # Under autocast (bf16 on a CPU) peft's layers cast as autocast does; the fused op is fp32's path.
        if (args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1 or x.dtype != torch.float32
                or torch.is_autocast_enabled(x.device.type)):
            return super().forward(x, *args, **kwargs)
        name = adapters[0]
        base = cast(torch.nn.Linear, self.get_base_layer())
        lora_a = cast(torch.nn.Linear, self.lora_A[name]).weight
        lora_b = cast(torch.nn.Linear, self.lora_B[name]).weight
        scaling = float(self.scaling[name])
        rows = x.reshape(-1, x.shape[-1])
        if not torch.is_grad_enabled():  # eval and generation: the same products, without autograd's bookkeeping
            out = fused_output(rows, base.weight, base.bias, lora_a, lora_b, scaling)[0]
        else:
            int8 = self.int8_weight if self.training else None
            x_int8 = None if int8 is None else LAST_INPUT.get(x, rows.detach())
            out = FusedLora.apply(rows, base.weight, base.bias, lora_a, lora_b, scaling, int8, x_int8)
            assert isinstance(out, torch.Tensor)
        return out.view(*x.shape[:-1], out.shape[-1])


def fusable(layer: torch.nn.Module) -> bool:
    if type(layer) is not PeftLoraLinear or len(layer.lora_A) != 1 or layer.lora_variant:
        return False
    base = layer.get_base_layer()
    dropout = next(iter(layer.lora_dropout.values()))
    return (type(base) is torch.nn.Linear and base.weight.dtype == torch.float32 and not base.weight.requires_grad
            and (isinstance(dropout, torch.nn.Identity) or getattr(dropout, "p", None) == 0.0))


def int8_capable(weight: torch.Tensor) -> bool:
    return all(size % INT8_ALIGNMENT == 0 for size in weight.shape)


def fuse_cpu_lora_layers(model: torch.nn.Module, *, int8: bool) -> tuple[int, int]:
    """Switch every fusable LoRA linear layer of `model` to `CpuLoraLinear`; with `int8`, the eligible ones also get
    int8 base matmuls in training. Returns (layers fused, layers with int8 matmuls)."""
    fused = with_int8 = 0
    for module in model.modules():
        if not fusable(module):
            continue
        module.__class__ = CpuLoraLinear
        layer = cast(CpuLoraLinear, module)
        weight = cast(torch.nn.Linear, layer.get_base_layer()).weight
        layer.int8_weight = Int8Weight(weight) if int8 and int8_capable(weight) else None
        fused += 1
        with_int8 += layer.int8_weight is not None
    return fused, with_int8
