"""Streaming GGUF writing: header, metadata and tensor infos first, then each tensor's data chunk by chunk."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_VERSION, GGUFWriter, LlamaFileType, RopeScalingType

from .hf_config import GemmaAttention, ModelSpec
from .linear_attention import add_linear_attention_metadata
from .parallel_encode import encoded_pieces
from .tensors import TensorPlan
from .tokenizer_export import Vocab

FILE_TYPES: dict[str, LlamaFileType] = {
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "bf16": LlamaFileType.MOSTLY_BF16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
}

# Called with (tensors written, tensors in total, source bytes read so far, source bytes in total).
TensorProgress = Callable[[int, int, int, int], None]


def add_model_metadata(writer: GGUFWriter, spec: ModelSpec, vocab: Vocab, outtype: str) -> None:
    writer.add_type("model")
    writer.add_name(spec.name)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.hidden_size)
    writer.add_feed_forward_length(spec.intermediate_size)
    writer.add_block_count(spec.n_layers)
    writer.add_head_count(spec.n_heads)
    writer.add_head_count_kv(spec.n_kv_heads)
    if spec.head_dim != spec.hidden_size // spec.n_heads:
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)
    writer.add_rope_dimension_count(spec.rope_dim)
    writer.add_rope_freq_base(spec.rope_theta)
    scaling = spec.rope_scaling
    if scaling is not None and scaling.kind in ("linear", "yarn"):
        writer.add_rope_scaling_type(RopeScalingType.LINEAR if scaling.kind == "linear" else RopeScalingType.YARN)
        writer.add_rope_scaling_factor(scaling.factor)
        if scaling.original_context_length:
            writer.add_rope_scaling_orig_ctx_len(scaling.original_context_length)
    # llama3 scaling travels as the rope_freqs.weight tensor instead.
    if spec.gemma is not None:
        add_gemma_metadata(writer, spec.gemma)
    if spec.linear is not None:
        add_linear_attention_metadata(writer, spec.linear)
    writer.add_layer_norm_rms_eps(spec.rms_norm_eps)
    writer.add_vocab_size(spec.vocab_size)
    writer.add_file_type(FILE_TYPES[outtype])
    if outtype == "q8_0":
        writer.add_quantization_version(GGML_QUANT_VERSION)
    vocab.add_to_gguf(writer)


def add_gemma_metadata(writer: GGUFWriter, gemma: GemmaAttention) -> None:
    writer.add_sliding_window(gemma.sliding_window)
    writer.add_sliding_window_pattern(list(gemma.sliding_layers))
    if gemma.local_rope_theta is not None:
        writer.add_rope_freq_base_swa(gemma.local_rope_theta)
    if gemma.attn_logit_softcapping is not None:
        writer.add_attn_logit_softcapping(gemma.attn_logit_softcapping)
    if gemma.final_logit_softcapping is not None:
        writer.add_final_logit_softcapping(gemma.final_logit_softcapping)


def write_gguf(
    path: Path,
    spec: ModelSpec,
    vocab: Vocab,
    outtype: str,
    plans: list[TensorPlan],
    progress: TensorProgress | None = None,
    *,
    output: bool = True,
) -> str | None:
    """Write the GGUF to `path` (the caller handles atomic renaming); returns the file's sha256, hashed as the data
    is written (hashlib releases the GIL, so this overlaps the encoding threads) instead of reading the file back.
    An output is hashed and synced to disk before it is renamed into place; a scratch file (`output=False`: the f16
    GGUF k-quants are made from) is neither, and None is returned. Memory: a few chunks (parallel_encode)."""
    writer = GGUFWriter(path=None, arch=spec.arch_name)
    add_model_metadata(writer, spec, vocab, outtype)
    for plan in plans:
        writer.add_tensor_info(plan.gguf_name, plan.shape, np.dtype(np.float32), plan.nbytes, raw_dtype=plan.qtype)
    total_bytes = sum(plan.n_source_bytes for plan in plans)
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None and len(writer.fout) == 1
        out = writer.fout[0]
        alignment = writer.data_alignment
        out.flush()
        digest = hashlib.sha256() if output else None
        if digest is not None:
            with open(path, "rb") as header:  # header, metadata and tensor infos, as GGUFWriter wrote them
                digest.update(header.read(out.tell()))

        def write(data: bytes | memoryview) -> None:
            out.write(data)
            if digest is not None:
                digest.update(data)

        done_bytes, current, written = 0, -1, 0

        def finish(index: int) -> None:
            nonlocal done_bytes
            plan = plans[index]
            if written != plan.nbytes:
                raise RuntimeError(f"{plan.gguf_name}: wrote {written} bytes, expected {plan.nbytes}")
            done_bytes += plan.n_source_bytes
            if progress is not None:
                progress(index + 1, len(plans), done_bytes, total_bytes)

        for index, pieces in encoded_pieces(plans):
            if index != current:  # pieces arrive in plan order, each plan's consecutively
                if current >= 0:
                    finish(current)
                write(b"\0" * (-out.tell() % alignment))
                current, written = index, 0
            for piece in pieces:
                write(piece)
                written += piece.nbytes
        if current >= 0:
            finish(current)
        write(b"\0" * (-out.tell() % alignment))
        out.flush()
        if output:
            os.fsync(out.fileno())
    finally:
        writer.close()
    return digest.hexdigest() if digest is not None else None
