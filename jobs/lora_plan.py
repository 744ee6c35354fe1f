"""What a peft LoRA adapter changes in a base model, and every tensor of the merged model: planned from the
safetensors headers and `adapter_config.json` before `lora_merge` writes a byte, so a wrong base, a missing file or
an adapter this merge cannot apply fails before any output exists.

What an adapter may hold (peft's saved layout, keys prefixed `base_model.model.`):
- `<module>.lora_A.weight` / `<module>.lora_B.weight`: `W += (B @ A) * scale` with `scale = alpha / r`
  (`alpha / sqrt(r)` with rsLoRA; `rank_pattern` / `alpha_pattern` per module), transposed for `fan_in_fan_out`;
- `<module>.lora_embedding_A` / `<module>.lora_embedding_B`: the same on an embedding, `W += (B @ A).T * scale`;
- `<module>.weight` (or `<module>.modules_to_save.weight`) for a module in `modules_to_save`: a full replacement;
  peft also saves embeddings / lm_head whole this way when training resized them for new tokens;
- `<module>.token_adapter.trainable_tokens_delta` with `trainable_token_indices`: those rows replaced, on top of
  `<module>.token_adapter.base_layer.weight` (the resized embedding) when peft saved it.

Tied embeddings stay tied only while lm_head and the embedding still hold the same values; otherwise the output gets
its own `lm_head.weight` and `tie_word_embeddings: false`. Vocabulary growth: rows for new token ids that the adapter
does not hold (an adapter saved without its resized embeddings) start from the mean of the existing rows; the random
values training gave them are not saved anywhere.

The inputs' safetensors files are read here (`SafetensorsFiles`): the plan needs their headers, the merge then reads
their tensors one at a time.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

PEFT_PREFIX = "base_model.model."

LM_HEAD = "lm_head.weight"

EMBED_SUFFIX = "embed_tokens.weight"

INDEX_FILE = "model.safetensors.index.json"

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}

_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$")
_TOKENS_KEY = re.compile(r"^(?P<module>.+)\.token_adapter\.trainable_tokens_delta$")


class MergeError(ValueError):
    """The adapter and base cannot be merged as given (wrong base, missing or corrupt files): not worth retrying."""


@dataclass(frozen=True)
class TensorRef:
    file: Path
    name: str
    dtype: str  # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offsets of the tensor's data in the file
    end: int


class SafetensorsFiles:
    """The tensors of a set of safetensors files, by name, read one at a time with plain file reads.

    Not memory-mapped on purpose: pages of a mapped file that were read stay in the process's resident set until the
    file is closed, which would make peak memory the size of a whole shard instead of one tensor.
    """

    def __init__(self, files: list[Path], what: str) -> None:
        self.tensors: dict[str, TensorRef] = {}
        for path in files:
            if not path.is_file():
                raise MergeError(f"{what}: missing weights file {path}")
            try:
                refs = _read_header(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged header can fail in any of these
                raise MergeError(f"{what}: {path} is not a valid safetensors file: {exc}") from exc
            for ref in refs:
                if ref.name in self.tensors:
                    raise MergeError(f"{what}: tensor {ref.name} is in both {self.tensors[ref.name].file.name} and {path.name}")
                self.tensors[ref.name] = ref
        self._open: tuple[Path, io.RawIOBase] | None = None

    def get(self, name: str) -> torch.Tensor:
        ref = self.tensors[name]
        if self._open is None or self._open[0] != ref.file:
            self.close()
            self._open = (ref.file, io.FileIO(ref.file, "rb"))
        handle = self._open[1]
        data = bytearray(ref.end - ref.start)
        handle.seek(ref.start)
        if handle.readinto(data) != len(data):
            raise MergeError(f"{ref.file}: tensor {name} is cut short (the file changed while it was read?)")
        if not data:
            return torch.empty(ref.shape, dtype=SAFETENSORS_DTYPES[ref.dtype])
        return torch.frombuffer(data, dtype=SAFETENSORS_DTYPES[ref.dtype]).reshape(ref.shape)

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None


def _read_header(path: Path) -> list[TensorRef]:
    """Parse and check a safetensors header: 8-byte little-endian length, JSON, then the tensors' bytes."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(size - 8, 100 * 1024**2):
            raise ValueError(f"header length {length} does not fit a {size}-byte file")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise TypeError("header is not a JSON object")
    data_start, data_size = 8 + length, size - 8 - length
    refs: list[TensorRef] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name} has unsupported dtype {dtype}")
        if end - begin != math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize or not 0 <= begin <= end <= data_size:
            raise ValueError(f"tensor {name} ({dtype} {list(shape)}) has bad offsets [{begin}, {end}] "
                             f"for {data_size} data bytes (truncated file?)")
        refs.append(TensorRef(path, name, dtype, shape, data_start + begin, data_start + end))
    return sorted(refs, key=lambda ref: ref.start)


