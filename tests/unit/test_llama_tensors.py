"""Tensor-level pieces of the converter: lazy safetensors reading, llama's Q/K permutation, llama3 rope factors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from safetensors.torch import save_file

from kubetune.llama.hf_config import ModelSpec, RopeScaling, llama3_rope_freq_factors
from kubetune.llama.safetensors_io import index_tensors
from kubetune.llama.tensors import _permute_rows, weight_type


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reading_rows_lazily_returns_the_stored_values(tmp_path: Path, dtype: torch.dtype) -> None:
    weights = {"a.weight": torch.randn(37, 24).to(dtype), "b.bias": torch.randn(5).to(dtype)}
    save_file(weights, str(tmp_path / "model.safetensors"))
    stored = index_tensors(tmp_path)
    assert stored["a.weight"].shape == (37, 24)
    np.testing.assert_array_equal(stored["a.weight"].read_rows(), weights["a.weight"].float().numpy())
    np.testing.assert_array_equal(stored["a.weight"].read_rows(10, 20), weights["a.weight"][10:20].float().numpy())
    np.testing.assert_array_equal(stored["b.bias"].read_rows(), weights["b.bias"].float().numpy())


def test_llama_qk_permutation_turns_rotate_half_pairs_into_adjacent_pairs() -> None:
    head_dim, n_heads, columns = 8, 3, 2
    rows = np.arange(n_heads * head_dim * columns, dtype=np.float32).reshape(n_heads * head_dim, columns)
    permuted = _permute_rows(rows, head_dim)
    for head in range(n_heads):
        base = head * head_dim
        for i in range(head_dim // 2):
            # HF rotates dimension i with i + d/2; llama.cpp rotates 2i with 2i+1.
            np.testing.assert_array_equal(permuted[base + 2 * i], rows[base + i])
            np.testing.assert_array_equal(permuted[base + 2 * i + 1], rows[base + i + head_dim // 2])


def test_llama3_rope_factors_reproduce_transformers_inverse_frequencies() -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    # transformers 5 still reads rope_theta / rope_scaling from keyword arguments; its typed signature lists neither.
    legacy_rope: dict[str, Any] = {"rope_theta": 500000.0, "rope_scaling": scaling}
    config = LlamaConfig(hidden_size=2048, num_attention_heads=16, max_position_embeddings=131072, **legacy_rope)
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    spec = ModelSpec(
        "LlamaForCausalLM",
        None,
        1,
        2048,
        1,
        16,
        16,
        128,
        131072,
        1e-5,
        500000.0,
        RopeScaling("llama3", 8.0, 8192, 1.0, 4.0),
        10,
        False,
        "x",
    )
    plain = 1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128)
    np.testing.assert_allclose(plain / llama3_rope_freq_factors(spec), inv_freq.numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    ("shape", "outtype", "expected"),
    [
        ((64,), "q8_0", GGMLQuantizationType.F32),
        ((64,), "f16", GGMLQuantizationType.F32),
        ((128, 64), "q8_0", GGMLQuantizationType.Q8_0),
        ((128, 64), "bf16", GGMLQuantizationType.BF16),
        ((128, 64), "f32", GGMLQuantizationType.F32),
        ((128, 48), "q8_0", GGMLQuantizationType.F16),  # rows that are not whole Q8_0 blocks
    ],
)
def test_norms_and_biases_stay_f32_and_weights_take_the_output_type(
    shape: tuple[int, ...], outtype: str, expected: GGMLQuantizationType
) -> None:
    assert weight_type("blk.0.x.weight", shape, outtype) == expected
