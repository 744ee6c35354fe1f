"""Which tensors a GGUF gets, under which names and types, and how each is converted chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    MODEL_ARCH,
    MODEL_TENSOR,
    MODEL_TENSORS,
    TENSOR_NAMES,
    GGMLQuantizationType,
    get_tensor_name_map,
    quants,
)

from .errors import ConversionError
from .files import short_repr
from .hf_config import ModelSpec, llama3_rope_freq_factors
from .safetensors_io import FLOAT_DTYPES, StoredTensor

Q = GGMLQuantizationType
# Output types written directly, and the GGML type of their 2-D weights.
DIRECT_WEIGHT_TYPES: dict[str, GGMLQuantizationType] = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}
# About 32 MiB of float32 per chunk: large enough for fast numpy, small against the largest tensors.
CHUNK_ELEMENTS = 8 * 1024 * 1024
# Tensors a checkpoint may carry that llama.cpp recomputes.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass(frozen=True)
class TensorPlan:
    gguf_name: str
    shape: tuple[int, ...]  # numpy order: (rows, columns)
    qtype: GGMLQuantizationType
    source: StoredTensor | None  # None for tensors we compute (rope_freqs)
    permute_head_dim: int = 0  # llama Q/K rows: reorder each head from rotate-half to interleaved pairs
    computed: np.ndarray | None = None
    add_one: bool = False  # Gemma norm weights: llama.cpp multiplies by the weight, Gemma by (1 + weight)
    negative_exp: bool = False  # Qwen3.5's A_log: llama.cpp's ssm_a holds -exp(A_log)
    # Qwen3.5's value heads regrouped (see value_head_order): the new order of the rows, or of the columns.
    row_order: np.ndarray | None = None
    column_order: np.ndarray | None = None

    @property
    def reordered(self) -> bool:
        return self.row_order is not None or self.column_order is not None

    @property
    def nbytes(self) -> int:
        block, block_bytes = GGML_QUANT_SIZES[self.qtype]
        elements = int(np.prod(self.shape, dtype=np.int64))
        return elements // block * block_bytes

    @property
    def n_source_bytes(self) -> int:
        return self.source.nbytes if self.source is not None else 0


def weight_type(gguf_name: str, shape: tuple[int, ...], outtype: str) -> GGMLQuantizationType:
    """1-D tensors (norms, biases) stay float32 as llama.cpp expects; 2-D ones take the output type."""
    if len(shape) < 2:
        return Q.F32
    qtype = DIRECT_WEIGHT_TYPES[outtype]
    block, _ = GGML_QUANT_SIZES[qtype]
    if shape[-1] % block != 0:
        return Q.F16  # rows that do not split into quantization blocks
    return qtype


def plan_tensors(spec: ModelSpec, stored: dict[str, StoredTensor], outtype: str) -> list[TensorPlan]:
    """The GGUF tensors for `outtype`, checked against the architecture; raises ConversionError before any writing."""
    layer_weights = layer_weight_names(spec)
    if spec.n_layers * len(layer_weights) > len(stored):
        # Also bounds the name map below, which grows with the layer count config.json claims.
        raise ConversionError(
            f"config.json says num_hidden_layers={spec.n_layers}, but the weights hold only {len(stored)} tensors "
            f"(each layer has at least {len(layer_weights)})"
        )
    name_map = get_tensor_name_map(spec.arch, spec.n_layers)
    allowed = set(MODEL_TENSORS[spec.arch])
    plans: list[TensorPlan] = []
    unknown: list[str] = []
    for name, tensor in stored.items():
        if name.endswith(IGNORED_SUFFIXES):
            continue
        if tensor.dtype not in FLOAT_DTYPES:
            raise ConversionError(
                f"tensor {short_repr(name)} is stored as {tensor.dtype}: only 16/32-bit float weights can be "
                "converted (is this a bitsandbytes/GPTQ-quantized folder? merge into the unquantized base model first)"
            )
        # Qwen3.5's dt_bias is the bias of llama.cpp's ssm_dt (gguf-py knows it by its older dt_proj name).
        lookup = name.removesuffix(".dt_bias") + ".dt_proj.bias" if name.endswith(".dt_bias") else name
        mapped = name_map.get_type_and_name(lookup, try_suffixes=(".weight", ".bias"))
        if mapped is None or mapped[0] not in allowed:
            unknown.append(name)
            continue
        if not 1 <= len(tensor.shape) <= 4 or 0 in tensor.shape:
            raise ConversionError(f"{tensor.file}: tensor {short_repr(name)} has shape {list(tensor.shape)}; "
                                  "weights have 1 to 4 non-zero dimensions")
        kind, gguf_name = mapped
        if kind == MODEL_TENSOR.OUTPUT and spec.tie_embeddings:
            continue  # tied: llama.cpp reuses token_embd.weight
        permute = spec.head_dim if spec.permutes_qk and kind in (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K) else 0
        add_one = spec.norms_store_offset and kind in NORM_TENSORS
        shape = tensor.shape
        if kind == MODEL_TENSOR.SSM_CONV1D:
            shape = tuple(n for n in shape if n != 1) if len(shape) == 3 and shape[1] == 1 else shape
        qtype = Q.F32 if kind in F32_TENSORS else weight_type(gguf_name, shape, outtype)
        rows, columns = _value_head_orders(spec, kind, shape)
        plans.append(TensorPlan(gguf_name, shape, qtype, tensor, permute, add_one=add_one,
                                negative_exp=kind == MODEL_TENSOR.SSM_A, row_order=rows, column_order=columns))
    if unknown:
        shown = ", ".join(short_repr(name) for name in sorted(unknown)[:8]) + (" …" if len(unknown) > 8 else "")
        raise ConversionError(f"{len(unknown)} tensor(s) have no {spec.arch_name} GGUF name: {shown}")
    _check_shapes(spec, plans)
    if spec.rope_scaling is not None and spec.rope_scaling.kind == "llama3":
        factors = llama3_rope_freq_factors(spec)
        name = TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + ".weight"
        plans.append(TensorPlan(name, factors.shape, Q.F32, None, computed=factors))
    return plans


def value_head_order(n_key_heads: int, n_value_heads: int, head_dim: int) -> np.ndarray:
    """Qwen3.5 groups its value heads by key head (k0: v0 v1, k1: v2 v3); llama.cpp's qwen35 broadcasts the key heads
    over the value heads tiled (v0 v2, v1 v3). The source index of each element of the tiled order."""
    grouped = np.arange(n_value_heads * head_dim).reshape(n_key_heads, n_value_heads // n_key_heads, head_dim)
    return grouped.transpose(1, 0, 2).reshape(-1)


def _value_head_orders(
    spec: ModelSpec, kind: MODEL_TENSOR, shape: tuple[int, ...]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(row order, column order) of a Qwen3.5 linear-attention tensor whose value heads need regrouping."""
    linear = spec.linear
    if linear is None or linear.n_value_heads == linear.n_key_heads:
        return None, None
    heads = (linear.n_key_heads, linear.n_value_heads)
    if kind in (MODEL_TENSOR.ATTN_QKV, MODEL_TENSOR.SSM_CONV1D):  # q and k rows stay, then the value rows
        key_rows = 2 * linear.n_key_heads * linear.head_dim
        return np.concatenate([np.arange(key_rows), key_rows + value_head_order(*heads, linear.head_dim)]), None
    if kind == MODEL_TENSOR.ATTN_GATE:
        return value_head_order(*heads, linear.head_dim), None
    if kind in (MODEL_TENSOR.SSM_BETA, MODEL_TENSOR.SSM_ALPHA, MODEL_TENSOR.SSM_A, MODEL_TENSOR.SSM_DT):
        return value_head_order(*heads, 1), None
    if kind == MODEL_TENSOR.SSM_OUT and len(shape) == 2:
        return None, value_head_order(*heads, linear.head_dim)
    return None, None


