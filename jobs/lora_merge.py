"""Merge a peft LoRA adapter into 16-bit base weights, streaming one tensor at a time.

Everything is planned from the safetensors headers and `adapter_config.json` before a byte is written
(`lora_plan.py`, which also says what an adapter may hold): the output shards' headers are known up front, so each
tensor is read, merged (block by block of rows, in fp32) and appended to its shard, and freed. Peak memory is about
the largest tensor (the embedding) plus the LoRA pair being applied, not the model. Nothing here imports
transformers or peft; the result is a plain Hugging Face folder either can load.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kubetune.jobs.lora_plan import (
    INDEX_FILE,
    SAFETENSORS_DTYPES,
    SAFETENSORS_NAMES,
    AdapterPlan,
    MergeError,
    OutputTensor,
    SafetensorsFiles,
    adapter_weights,
    assign_shards,
    base_weight_files,
    plan_adapter,
    plan_outputs,
    read_json,
)

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
BLOCK_ELEMENTS = 1024 * 1024  # rows of a LoRA-adapted weight are merged in fp32 blocks of about this many elements

MERGE_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# The tokenizer's vocabulary files travel together (mixing the base's vocab.json with the adapter's tokenizer.json
# would describe two different vocabularies); the template and generation config are taken file by file.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json",
)
SINGLE_FILES = ("chat_template.jinja", "generation_config.json")


class MergeStopped(Exception):
    """The merge was asked to stop; nothing was written to the output folder."""


@dataclass(frozen=True)
class MergeResult:
    output_dir: Path
    dtype: str
    vocab_size: int
    shards: tuple[str, ...]
    tied_embeddings: bool
    lora_modules: int
    replaced: tuple[str, ...]
    total_bytes: int


def merge_adapter(
    base_dir: Path,
    adapter_dir: Path,
    output_dir: Path,
    *,
    dtype: str = "bfloat16",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    on_shard: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MergeResult:
    """Merge `adapter_dir` (peft LoRA) into the base model folder `base_dir`, writing a new folder `output_dir`.

    Everything is validated before writing; the output is built in a temporary sibling and renamed into place, so
    `output_dir` either does not exist or is complete. `on_shard(done, total)` is called as each shard is finished.
    """
    if dtype not in MERGE_DTYPES:
        raise MergeError(f"merge dtype must be one of {', '.join(MERGE_DTYPES)}, got {dtype!r}")
    _map_large_allocations()
    if output_dir.exists():
        raise FileExistsError(f"merge output folder already exists: {output_dir}")
    config = read_json(base_dir / "config.json", "base model")
    base = SafetensorsFiles(base_weight_files(base_dir), "base model")
    adapter_config = read_json(adapter_dir / "adapter_config.json", "adapter")
    adapter = SafetensorsFiles([adapter_weights(adapter_dir)], "adapter")
    plan = plan_adapter(adapter_config, adapter)
    tokenizer_dir = adapter_dir if _has_tokenizer(adapter_dir) else base_dir

    outputs, vocab_size, tied = plan_outputs(config, base, adapter, plan, MERGE_DTYPES[dtype])
    _check_tokenizer_fits(tokenizer_dir, vocab_size)
    shards = assign_shards(outputs, max_shard_bytes)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        weight_map: dict[str, str] = {}
        for number, (file_name, tensors) in enumerate(shards, start=1):
            _write_shard(tmp / file_name, tensors, lambda out: _materialize(out, base, adapter, plan), should_stop)
            weight_map.update({tensor.name: file_name for tensor in tensors})
            if on_shard is not None:
                on_shard(number, len(shards))
        total_bytes = sum(tensor.nbytes for tensor in outputs)
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(_merged_config(config, dtype, vocab_size, tied), indent=2) + "\n")
        _copy_side_files(base_dir, adapter_dir, tokenizer_dir, tmp)
        tmp.rename(output_dir)
    finally:
        base.close()
        adapter.close()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return MergeResult(
        output_dir=output_dir,
        dtype=dtype,
        vocab_size=vocab_size,
        shards=tuple(name for name, _ in shards),
        tied_embeddings=tied,
        lora_modules=len(plan.lora),
        replaced=tuple(sorted(plan.replacements)),
        total_bytes=total_bytes,
    )


def _map_large_allocations() -> None:
    """Make glibc serve every allocation over 1 MiB with its own mmap, so a freed tensor goes back to the OS.

    By default glibc raises that threshold after the first large free, and the tensor-sized buffers this merge frees
    one after another then pile up in the heap: peak memory measured 2-3x higher on a 1B model.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc (musl): nothing to tune
    libc.mallopt(M_MMAP_THRESHOLD, 1024 * 1024)


