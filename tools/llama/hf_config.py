"""The hyper-parameters of a Hugging Face causal LM folder, as llama.cpp needs them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES

from .errors import ConversionError
from .files import read_json_object, short_repr

# Hugging Face architecture class → llama.cpp architecture. Qwen2/3 use NeoX-style rope in llama.cpp (no Q/K
# permutation); llama-family models use GPT-J-style pairs, so their Q/K rows are permuted on the way out.
SUPPORTED_ARCHITECTURES: dict[str, MODEL_ARCH] = {
    "LlamaForCausalLM": MODEL_ARCH.LLAMA,
    "MistralForCausalLM": MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": MODEL_ARCH.QWEN2,
    "Qwen3ForCausalLM": MODEL_ARCH.QWEN3,
    # Phi-3 keeps its fused qkv_proj and gate_up_proj: llama.cpp's phi3 graph splits them itself (NeoX rope).
    "Phi3ForCausalLM": MODEL_ARCH.PHI3,
    # Gemma 2/3: (1 + w) RMSNorm weights (stored +1 for llama.cpp), embeddings scaled by √hidden inside llama.cpp.
    "Gemma2ForCausalLM": MODEL_ARCH.GEMMA2,
    "Gemma3ForCausalLM": MODEL_ARCH.GEMMA3,
    "Qwen3_5ForCausalLM": MODEL_ARCH.QWEN35,
}
GEMMA_ARCHS = (MODEL_ARCH.GEMMA2, MODEL_ARCH.GEMMA3)


@dataclass(frozen=True)
class RopeScaling:
    kind: str  # "linear", "yarn" or "llama3"
    factor: float
    original_context_length: int | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None


@dataclass(frozen=True)
class GemmaAttention:
    """Gemma 2/3 attention settings llama.cpp reads from the GGUF metadata."""

    sliding_window: int
    sliding_layers: tuple[bool, ...]  # per layer: sliding-window (local) attention or global
    local_rope_theta: float | None  # rope base of the sliding layers (None: the global one)
    attn_logit_softcapping: float | None
    final_logit_softcapping: float | None


@dataclass(frozen=True)
class LinearAttention:
    """Qwen3.5's Gated DeltaNet layers, as llama.cpp's qwen35 reads them (its `ssm.*` metadata)."""

    conv_kernel: int
    head_dim: int  # key and value heads alike (llama.cpp's ssm.state_size)
    n_key_heads: int
    n_value_heads: int
    full_attention_interval: int  # every n-th layer is full attention, the others linear
    rope_dim: int  # rotary dimensions of the full-attention heads (partial_rotary_factor × head_dim)
    rope_sections: tuple[int, int, int, int]  # interleaved multimodal rope sections (text positions: all equal)


@dataclass(frozen=True)
class ModelSpec:
    hf_architecture: str
    arch: MODEL_ARCH
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context_length: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    vocab_size: int
    tie_embeddings: bool
    name: str
    gemma: GemmaAttention | None = None
    linear: LinearAttention | None = None

    @property
    def arch_name(self) -> str:
        return MODEL_ARCH_NAMES[self.arch]

    @property
    def permutes_qk(self) -> bool:
        return self.arch == MODEL_ARCH.LLAMA

    @property
    def norms_store_offset(self) -> bool:
        """Gemma's and Qwen3.5's RMSNorm scale by (1 + weight); llama.cpp's by the stored weight."""
        return self.arch in GEMMA_ARCHS or self.arch == MODEL_ARCH.QWEN35

    @property
    def rope_dim(self) -> int:
        return self.linear.rope_dim if self.linear is not None else self.head_dim

    def is_recurrent(self, layer: int) -> bool:
        """Whether the layer is linear attention (Qwen3.5's Gated DeltaNet) rather than full attention."""
        return self.linear is not None and (layer + 1) % self.linear.full_attention_interval != 0


UINT32_MAX = (1 << 32) - 1  # GGUF stores sizes and counts as uint32
FLOAT32_MAX = float(np.finfo(np.float32).max)  # and these numbers as float32
CONFIG_HINT = "fix config.json or re-save the model with transformers' save_pretrained"


def _fail(key: str, requirement: str, value: Any) -> ConversionError:
    return ConversionError(f"config.json: {key} must be {requirement}, not {short_repr(value)}; {CONFIG_HINT}")


def _integer(config: dict[str, Any], key: str, default: int | None = None, *, minimum: int = 1) -> int:
    """A whole number in [minimum, 2^32) (a JSON float with an integral value counts; booleans and text do not)."""
    value = config.get(key)
    if value is None:
        if default is None:
            raise ConversionError(f"config.json lacks {key!r}; {CONFIG_HINT}")
        return default
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= UINT32_MAX:
        raise _fail(key, f"an integer from {minimum} to {UINT32_MAX:,}", value)
    return value


