"""The model under training: tokenizer with the chat markers and added tokens, base model (4-bit for QLoRA), LoRA.

New token rows are trained with peft's trainable tokens (only those rows, saved in the adapter), which replace the
base rows on merge: the merge only has to resize the base embeddings to `len(tokenizer)` before loading the adapter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
from bitsandbytes import functional as bnb_functional
from bitsandbytes.nn import Linear4bit
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.tokenization_utils_base import AddedToken

from kubetune.chat_templates import ChatTemplateError, marker_tokens
from kubetune.jobs.train_attention import training_attention
from kubetune.jobs.train_compile import compile_decoder_layers
from kubetune.jobs.train_cpu_lora import fuse_cpu_lora_layers
from kubetune.jobs.train_data import template_variables
from kubetune.jobs.train_fp8 import enable_fp8_base_matmuls, fp8_unsupported_reason
from kubetune.jobs.train_host_state import keep_input_embedding_on_host
from kubetune.jobs.train_offload import enable_activation_offload

Method = Literal["qlora", "lora"]
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class LoraSettings(Protocol):
    """What LoRA needs (the spec's `training.lora` fits; kept structural so benchmarks need no API models)."""

    @property
    def r(self) -> int: ...
    @property
    def alpha(self) -> int: ...
    @property
    def dropout(self) -> float: ...
    @property
    def target_modules(self) -> Sequence[str]: ...


class QuantizationSettings(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def double_quant(self) -> bool: ...
    @property
    def compute_dtype(self) -> str: ...


@dataclass(frozen=True)
class DefaultQuantization:
    """QLoRA's quantization when the spec leaves it out (the API's defaults)."""

    type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"


class ModelSetupError(RuntimeError):
    """The requested training setup cannot run here (e.g. CUDA asked for but absent)."""


class BaseModelFolderError(ValueError):
    """The base model folder holds no tokenizer transformers can load: the manifest's to fix, not a retry's."""


def resolve_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise ModelSetupError("training.device is 'cuda' but no CUDA device is available")
    return torch.device("cpu")


def load_tokenizer(
    model_dir: Path, chat_template: str, added_special_tokens: list[str]
) -> tuple[PreTrainedTokenizerBase, list[str]]:
    """The base tokenizer with the run's chat template and every needed special token (the template's turn markers,
    e.g. ChatML's `<|im_start|>`/`<|im_end|>`, and `added_special_tokens`); returns the tokens it added."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (ValueError, KeyError, TypeError) as error:  # a tokenizer file it cannot read: bad input
        raise BaseModelFolderError(f"{model_dir}: no tokenizer transformers can load: {error}") from None
    except OSError as error:
        if error.errno is not None:  # a real I/O error: retried like any other
            raise
        # transformers' own "does not appear to have a file named ..." (no errno): a folder without tokenizer files
        raise BaseModelFolderError(f"{model_dir}: no tokenizer transformers can load: {error}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelSetupError(f"{model_dir}: a fast tokenizer (tokenizer.json) is required for label masking")
    tokenizer.chat_template = chat_template
    vocab = tokenizer.get_vocab()
    try:
        markers = marker_tokens(chat_template, **template_variables(tokenizer))
    except ChatTemplateError as error:
        raise ModelSetupError(str(error)) from None
    wanted = list(dict.fromkeys([*markers, *added_special_tokens]))
    missing = [token for token in wanted if token not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in missing],
                             special_tokens=True)
    return tokenizer, missing


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")):
        if isinstance(candidate, int):
            return candidate
    return 0


@dataclass
class LoadedModel:
    model: PeftModel
    device: torch.device
    autocast_dtype: torch.dtype | None  # mixed precision for the forward pass, None for plain fp32
    new_token_ids: list[int]
    compiled: bool = False  # decoder layers run through torch.compile
    fp8_layers: int = 0  # 4-bit base layers whose training matmuls run in FP8
    int8_layers: int = 0  # base layers whose training matmuls run in int8 (CPU)
    offloaded_layers: int = 0  # decoder layers whose checkpointed inputs wait in CPU memory (activation offload)
    host_embedding: bool = False  # the frozen, untied input embedding table waits in host memory (activation offload)


def load_base_model(
    model_dir: Path,
    method: Method,
    quantization: QuantizationSettings | None,
    device: torch.device,
    attn_implementation: str = "sdpa",
    four_bit_layers: bool = True,
) -> tuple[PreTrainedModel, torch.dtype | None]:
    """The frozen base model on `device` and the dtype its forward pass runs in. qlora with `four_bit_layers` off:
    the base's weights are rounded to 4-bit once and kept as plain fp32 layers (see `round_to_4bit`)."""
    if method == "qlora" and not four_bit_layers:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32, device_map={"": str(device)}, attn_implementation=attn_implementation
        )
        round_to_4bit(model, quantization or DefaultQuantization())
        return model, None
    if method == "qlora":
        quant = quantization or DefaultQuantization()
        compute = DTYPES[quant.compute_dtype]
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.type,
            bnb_4bit_use_double_quant=quant.double_quant,
            bnb_4bit_compute_dtype=compute,
        )
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), quantization_config=config, dtype=compute if device.type == "cuda" else torch.float32,
                device_map={"": str(device)}, attn_implementation=attn_implementation,
            )
        except (ImportError, RuntimeError, ValueError) as error:
            raise ModelSetupError(f"cannot load {model_dir} in 4-bit on {device} (bitsandbytes): {error}") from error
        keep_4bit_weights_trainable(model)
        return model, (compute if device.type == "cuda" and compute != torch.float32 else None)
    # Plain LoRA: bf16 on GPUs, fp32 on CPU (faster and more stable there than emulated half precision).
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=dtype, device_map={"": str(device)}, attn_implementation=attn_implementation
    )
    return model, (dtype if dtype != torch.float32 else None)