# --- the tokenizer ----------------------------------------------------------------------------------------------------


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


def _check_tokenizer_fits(tokenizer_dir: Path, vocab_size: int) -> None:
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file() or vocab_size == 0:
        return
    tokenizer = read_json(path, "tokenizer")
    vocab = (tokenizer.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [token["id"] for token in tokenizer.get("added_tokens") or []]
    needed = max(ids, default=-1) + 1
    if needed > vocab_size:
        raise MergeError(
            f"{path} has token ids up to {needed - 1} but the merged model has {vocab_size} embedding rows: "
            "tokens were added without saving the resized embeddings in the adapter"
        )


# --- writing ----------------------------------------------------------------------------------------------------------


def _materialize(
    out: OutputTensor, base: SafetensorsFiles, adapter: SafetensorsFiles, plan: AdapterPlan
) -> Iterator[torch.Tensor]:
    """Compute one output tensor as consecutive blocks of rows: base (or replacement) values, grown rows, token rows,
    LoRA delta, with the math in fp32. Only a LoRA-adapted weight is worked on, block by block, so that neither a
    full fp32 copy of it nor a full delta ever exists."""
    target = SAFETENSORS_DTYPES[out.dtype]
    values = adapter.get(out.replacement) if out.replacement is not None else base.get(out.source or out.name)
    missing_rows = out.shape[0] - values.shape[0] if values.dim() else 0
    if not target.is_floating_point or not (missing_rows or out.token_rows or out.lora):
        yield values.to(target)
        return
    if missing_rows or out.token_rows is not None:
        weight = values.to(torch.float32)
        if missing_rows:
            weight = torch.cat([weight, weight.mean(dim=0, keepdim=True).expand(missing_rows, -1)])
        if out.token_rows is not None:
            index = torch.tensor(out.token_rows.indices, dtype=torch.long)
            weight.index_copy_(0, index, adapter.get(out.token_rows.delta).to(torch.float32))
        values = weight
    if out.lora is None:
        yield values.to(target)
        return
    a, b = adapter.get(out.lora.a).to(torch.float32), adapter.get(out.lora.b).to(torch.float32)
    # W += (B @ A) * scale; a weight stored transposed (embeddings, fan_in_fan_out) gets (B @ A).T = A.T @ B.T.
    left, right = (a.T, b.T) if out.lora.embedding or plan.fan_in_fan_out else (b, a)
    rows = max(1, BLOCK_ELEMENTS // max(1, out.shape[1]))
    for start in range(0, out.shape[0], rows):
        block = values[start:start + rows].to(torch.float32)
        block.addmm_(left[start:start + rows], right, alpha=out.lora.scale)
        yield block.to(target)


def _write_shard(
    path: Path,
    tensors: list[OutputTensor],
    materialize: Callable[[OutputTensor], Iterator[torch.Tensor]],
    should_stop: Callable[[], bool] | None,
) -> None:
    """Write a safetensors file whose header is known in advance, appending each tensor's bytes as they are computed."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for out in tensors:
        header[out.name] = {"dtype": out.dtype, "shape": list(out.shape), "data_offsets": [offset, offset + out.nbytes]}
        offset += out.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header so tensor data starts 8-byte aligned
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for out in tensors:
            if should_stop is not None and should_stop():
                raise MergeStopped("merge stopped before it finished; nothing was published")
            written = 0
            for block in materialize(out):
                if SAFETENSORS_NAMES[block.dtype] != out.dtype or tuple(block.shape[1:]) != out.shape[1:]:
                    raise AssertionError(f"{out.name}: computed {block.dtype} {list(block.shape)}, planned {out.dtype} {list(out.shape)}")
                written += handle.write(_tensor_bytes(block)) or 0
            if written != out.nbytes:
                raise AssertionError(f"{out.name}: wrote {written} bytes, planned {out.nbytes}")


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    raw: Any = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()  # a zero-copy view of the tensor's bytes
    return memoryview(raw)


def _merged_config(config: dict[str, Any], dtype: str, vocab_size: int, tied: bool) -> dict[str, Any]:
    merged = {key: value for key, value in config.items() if key != "quantization_config"}
    merged["dtype"] = dtype
    merged["torch_dtype"] = dtype  # older readers (and some converters) still look for this name
    if vocab_size:
        merged["vocab_size"] = vocab_size
    merged["tie_word_embeddings"] = tied
    return merged


def _copy_side_files(base_dir: Path, adapter_dir: Path, tokenizer_dir: Path, out: Path) -> None:
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out / name)
    for name in SINGLE_FILES:
        source = next((folder / name for folder in (adapter_dir, base_dir) if (folder / name).is_file()), None)
        if source is not None:
            shutil.copyfile(source, out / name)