def _number(config: dict[str, Any], key: str, default: float, *, positive: bool = True) -> float:
    """A finite number, > 0 (or >= 0 when not `positive`)."""
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _fail(key, "a number", value)
    try:
        number = float(value)
    except OverflowError:  # an integer past float's range
        raise _fail(key, "a finite number", value) from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0) or number > FLOAT32_MAX:
        raise _fail(key, ("a number > 0" if positive else "a number >= 0") + " that fits a float32", value)
    return number


def _rope_settings(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope theta, scaling dict) from either transformers 5's `rope_parameters` or the older top-level keys."""
    parameters = config.get("rope_parameters")
    if isinstance(parameters, dict):
        theta = _number(parameters, "rope_theta", _number(config, "rope_theta", 10000.0))
        kind = parameters.get("rope_type", parameters.get("type", "default"))
        return theta, None if kind == "default" else parameters
    if parameters is not None:
        raise _fail("rope_parameters", "an object", parameters)
    scaling = config.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise _fail("rope_scaling", "an object or null", scaling)
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return _number(config, "rope_theta", 10000.0), scaling


def _rope_scaling(scaling: dict[str, Any] | None, arch: MODEL_ARCH) -> RopeScaling | None:
    if scaling is None:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = _number(scaling, "factor", 1.0)
    original = _integer(scaling, "original_max_position_embeddings", 0, minimum=0) or None
    if kind == "linear":
        return RopeScaling("linear", factor)
    if kind == "yarn":
        return RopeScaling("yarn", factor, original)
    if kind == "llama3":
        if arch != MODEL_ARCH.LLAMA:
            raise ConversionError(f"llama3 rope scaling is only supported for llama-family models, not {arch.name}")
        low, high = _number(scaling, "low_freq_factor", 1.0), _number(scaling, "high_freq_factor", 4.0)
        if high <= low:
            raise ConversionError(f"config.json: rope scaling high_freq_factor ({high}) must exceed low_freq_factor "
                                  f"({low}); {CONFIG_HINT}")
        return RopeScaling("llama3", factor, original or 8192, low, high)
    raise ConversionError(f"unsupported rope scaling type {short_repr(kind)} (supported: linear, yarn, llama3)")