def round_to_4bit(model: PreTrainedModel, quant: QuantizationSettings) -> int:
    """Replace each weight bitsandbytes would quantize (every linear layer but the output head) by its 4-bit
    rounding, dequantized: the values a 4-bit layer multiplies with, computed once. QLoRA on a CPU this way learns
    against the same base as with bitsandbytes' 4-bit layers, whose CPU kernels dequantize on every matmul and made
    a CPU step ~100x slower. Returns the number of layers rounded."""
    head = model.get_output_embeddings()
    compute = DTYPES[quant.compute_dtype]
    rounded = 0
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear) or module is head:
                continue
            packed, state = bnb_functional.quantize_4bit(module.weight.data, blocksize=64, quant_type=quant.type,
                                                         compress_statistics=quant.double_quant)
            weight = bnb_functional.dequantize_4bit(packed, state).to(compute)
            module.weight.data = weight.to(module.weight.dtype)
            rounded += 1
    return rounded


def keep_4bit_weights_trainable(model: PreTrainedModel) -> None:
    """bitsandbytes on CPUs with AVX512-BF16 repacks a 4-bit weight, for good, into an inference-only layout the
    first time it runs in eval mode without grad (eval generation); backward through that kernel is not
    implemented and silently yields wrong input gradients. Training never wants that layout."""
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def embedding_weight(layer: torch.nn.Module) -> torch.Tensor:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def add_token_rows(model: PreTrainedModel, new_vocab_size: int) -> list[int]:
    """Grow the embeddings (and an untied output head) to `new_vocab_size`; new rows start at the mean of the old
    ones (deterministic, and a neutral start for a token the model has never seen)."""
    old = embedding_weight(model.get_input_embeddings()).shape[0]
    if new_vocab_size <= old:
        return []
    model.resize_token_embeddings(new_vocab_size, mean_resizing=False)
    layers = [model.get_input_embeddings(), model.get_output_embeddings()]
    with torch.no_grad():
        for weight in {id(w): w for w in (embedding_weight(layer) for layer in layers if layer is not None)}.values():
            weight[old:] = weight[:old].float().mean(dim=0).to(weight.dtype)
    return list(range(old, new_vocab_size))


def recomputed_layers(layers: int, share: float) -> list[bool]:
    """Which of `layers` decoder layers recompute in backward so that `share` of them do, spread evenly (0.5: every
    second layer; 0.75: three of every four)."""
    if not 0.0 <= share <= 1.0:
        raise ModelSetupError(f"the share of recomputed layers must be within [0, 1], not {share}")
    return [math.floor((index + 1) * share) > math.floor(index * share) for index in range(layers)]


def keep_activations(model: PreTrainedModel, recompute_share: float) -> None:
    """Turn checkpointing off again on the layers that keep their activations."""
    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    for layer, recompute in zip(layers, recomputed_layers(len(layers), recompute_share), strict=True):
        layer.gradient_checkpointing = recompute


