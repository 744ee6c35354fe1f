"""FP8 base matmuls: the NF4 weight dequantized exactly as bitsandbytes does, forward and input gradient as e4m3
matmuls with per-token and per-channel scales, bitsandbytes' own path whenever there is no grad."""

from __future__ import annotations

import pytest
import torch
from bitsandbytes.functional import dequantize_4bit
from bitsandbytes.nn import Linear4bit, Params4bit

from kubetune.jobs.train_fp8 import (
    FP8,
    Fp8TrainingLinear4bit,
    dequantize_nf4,
    enable_fp8_base_matmuls,
    fp8_unsupported_reason,
    nf4_tensors,
    quant_state,
    quantize_rows,
)


def nf4_layer(in_features: int, out_features: int, *, double_quant: bool = True, seed: int = 0) -> Linear4bit:
    torch.manual_seed(seed)
    layer = Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.bfloat16,
                       compress_statistics=double_quant, quant_type="nf4")
    # Rows of very different magnitudes, so that per-channel scales matter.
    weight = torch.randn(out_features, in_features) * torch.logspace(-3, 0, out_features).unsqueeze(1)
    layer.weight = Params4bit(weight, requires_grad=False, quant_type="nf4", compress_statistics=double_quant)
    layer = layer.to("cpu")  # bitsandbytes quantizes on the first move to a device
    layer.support_avx512bf16_for_cpu = False
    return layer


def reference_fp8_matmul(a: torch.Tensor, b: torch.Tensor, b_scale_axis: int) -> torch.Tensor:
    """a @ bᵀ with both operands rounded to e4m3 the same way, computed in fp32 (b is out × in)."""
    a8, a_scale = quantize_rows(a)
    b_scale = b.abs().amax(dim=b_scale_axis, keepdim=True).clamp(min=1e-12) / torch.finfo(FP8).max
    b8 = (b / b_scale).to(FP8)
    return (a8.float() * a_scale) @ (b8.float() * b_scale).t()


@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_weights_dequantize_to_the_values_bitsandbytes_matmul_uses(double_quant: bool) -> None:
    # 320 × 832 = 4160 blocks of 64: not a whole number of the 256-block groups of double quantization.
    layer = nf4_layer(832, 320, double_quant=double_quant)
    weight, layout = nf4_tensors(layer)
    ours = dequantize_nf4(weight, layout)
    theirs = dequantize_4bit(layer.weight.data, quant_state(layer)).to(torch.bfloat16)
    assert ours.shape == (320, 832) and ours.dtype == torch.bfloat16
    assert torch.equal(ours, theirs)


def test_rows_quantize_with_one_scale_each_and_zero_rows_stay_zero() -> None:
    matrix = torch.cat([torch.randn(3, 64) * torch.tensor([[1e-3], [1.0], [1e3]]), torch.zeros(1, 64)])
    values, scale = quantize_rows(matrix)
    assert values.dtype == FP8 and scale.shape == (4, 1)
    restored = values.float() * scale
    assert torch.isfinite(restored).all() and (restored[3] == 0).all()
    # e4m3 keeps 3 mantissa bits: every value within 1/16 relative of the original, whatever the row's magnitude.
    assert ((restored[:3] - matrix[:3]).abs() <= matrix[:3].abs() / 16 + 1e-12).all()
    assert torch.equal(values.float().abs().amax(dim=1)[:3], torch.full((3,), 448.0))


def test_training_matmuls_run_in_fp8_with_the_right_scales_forward_and_backward() -> None:
    layer = nf4_layer(256, 96)
    reference = dequantize_4bit(layer.weight.data, quant_state(layer)).to(torch.bfloat16).float()
    assert enable_fp8_base_matmuls(layer) == 1 and isinstance(layer, Fp8TrainingLinear4bit)
    layer.train()
    x = (torch.randn(2, 40, 256) * torch.logspace(-2, 1, 40).view(1, 40, 1)).to(torch.bfloat16).requires_grad_()
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    assert y.dtype == torch.bfloat16 and x.grad is not None and x.grad.shape == x.shape

    # The same e4m3 roundings computed in fp32 by hand: per token × per output channel forward, per token × per
    # input channel backward (a scale on the wrong axis would be off by orders of magnitude on some rows).
    expected_y = reference_fp8_matmul(x.detach().float().view(-1, 256), reference, b_scale_axis=1)
    expected_grad = reference_fp8_matmul(grad.float().view(-1, 96), reference.t(), b_scale_axis=1)
    torch.testing.assert_close(y.float().view(-1, 96), expected_y, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(x.grad.float().view(-1, 256), expected_grad, rtol=2e-2, atol=1e-3)
    # And close to the exact product: e4m3 rounding is a few per cent per element, less on sums.
    exact = x.detach().float().view(-1, 256) @ reference.t()
    assert (y.float().view(-1, 96) - exact).norm() / exact.norm() < 0.05


def test_without_grad_or_in_eval_the_layer_is_bitsandbytes_own() -> None:
    plain, switched = nf4_layer(128, 64), nf4_layer(128, 64)
    enable_fp8_base_matmuls(switched)
    x = torch.randn(5, 128, dtype=torch.bfloat16)
    for mode in (plain, switched):
        mode.eval()
    with torch.no_grad():
        assert torch.equal(switched(x), plain(x))
    switched.train()
    plain.train()
    with torch.no_grad():
        assert torch.equal(switched(x), plain(x))


def test_switching_keeps_the_state_dict_and_skips_layers_fp8_cannot_run() -> None:
    model = torch.nn.Sequential(nf4_layer(128, 64), nf4_layer(128, 24))  # 24 outputs: not a multiple of 16
    keys = set(model.state_dict())
    assert enable_fp8_base_matmuls(model) == 1
    assert type(model[0]) is Fp8TrainingLinear4bit and type(model[1]) is Linear4bit
    assert set(model.state_dict()) == keys
    assert enable_fp8_base_matmuls(model) == 0  # already switched


def test_fp8_needs_a_gpu_with_fp8_tensor_cores_and_bf16_compute() -> None:
    reason = fp8_unsupported_reason(torch.device("cpu"), torch.bfloat16)
    assert reason is not None and "CUDA" in reason