def _architecture(config: dict[str, Any]) -> tuple[str, MODEL_ARCH]:
    architectures = config.get("architectures") or []
    if (not isinstance(architectures, list) or len(architectures) != 1
            or not isinstance(architectures[0], str) or architectures[0] not in SUPPORTED_ARCHITECTURES):
        shown = architectures or config.get("model_type")
        raise ConversionError(
            f"unsupported architecture {short_repr(shown)}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return architectures[0], SUPPORTED_ARCHITECTURES[architectures[0]]


def _check_phi3(config: dict[str, Any], hidden: int, n_heads: int, head_dim: int) -> None:
    """What llama.cpp's phi3 graph cannot express: partial rotary embeddings and heads not spanning hidden_size."""
    rotary = _number(config, "partial_rotary_factor", 1.0)
    if rotary != 1.0:
        raise ConversionError(f"config.json: partial_rotary_factor {rotary} is not supported for Phi3ForCausalLM "
                              "(llama.cpp's phi3 rotates whole heads)")
    if n_heads * head_dim != hidden:
        raise ConversionError(f"config.json: Phi3ForCausalLM needs num_attention_heads × head_dim = hidden_size "
                              f"({n_heads} × {head_dim} ≠ {hidden}); {CONFIG_HINT}")


def _per_layer_type_rope(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """transformers 5's `rope_parameters` keyed by layer type (e.g. Gemma 3's), else {}."""
    parameters = config.get("rope_parameters")
    if not isinstance(parameters, dict) or not parameters.keys() & {"sliding_attention", "full_attention"}:
        return {}
    if not all(isinstance(value, dict) for value in parameters.values()):
        raise _fail("rope_parameters", "an object of rope settings per layer type", parameters)
    return parameters


def _optional_number(config: dict[str, Any], key: str) -> float | None:
    return None if config.get(key) is None else _number(config, key, 0.0)


def _gemma_attention(config: dict[str, Any], arch: MODEL_ARCH, head_dim: int) -> GemmaAttention:
    """Gemma's sliding-window layout, local rope base and soft-capping, as far as llama.cpp can express them."""
    name = "Gemma2ForCausalLM" if arch == MODEL_ARCH.GEMMA2 else "Gemma3ForCausalLM"
    scalar = _number(config, "query_pre_attn_scalar", float(head_dim))
    if scalar != head_dim:
        # llama.cpp scales queries by 1/√head_dim (except for its hard-coded 27B sizes).
        raise ConversionError(f"config.json: {name} with query_pre_attn_scalar {scalar} ≠ head_dim {head_dim} is not "
                              "supported (llama.cpp scales attention by 1/√head_dim)")
    n_layers = _integer(config, "num_hidden_layers")
    layer_types = config.get("layer_types")
    if not (isinstance(layer_types, list) and len(layer_types) == n_layers
            and all(t in ("sliding_attention", "full_attention") for t in layer_types)):
        raise _fail("layer_types", f"a list of {n_layers} 'sliding_attention'/'full_attention' entries", layer_types)
    attn_cap = _optional_number(config, "attn_logit_softcapping")
    if arch == MODEL_ARCH.GEMMA2 and config.get("tie_word_embeddings") is False:
        raise ConversionError(f"config.json: {name} with untied embeddings is not supported (llama.cpp's gemma2 "
                              "reuses the token embedding as the output layer)")
    if arch == MODEL_ARCH.GEMMA2 and attn_cap is None:
        raise ConversionError(f"config.json: {name} without attn_logit_softcapping is not supported "
                              "(llama.cpp's gemma2 always soft-caps attention)")
    if arch == MODEL_ARCH.GEMMA3 and attn_cap is not None:
        raise ConversionError(f"config.json: {name} with attn_logit_softcapping is not supported "
                              "(llama.cpp's gemma3 does not soft-cap attention)")
    local_theta = None
    if arch == MODEL_ARCH.GEMMA3:
        local_theta = _number(config, "rope_local_base_freq", 10000.0)  # transformers 4's key
        local = _per_layer_type_rope(config).get("sliding_attention")
        if local is not None:
            if local.get("rope_type", "default") != "default":
                raise ConversionError("config.json: rope scaling of Gemma 3's sliding-window layers is not supported")
            local_theta = _number(local, "rope_theta", local_theta)
    return GemmaAttention(
        sliding_window=_integer(config, "sliding_window", 4096),
        sliding_layers=tuple(t == "sliding_attention" for t in layer_types),
        local_rope_theta=local_theta,
        attn_logit_softcapping=attn_cap,
        final_logit_softcapping=_optional_number(config, "final_logit_softcapping"),
    )


QWEN35_DEFAULT_ROPE_SECTIONS = (11, 11, 10)  # transformers' Qwen3.5 default mrope_section


def _qwen35_linear_attention(config: dict[str, Any], head_dim: int, n_layers: int) -> LinearAttention:
    layer_types = config.get("layer_types")
    if not isinstance(layer_types, list) or len(layer_types) != n_layers or "full_attention" not in layer_types:
        raise _fail("layer_types", f"a list of {n_layers} 'linear_attention'/'full_attention' entries", layer_types)
    interval = layer_types.index("full_attention") + 1
    expected = ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(n_layers)]
    if layer_types != expected:
        raise ConversionError(f"config.json: layer_types {short_repr(layer_types)} is not one full-attention layer "
                              "every n layers, the only layout llama.cpp's qwen35 reads")
    key_dim, value_dim = _integer(config, "linear_key_head_dim"), _integer(config, "linear_value_head_dim")
    if key_dim != value_dim:
        raise ConversionError(f"config.json: linear_key_head_dim ({key_dim}) differs from linear_value_head_dim "
                              f"({value_dim}); llama.cpp's qwen35 takes one head size")
    n_key, n_value = _integer(config, "linear_num_key_heads"), _integer(config, "linear_num_value_heads")
    if n_value % n_key:
        raise ConversionError(f"config.json: linear_num_value_heads ({n_value}) is not a multiple of "
                              f"linear_num_key_heads ({n_key}); {CONFIG_HINT}")
    parameters = config.get("rope_parameters")
    rope: dict[str, Any] = parameters if isinstance(parameters, dict) else config
    factor = _number(rope, "partial_rotary_factor", 1.0)
    rope_dim = int(head_dim * factor)
    sections = rope.get("mrope_section", QWEN35_DEFAULT_ROPE_SECTIONS)
    if (not isinstance(sections, list | tuple) or not 1 <= len(sections) <= 4
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sections)):
        raise _fail("rope_parameters.mrope_section", "up to 4 integers >= 0", sections)
    if not 0 < rope_dim <= head_dim or rope_dim % 2:
        raise _fail("rope_parameters.partial_rotary_factor", f"a factor giving an even rotary size ≤ {head_dim}",
                    factor)
    if sum(sections) > rope_dim // 2:
        raise ConversionError(f"config.json: rope_parameters.mrope_section {short_repr(sections)} covers more than the "
                              f"{rope_dim // 2} rotary pairs of a head; {CONFIG_HINT}")
    padded = (*sections, 0, 0, 0)[:4]
    return LinearAttention(_integer(config, "linear_conv_kernel_dim"), key_dim, n_key, n_value, interval, rope_dim,
                           (padded[0], padded[1], padded[2], padded[3]))