NORM_TENSORS = frozenset({
    MODEL_TENSOR.OUTPUT_NORM, MODEL_TENSOR.ATTN_NORM, MODEL_TENSOR.ATTN_POST_NORM, MODEL_TENSOR.FFN_NORM,
    MODEL_TENSOR.FFN_PRE_NORM, MODEL_TENSOR.FFN_POST_NORM, MODEL_TENSOR.ATTN_Q_NORM, MODEL_TENSOR.ATTN_K_NORM,
})
# Gated DeltaNet tensors llama.cpp's kernels read as float32 (its own converter keeps them so).
F32_TENSORS = frozenset({MODEL_TENSOR.SSM_CONV1D, MODEL_TENSOR.SSM_A, MODEL_TENSOR.SSM_DT, MODEL_TENSOR.SSM_NORM})
# Per-layer weights every layer of a supported architecture has.
LAYER_WEIGHTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# Phi-3 stores q/k/v as one qkv_proj and gate/up as one gate_up_proj (llama.cpp's ffn_up of 2 × intermediate rows).
PHI3_LAYER_WEIGHTS = ("attn_qkv", "attn_output", "ffn_up", "ffn_down")
# Qwen3.5's linear-attention layers (its full-attention layers have LAYER_WEIGHTS).
QWEN35_LINEAR_LAYER_WEIGHTS = ("attn_qkv", "attn_gate", "ssm_conv1d", "ssm_beta", "ssm_alpha", "ssm_norm", "ssm_out",
                               "ffn_gate", "ffn_up", "ffn_down")