def module_name(model: PreTrainedModel, target: torch.nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target).rsplit(".", 1)[-1]


def lora_config(model: PreTrainedModel, lora: LoraSettings, new_token_ids: list[int]) -> LoraConfig:
    targets: str | list[str] = "all-linear" if list(lora.target_modules) == ["all-linear"] else list(lora.target_modules)
    trainable_tokens: dict[str, list[int]] | None = None
    if new_token_ids:
        embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
        trainable_tokens = {module_name(model, embeddings): new_token_ids}
        if head is not None and head.weight is not embeddings.weight:
            trainable_tokens[module_name(model, head)] = new_token_ids
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        trainable_token_indices=trainable_tokens,
        task_type="CAUSAL_LM",
    )


def build_model(
    model_dir: Path,
    vocab_size: int,
    *,
    method: Method,
    quantization: QuantizationSettings | None,
    lora: LoraSettings,
    device: torch.device,
    gradient_checkpointing: bool,
    recompute_share: float = 1.0,
    attn_implementation: str | None = None,
    compile_layers: bool = False,
    fp8: bool = False,
    int8: bool = False,
    four_bit_layers: bool = True,
    activation_offload: bool = False,
    mlp_chunk_elements: int | None = None,
) -> LoadedModel:
    """The model to train. Attention defaults to `training_attention(device)` (sample-isolated varlen kernel on
    CUDA, SDPA elsewhere). With gradient checkpointing, `recompute_share` of the decoder layers (spread evenly)
    recompute their activations in backward: 1 is the least memory, less trades memory for less recompute.
    `compile_layers` fuses each decoder layer's element-wise work with torch.compile (the train stage asks for it on
    CUDA). `fp8` runs the 4-bit base weights' training matmuls in FP8 (qlora on a GPU with FP8 tensor cores;
    anywhere else it is an error). On a CPU each LoRA linear layer of uncompiled layers runs as one fused op
    (`train_cpu_lora`), and `int8` runs its base matmuls in int8 there (GPUs ignore it: `fp8` is theirs).
    `four_bit_layers` off: qlora's base is rounded to 4-bit once and multiplied in fp32 (the train stage's choice on
    CPUs). `activation_offload` recomputes every layer and keeps each layer's checkpointed input in CPU memory until
    backward (`train_offload`), and a frozen input embedding not tied to the head looks its rows up in host memory
    (`train_host_state`): the least GPU memory, same gradients; with `mlp_chunk_elements` (opt-in) its MLPs
    without LoRA dropout run in token chunks of that many intermediate values."""
    if activation_offload and not gradient_checkpointing:
        raise ModelSetupError("training.activationOffload needs training.gradientCheckpointing")
    attention = attn_implementation or training_attention(device)
    base, autocast_dtype = load_base_model(model_dir, method, quantization, device, attention, four_bit_layers)
    new_token_ids = add_token_rows(base, vocab_size)
    base.config.use_cache = False
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no input grads, so the frozen embeddings stay out of autograd.
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        keep_activations(base, 1.0 if activation_offload else recompute_share)
    model = get_peft_model(base, lora_config(base, lora, new_token_ids))
    assert isinstance(model, PeftModel)
    offloaded = enable_activation_offload(base, device, mlp_chunk_elements=mlp_chunk_elements,
                                          compile_mlp=compile_layers) if activation_offload else 0
    host_embedding = activation_offload and keep_input_embedding_on_host(base, device)
    fp8_layers = 0
    if fp8:
        reason = ("FP8 matmuls are for the 4-bit base of method qlora" if method != "qlora"
                  else fp8_unsupported_reason(device, autocast_dtype))
        if reason:
            raise ModelSetupError(f"training.fp8: {reason}")
        fp8_layers = enable_fp8_base_matmuls(model)
    # Compiled layers fuse the element-wise work themselves (and would break their graph at each op).
    int8_layers = fuse_cpu_lora_layers(model, int8=int8)[1] if device.type == "cpu" and not compile_layers else 0
    compiled = compile_layers and compile_decoder_layers(model)
    return LoadedModel(model, device, autocast_dtype, new_token_ids, compiled, fp8_layers=fp8_layers,
                       int8_layers=int8_layers, offloaded_layers=offloaded, host_embedding=host_embedding)
