"""GGUF metadata of Qwen3.5's Gated DeltaNet (linear-attention) layers, under the `ssm.*` keys llama.cpp's qwen35 reads."""

from __future__ import annotations

from gguf import GGUFWriter

from .hf_config import LinearAttention


def add_linear_attention_metadata(writer: GGUFWriter, linear: LinearAttention) -> None:
    writer.add_ssm_conv_kernel(linear.conv_kernel)
    writer.add_ssm_state_size(linear.head_dim)
    writer.add_ssm_group_count(linear.n_key_heads)
    writer.add_ssm_time_step_rank(linear.n_value_heads)
    writer.add_ssm_inner_size(linear.head_dim * linear.n_value_heads)
    writer.add_full_attention_interval(linear.full_attention_interval)
    writer.add_rope_dimension_sections(list(linear.rope_sections))
