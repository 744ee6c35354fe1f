"""A readable summary of a GGUF file: its metadata and its tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType

# Arrays longer than this are summarised (token lists have 100k+ entries).
MAX_SHOWN_ITEMS = 8


@dataclass(frozen=True)
class TensorRow:
    name: str
    type: str
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    nbytes: int


@dataclass(frozen=True)
class GGUFSummary:
    metadata: dict[str, Any]
    tensors: list[TensorRow]


def _value(field: Any) -> Any:
    if field.types and field.types[0] == GGUFValueType.ARRAY:
        items = field.contents()
        if len(items) > MAX_SHOWN_ITEMS:
            return f"[{len(items)} items: {', '.join(repr(i) for i in items[:3])}, …]"
        return items
    return field.contents()


def summarize(path: Path) -> GGUFSummary:
    reader = GGUFReader(path)
    metadata = {key: _value(field) for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    tensors = [
        TensorRow(t.name, t.tensor_type.name, tuple(int(d) for d in t.shape), int(t.n_bytes)) for t in reader.tensors
    ]
    return GGUFSummary(metadata, tensors)


def format_summary(summary: GGUFSummary) -> str:
    lines = ["metadata:"]
    width = max((len(key) for key in summary.metadata), default=0)
    for key, value in summary.metadata.items():
        text = str(value).replace("\n", "\\n")
        lines.append(f"  {key:<{width}}  {text[:160] + ('…' if len(text) > 160 else '')}")
    lines.append(f"tensors: {len(summary.tensors)}, {sum(t.nbytes for t in summary.tensors):,} bytes")
    name_width = max((len(t.name) for t in summary.tensors), default=4)
    lines.append(f"  {'name':<{name_width}}  {'type':<6}  {'shape':<20}  {'bytes':>14}")
    for tensor in summary.tensors:
        shape = "×".join(str(d) for d in tensor.shape)
        lines.append(f"  {tensor.name:<{name_width}}  {tensor.type:<6}  {shape:<20}  {tensor.nbytes:>14,}")
    return "\n".join(lines)