def layer_weight_names(spec: ModelSpec, layer: int = 0) -> tuple[str, ...]:
    if spec.arch == MODEL_ARCH.PHI3:
        return PHI3_LAYER_WEIGHTS
    return QWEN35_LINEAR_LAYER_WEIGHTS if spec.is_recurrent(layer) else LAYER_WEIGHTS


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The shape (numpy order: rows = outputs) each GGUF tensor of this config must have, by name."""
    q_rows, kv_rows = spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim
    hidden, ffn = spec.hidden_size, spec.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (spec.vocab_size, hidden),
        "output.weight": (spec.vocab_size, hidden),
        "output_norm.weight": (hidden,),
    }
    for layer in range(spec.n_layers):
        for part, shape in (
            ("attn_q.weight", (q_rows, hidden)), ("attn_k.weight", (kv_rows, hidden)),
            ("attn_v.weight", (kv_rows, hidden)), ("attn_output.weight", (hidden, q_rows)),
            ("attn_q.bias", (q_rows,)), ("attn_k.bias", (kv_rows,)), ("attn_v.bias", (kv_rows,)),
            ("attn_q_norm.weight", (spec.head_dim,)), ("attn_k_norm.weight", (spec.head_dim,)),
            ("ffn_gate.weight", (ffn, hidden)), ("ffn_up.weight", (ffn, hidden)), ("ffn_down.weight", (hidden, ffn)),
            ("attn_norm.weight", (hidden,)), ("ffn_norm.weight", (hidden,)),
        ):
            shapes[f"blk.{layer}.{part}"] = shape
        if spec.arch == MODEL_ARCH.PHI3:
            shapes[f"blk.{layer}.attn_qkv.weight"] = (q_rows + 2 * kv_rows, hidden)
            shapes[f"blk.{layer}.ffn_up.weight"] = (2 * ffn, hidden)
        if spec.linear is not None:
            shapes[f"blk.{layer}.attn_q.weight"] = (2 * q_rows, hidden)  # each head's query, then its output gate
            shapes.update(_linear_attention_shapes(spec, layer))
    return shapes


def _linear_attention_shapes(spec: ModelSpec, layer: int) -> dict[str, tuple[int, ...]]:
    linear = spec.linear
    assert linear is not None
    key_dim, value_dim = linear.head_dim * linear.n_key_heads, linear.head_dim * linear.n_value_heads
    conv_dim, hidden = 2 * key_dim + value_dim, spec.hidden_size
    return {
        f"blk.{layer}.{part}": shape for part, shape in (
            ("attn_qkv.weight", (conv_dim, hidden)), ("attn_gate.weight", (value_dim, hidden)),
            ("ssm_conv1d.weight", (conv_dim, linear.conv_kernel)), ("ssm_dt.bias", (linear.n_value_heads,)),
            ("ssm_a", (linear.n_value_heads,)), ("ssm_beta.weight", (linear.n_value_heads, hidden)),
            ("ssm_alpha.weight", (linear.n_value_heads, hidden)), ("ssm_norm.weight", (linear.head_dim,)),
            ("ssm_out.weight", (hidden, value_dim)),
        )
    }


def _check_shapes(spec: ModelSpec, plans: list[TensorPlan]) -> None:
    by_name = {plan.gguf_name: plan for plan in plans}
    embedding = by_name.get("token_embd.weight")
    if embedding is None:
        raise ConversionError("the model has no token embedding (model.embed_tokens.weight)")
    if embedding.shape != (spec.vocab_size, spec.hidden_size):
        raise ConversionError(
            f"token embedding is {embedding.shape}, but config.json says vocab_size={spec.vocab_size}, "
            f"hidden_size={spec.hidden_size}"
        )
    for layer in range(spec.n_layers):
        for part in layer_weight_names(spec, layer):
            if f"blk.{layer}.{part}.weight" not in by_name:
                raise ConversionError(f"layer {layer} lacks its {part} weight")
    expected = expected_shapes(spec)
    for plan in plans:
        shape = expected.get(plan.gguf_name)
        if shape is not None and plan.shape != shape:
            source = plan.source.name if plan.source is not None else plan.gguf_name
            raise ConversionError(
                f"tensor {short_repr(source)} has shape {list(plan.shape)}, but config.json's sizes give "
                f"{list(shape)} (hidden_size, intermediate_size, attention heads, head_dim, vocab_size)"
            )


def _permute_rows(rows: np.ndarray, head_dim: int) -> np.ndarray:
    """Rotate-half order (pairs i, i+d/2) → interleaved order (pairs 2i, 2i+1), per head."""
    shape = rows.shape
    return rows.reshape(-1, 2, head_dim // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _encode(values: np.ndarray, qtype: GGMLQuantizationType, name: str) -> bytes:
    if qtype == Q.F32:
        return values.astype("<f4", copy=False).tobytes()
    if qtype != Q.BF16 and not np.isfinite(values).all():  # f32 and bf16 store NaN and infinity as they are
        raise ConversionError(f"{name}: the weights hold NaN or infinite values, which {qtype.name} cannot store; "
                              "choose f32 or bf16, or fix the model")
    if qtype == Q.F16:
        half = values.astype("<f2")
        if not np.isfinite(half).all():
            raise ConversionError(f"{name}: values overflow float16; choose bf16 or f32")
        return half.tobytes()
    return quants.quantize(np.ascontiguousarray(values, dtype=np.float32), qtype).tobytes()


def encoded_chunks(plan: TensorPlan) -> Iterator[bytes]:
    """The tensor's GGUF data, produced a few rows at a time so memory stays at one chunk."""
    if plan.computed is not None:
        yield _encode(plan.computed, plan.qtype, plan.gguf_name)
        return
    source = plan.source
    assert source is not None
    if plan.reordered:  # whole tensor at once (Qwen3.5's projections: at most a few hundred MB of float32)
        values = source.read_rows().reshape(plan.shape)
        if plan.row_order is not None:
            values = values[plan.row_order]
        if plan.column_order is not None:
            values = values[:, plan.column_order]
        if plan.negative_exp:
            values = -np.exp(values.astype(np.float32))
        yield _encode(values, plan.qtype, plan.gguf_name)
        return
    if len(plan.shape) < 2:
        values = source.read_rows()
        if plan.permute_head_dim:
            values = _permute_rows(values, plan.permute_head_dim)
        if plan.add_one:
            values = values + 1.0
        if plan.negative_exp:
            values = -np.exp(values.astype(np.float32))
        yield _encode(values, plan.qtype, plan.gguf_name)
        return
    rows, row_elements = plan.shape[0], int(np.prod(plan.shape[1:]))
    step = max(1, CHUNK_ELEMENTS // row_elements)
    if plan.permute_head_dim:
        step = max(plan.permute_head_dim, step // plan.permute_head_dim * plan.permute_head_dim)
    for start in range(0, rows, step):
        values = source.read_rows(start, min(rows, start + step))
        if plan.permute_head_dim:
            values = _permute_rows(values, plan.permute_head_dim)
        yield _encode(values, plan.qtype, plan.gguf_name)