@dataclass(frozen=True)
class LoraPair:
    a: str  # adapter tensor names
    b: str
    rank: int
    scale: float
    embedding: bool


@dataclass(frozen=True)
class TokenRows:
    indices: tuple[int, ...]
    delta: str  # adapter tensor name


@dataclass
class AdapterPlan:
    """What the adapter changes, keyed by the base tensor name it changes."""

    lora: dict[str, LoraPair] = field(default_factory=dict)
    replacements: dict[str, str] = field(default_factory=dict)
    token_rows: dict[str, TokenRows] = field(default_factory=dict)
    fan_in_fan_out: bool = False


@dataclass(frozen=True)
class OutputTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    source: str | None  # base tensor the values start from (None: a replacement provides them)
    replacement: str | None = None
    lora: LoraPair | None = None
    token_rows: TokenRows | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * SAFETENSORS_DTYPES[self.dtype].itemsize


# --- reading the inputs -----------------------------------------------------------------------------------------------


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise MergeError(f"{what}: missing {path.name} in {path.parent}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MergeError(f"{what}: {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MergeError(f"{what}: {path} must hold a JSON object")
    return data


def base_weight_files(base_dir: Path) -> list[Path]:
    index = base_dir / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index, "base model").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise MergeError(f"base model: {index} has no weight_map")
        return [base_dir / name for name in sorted(set(weight_map.values()))]
    single = base_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise MergeError(f"base model: no model.safetensors or {INDEX_FILE} in {base_dir} (only safetensors weights are merged)")


def adapter_weights(adapter_dir: Path) -> Path:
    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise MergeError(f"adapter: missing adapter_model.safetensors in {adapter_dir}")
    return path


# --- planning ---------------------------------------------------------------------------------------------------------


def plan_adapter(config: dict[str, Any], adapter: SafetensorsFiles) -> AdapterPlan:
    """Classify every adapter tensor and check ranks against adapter_config.json."""
    if config.get("peft_type") != "LORA":
        raise MergeError(f"adapter_config.json: peft_type is {config.get('peft_type')!r}, only LORA adapters are merged")
    for unsupported in ("use_dora", "lora_bias"):
        if config.get(unsupported):
            raise MergeError(f"adapter_config.json: {unsupported} is set; the merge supports plain LoRA only")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or r <= 0 or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise MergeError(f"adapter_config.json: r ({r!r}) and lora_alpha ({alpha!r}) must be positive numbers")
    rank_pattern: dict[str, int] = config.get("rank_pattern") or {}
    alpha_pattern: dict[str, float] = config.get("alpha_pattern") or {}
    modules_to_save: list[str] = config.get("modules_to_save") or []
    token_indices = config.get("trainable_token_indices")

    plan = AdapterPlan(fan_in_fan_out=bool(config.get("fan_in_fan_out")))
    parts: dict[str, dict[str, str]] = {}
    plain_replacements: dict[str, str] = {}
    for key in adapter.tensors:
        if not key.startswith(PEFT_PREFIX):
            raise MergeError(f"adapter: unexpected tensor {key} (peft adapters name tensors {PEFT_PREFIX}...)")
        name = key[len(PEFT_PREFIX):]
        module, _, param = name.rpartition(".")
        if lora := _LORA_KEY.match(name):
            parts.setdefault(lora["module"], {})[lora["part"]] = key
        elif tokens := _TOKENS_KEY.match(name):
            indices = _token_indices(token_indices, tokens["module"])
            plan.token_rows[f"{tokens['module']}.weight"] = TokenRows(tuple(indices), key)
        elif module.endswith(".modules_to_save"):
            plan.replacements[f"{module.removesuffix('.modules_to_save')}.{param}"] = key
        elif module.endswith(".token_adapter.base_layer"):
            # The embedding as training resized it; the trainable rows go on top of it.
            plan.replacements[f"{module.removesuffix('.token_adapter.base_layer')}.{param}"] = key
        elif module.endswith(".original_module"):
            continue  # the untrained copy peft saves beside a resized modules_to_save layer
        elif _matches_any(module, modules_to_save) or name.endswith(EMBED_SUFFIX) or name == LM_HEAD:
            # A modules_to_save layer, or an embedding peft saved whole because training resized it.
            plain_replacements[name] = key
        else:
            raise MergeError(f"adapter: tensor {key} is neither a LoRA weight nor a module listed in modules_to_save")
    plan.replacements = {**plain_replacements, **plan.replacements}

    for module, found in sorted(parts.items()):
        embedding = "lora_embedding_A" in found or "lora_embedding_B" in found
        a_part, b_part = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A.weight", "lora_B.weight")
        if a_part not in found or b_part not in found:
            missing = a_part if a_part not in found else b_part
            raise MergeError(f"adapter: {module} has no {missing} (the adapter file is incomplete)")
        a, b = found[a_part], found[b_part]
        rank = int(_pattern_value(rank_pattern, module, r))
        module_alpha = float(_pattern_value(alpha_pattern, module, alpha))
        a_shape, b_shape = adapter.tensors[a].shape, adapter.tensors[b].shape
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != rank or b_shape[1] != rank:
            raise MergeError(
                f"adapter: rank of {module} is inconsistent: {a} has shape {list(a_shape)} and {b} {list(b_shape)}, "
                f"but adapter_config.json says r={rank}"
            )
        scale = module_alpha / math.sqrt(rank) if config.get("use_rslora") else module_alpha / rank
        plan.lora[f"{module}.weight"] = LoraPair(a, b, rank, scale, embedding)

    for name in plan.token_rows:
        if name in plan.lora:
            raise MergeError(f"adapter: {name} has trainable token rows and a LoRA delta; not supported together")
    for name in plan.lora:
        if name in plan.replacements:
            raise MergeError(f"adapter: {name} is both LoRA-adapted and in modules_to_save; not supported together")
    return plan


def _matches_any(module: str, names: list[str]) -> bool:
    return any(module == name or module.endswith(f".{name}") for name in names)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # peft matches pattern keys as regular expressions against the end of the module name.
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
            return value
    return default


def _token_indices(config_value: Any, module: str) -> list[int]:
    if isinstance(config_value, list):
        indices = config_value
    elif isinstance(config_value, dict):
        matching = [value for key, value in config_value.items() if module == key or module.endswith(f".{key}")]
        if len(matching) != 1:
            raise MergeError(f"adapter_config.json: trainable_token_indices has no single entry for {module}")
        indices = matching[0]
    else:
        raise MergeError(f"adapter: {module} has trainable token rows but adapter_config.json has no trainable_token_indices")
    if not all(isinstance(i, int) and i >= 0 for i in indices):
        raise MergeError(f"adapter_config.json: trainable_token_indices for {module} must be non-negative integers")
    return list(indices)


def plan_outputs(
    config: dict[str, Any], base: SafetensorsFiles, adapter: SafetensorsFiles, plan: AdapterPlan, dtype: torch.dtype
) -> tuple[list[OutputTensor], int, bool]:
    """Decide every output tensor (name, shape, dtype, recipe); returns them, the vocab size and whether tied."""
    for name in (*plan.lora, *plan.replacements, *plan.token_rows):
        if name not in base.tensors and not (name == LM_HEAD and _embedding_name(base) is not None):
            raise MergeError(f"adapter changes {name}, which the base model does not have: adapter made for another base?")

    embed = _embedding_name(base)
    base_tied = embed is not None and (LM_HEAD not in base.tensors or bool(config.get("tie_word_embeddings")))
    vocab_size = _merged_vocab_size(base, adapter, plan, embed)
    tied = base_tied and _stays_tied(adapter, plan, embed)
    vocab_tensors = {name for name in (embed, LM_HEAD) if name is not None}

    outputs: list[OutputTensor] = []
    names = [name for name in base.tensors if not (base_tied and name == LM_HEAD)]
    if embed is not None and not tied and LM_HEAD not in names:
        names.append(LM_HEAD)
    for name in names:
        source: str | None = name
        token_rows = plan.token_rows.get(name)
        if name == LM_HEAD and base_tied:
            source = embed
            if token_rows is None and embed is not None:
                # peft ties trainable tokens of a tied embedding to lm_head: the same rows change in both.
                token_rows = plan.token_rows.get(embed)
        assert source is not None
        ref = base.tensors[source]
        shape = (vocab_size, *ref.shape[1:]) if name in vocab_tensors else ref.shape
        float_type = SAFETENSORS_DTYPES[ref.dtype].is_floating_point
        out = OutputTensor(
            name=name,
            shape=shape,
            dtype=SAFETENSORS_NAMES[dtype] if float_type else ref.dtype,
            source=None if name in plan.replacements else source,
            replacement=plan.replacements.get(name),
            lora=plan.lora.get(name),
            token_rows=token_rows,
        )
        _check_shapes(out, adapter, plan.fan_in_fan_out)
        outputs.append(out)
    return outputs, vocab_size, tied


def _embedding_name(base: SafetensorsFiles) -> str | None:
    candidates = [name for name in base.tensors if name.endswith(EMBED_SUFFIX)]
    return candidates[0] if len(candidates) == 1 else None


def _merged_vocab_size(base: SafetensorsFiles, adapter: SafetensorsFiles, plan: AdapterPlan, embed: str | None) -> int:
    if embed is None:
        if plan.token_rows or any(name.endswith(EMBED_SUFFIX) or name == LM_HEAD for name in plan.replacements):
            raise MergeError(f"base model has no single *.{EMBED_SUFFIX} tensor, so its vocabulary cannot be changed")
        return 0
    sizes = [base.tensors[embed].shape[0]]
    for name in (embed, LM_HEAD):
        if name in plan.replacements:
            sizes.append(adapter.tensors[plan.replacements[name]].shape[0])
        if name in plan.token_rows:
            sizes.append(max(plan.token_rows[name].indices, default=-1) + 1)
        if name in plan.lora and plan.lora[name].embedding:
            sizes.append(adapter.tensors[plan.lora[name].a].shape[1])
    return max(sizes)


def _stays_tied(adapter: SafetensorsFiles, plan: AdapterPlan, embed: str | None) -> bool:
    """Whether a tied base can stay tied: the adapter leaves lm_head and the embedding with the same values."""
    assert embed is not None
    if LM_HEAD in plan.lora or embed in plan.lora:
        return False
    if not _same_tensor(adapter, plan.replacements.get(embed), plan.replacements.get(LM_HEAD)):
        return False  # one side trained (or resized) on its own: they diverged
    embed_rows, head_rows = plan.token_rows.get(embed), plan.token_rows.get(LM_HEAD)
    if head_rows is None:
        return True  # peft ties an embedding's trainable rows to lm_head
    return (embed_rows is not None and embed_rows.indices == head_rows.indices
            and _same_tensor(adapter, embed_rows.delta, head_rows.delta))


def _same_tensor(adapter: SafetensorsFiles, first: str | None, second: str | None) -> bool:
    if first is None or second is None:
        return first == second
    return torch.equal(adapter.get(first), adapter.get(second))


def _check_shapes(out: OutputTensor, adapter: SafetensorsFiles, fan_in_fan_out: bool) -> None:
    hint = "adapter made for another base?"
    if out.replacement is not None:
        got = adapter.tensors[out.replacement].shape
        if got != out.shape:
            raise MergeError(f"adapter: {out.replacement} has shape {list(got)}, but {out.name} is {list(out.shape)}: {hint}")
    if out.token_rows is not None:
        got = adapter.tensors[out.token_rows.delta].shape
        if len(out.shape) != 2 or got != (len(out.token_rows.indices), out.shape[1]):
            raise MergeError(
                f"adapter: {out.token_rows.delta} has shape {list(got)}, expected "
                f"[{len(out.token_rows.indices)}, {out.shape[1] if len(out.shape) == 2 else '?'}] for {out.name}: {hint}"
            )
    if out.lora is not None:
        a, b = adapter.tensors[out.lora.a].shape, adapter.tensors[out.lora.b].shape
        delta = (b[0], a[1])
        if out.lora.embedding or fan_in_fan_out:
            delta = (a[1], b[0])
        if len(out.shape) != 2 or delta != out.shape:
            raise MergeError(
                f"adapter: LoRA for {out.name} ({out.lora.a} {list(a)}, {out.lora.b} {list(b)}) does not fit its shape "
                f"{list(out.shape)}: {hint}"
            )


def assign_shards(outputs: list[OutputTensor], max_shard_bytes: int) -> list[tuple[str, list[OutputTensor]]]:
    groups: list[list[OutputTensor]] = [[]]
    size = 0
    for out in outputs:
        if groups[-1] and size + out.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(out)
        size += out.nbytes
    count = len(groups)
    return [(f"model-{i:05d}-of-{count:05d}.safetensors", group) for i, group in enumerate(groups, start=1)]