def read_model_spec(model_dir: Path) -> ModelSpec:
    """Parse `config.json`; raises ConversionError for what llama.cpp (or this converter) cannot handle.

    Sizes are checked for type and range here and against the weights' shapes by the tensor plan."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{model_dir}: no config.json (not a Hugging Face model folder)")
    config = read_json_object(config_path, CONFIG_HINT)
    if "text_config" in config and "hidden_size" not in config:
        raise ConversionError("multimodal models are not supported: convert the text model alone")
    if quantization := config.get("quantization_config"):
        method = quantization.get("quant_method", "unknown") if isinstance(quantization, dict) else quantization
        shown = method if isinstance(method, str) and len(method) <= 60 else short_repr(method)
        raise ConversionError(
            f"the model is quantized ({shown}); convert a merged 16/32-bit model "
            "(merge the adapter into the unquantized base model first)"
        )
    hf_architecture, arch = _architecture(config)
    hidden = _integer(config, "hidden_size")
    n_heads = _integer(config, "num_attention_heads")
    n_kv_heads = _integer(config, "num_key_value_heads", n_heads)
    if n_heads % n_kv_heads:
        raise ConversionError(f"config.json: num_attention_heads ({n_heads}) is not a multiple of "
                              f"num_key_value_heads ({n_kv_heads}); {CONFIG_HINT}")
    head_dim = _integer(config, "head_dim", hidden // n_heads or None)
    if head_dim % 2:
        raise ConversionError(f"config.json: head_dim {head_dim} is odd; rotary embeddings rotate pairs of "
                              f"dimensions; {CONFIG_HINT}")
    tie = config.get("tie_word_embeddings")
    tie = False if tie is None else tie
    if not isinstance(tie, bool):
        raise _fail("tie_word_embeddings", "true or false", tie)
    gemma = _gemma_attention(config, arch, head_dim) if arch in GEMMA_ARCHS else None
    if per_layer_type := _per_layer_type_rope(config):
        # transformers 5 keeps one rope per layer type (Gemma 3): the global layers' goes to rope.freq_base.
        config = {**config, "rope_parameters": per_layer_type.get("full_attention")}
    theta, scaling = _rope_settings(config)
    if arch == MODEL_ARCH.PHI3:
        _check_phi3(config, hidden, n_heads, head_dim)
    n_layers = _integer(config, "num_hidden_layers")
    linear = _qwen35_linear_attention(config, head_dim, n_layers) if arch == MODEL_ARCH.QWEN35 else None
    return ModelSpec(
        hf_architecture=hf_architecture,
        arch=arch,
        n_layers=n_layers,
        hidden_size=hidden,
        intermediate_size=_integer(config, "intermediate_size"),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        context_length=_integer(config, "max_position_embeddings", 4096),
        rms_norm_eps=_number(config, "rms_norm_eps", 1e-6, positive=False),
        rope_theta=theta,
        rope_scaling=_rope_scaling(scaling, arch),
        vocab_size=_integer(config, "vocab_size"),
        tie_embeddings=tie,
        name=model_dir.resolve().name.encode("utf-8", "replace").decode("utf-8"),
        gemma=gemma,
        linear=linear,
    )


def llama3_rope_freq_factors(spec: ModelSpec) -> np.ndarray:
    """Per-dimension divisors of the rope frequencies for llama3-type scaling (llama.cpp's `rope_freqs.weight`).

    High frequencies (wavelength under original_context / high_freq_factor) stay as they are, low ones (wavelength
    over original_context / low_freq_factor) are divided by `factor`, and the band between is interpolated.
    """
    scaling = spec.rope_scaling
    assert scaling is not None and scaling.kind == "llama3"
    assert scaling.original_context_length and scaling.low_freq_factor and scaling.high_freq_factor
    original = scaling.original_context_length
    low_wavelength = original / scaling.low_freq_factor
    high_wavelength = original / scaling.high_freq_factor
    factors = []
    for index in range(0, spec.head_dim, 2):
        frequency = 1.0 / spec.rope_theta ** (index / spec.head_dim)
        wavelength = 2 * math.pi / frequency
        if wavelength < high_wavelength:
            factors.append(1.0)
        elif wavelength > low_wavelength:
            factors.append(scaling.factor)
        else:
            smooth = (original / wavelength - scaling.low_freq_factor) / (
                scaling.high_freq_factor - scaling.low_freq_factor
            )
            factors.append(1.0 / ((1 - smooth) / scaling.factor + smooth))
    return np.asarray(factors, dtype=np.float32)
