"""The hyper-parameters of a Hugging Face causal LM folder, as llama.cpp needs them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES

from .errors import ConversionError

# Hugging Face architecture class → llama.cpp architecture. Qwen2/3 use NeoX-style rope in llama.cpp (no Q/K
# permutation); llama-family models use GPT-J-style pairs, so their Q/K rows are permuted on the way out.
SUPPORTED_ARCHITECTURES: dict[str, MODEL_ARCH] = {
    "LlamaForCausalLM": MODEL_ARCH.LLAMA,
    "MistralForCausalLM": MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": MODEL_ARCH.QWEN2,
    "Qwen3ForCausalLM": MODEL_ARCH.QWEN3,
}


@dataclass(frozen=True)
class RopeScaling:
    kind: str  # "linear", "yarn" or "llama3"
    factor: float
    original_context_length: int | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None


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

    @property
    def arch_name(self) -> str:
        return MODEL_ARCH_NAMES[self.arch]

    @property
    def permutes_qk(self) -> bool:
        return self.arch == MODEL_ARCH.LLAMA


def _rope_settings(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope theta, scaling dict) from either transformers 5's `rope_parameters` or the older top-level keys."""
    parameters = config.get("rope_parameters")
    if isinstance(parameters, dict):
        theta = parameters.get("rope_theta", config.get("rope_theta", 10000.0))
        kind = parameters.get("rope_type", parameters.get("type", "default"))
        return float(theta), None if kind == "default" else parameters
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return float(config.get("rope_theta", 10000.0)), scaling


def _rope_scaling(scaling: dict[str, Any] | None, arch: MODEL_ARCH) -> RopeScaling | None:
    if scaling is None:
        return None
    kind = str(scaling.get("rope_type", scaling.get("type")))
    factor = float(scaling.get("factor", 1.0))
    original = scaling.get("original_max_position_embeddings")
    if kind == "linear":
        return RopeScaling("linear", factor)
    if kind == "yarn":
        return RopeScaling("yarn", factor, int(original) if original else None)
    if kind == "llama3":
        if arch != MODEL_ARCH.LLAMA:
            raise ConversionError(f"llama3 rope scaling is only supported for llama-family models, not {arch.name}")
        return RopeScaling(
            "llama3",
            factor,
            int(original) if original else 8192,
            float(scaling.get("low_freq_factor", 1.0)),
            float(scaling.get("high_freq_factor", 4.0)),
        )
    raise ConversionError(f"unsupported rope scaling type {kind!r} (supported: linear, yarn, llama3)")


def read_model_spec(model_dir: Path) -> ModelSpec:
    """Parse `config.json`; raises ConversionError for what llama.cpp (or this converter) cannot handle."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{model_dir}: no config.json (not a Hugging Face model folder)")
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    if "text_config" in config and "hidden_size" not in config:
        raise ConversionError("multimodal models are not supported: convert the text model alone")
    if quantization := config.get("quantization_config"):
        method = quantization.get("quant_method", "unknown") if isinstance(quantization, dict) else quantization
        raise ConversionError(
            f"the model is quantized ({method}); convert a merged 16/32-bit model "
            "(merge the adapter into the unquantized base model first)"
        )
    architectures = config.get("architectures") or []
    if len(architectures) != 1 or architectures[0] not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(
            f"unsupported architecture {architectures or config.get('model_type')!r}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    hf_architecture = architectures[0]
    arch = SUPPORTED_ARCHITECTURES[hf_architecture]
    try:
        hidden = int(config["hidden_size"])
        n_heads = int(config["num_attention_heads"])
        theta, scaling = _rope_settings(config)
        return ModelSpec(
            hf_architecture=hf_architecture,
            arch=arch,
            n_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            n_heads=n_heads,
            n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
            head_dim=int(config.get("head_dim") or hidden // n_heads),
            context_length=int(config.get("max_position_embeddings", 4096)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=_rope_scaling(scaling, arch),
            vocab_size=int(config["vocab_size"]),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            name=model_dir.resolve().name,
        )
    except KeyError as exc:
        raise ConversionError(f"config.json lacks {exc.args[0]!r}") from exc


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
