"""A readable summary of a GGUF file: its metadata and its tensors, from the validating header reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFValueType

from .gguf_reader import GGUFField, read_gguf_header

# Arrays longer than this are summarised (token lists have 100k+ entries).
MAX_SHOWN_ITEMS = 8
MAX_SHOWN_CHARS = 160


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


def _value(field: GGUFField) -> Any:
    if field.type == GGUFValueType.ARRAY and field.count > MAX_SHOWN_ITEMS:
        return f"[{field.count} items: {', '.join(repr(i) for i in field.value[:3])}, …]"
    return field.value


def summarize(path: Path) -> GGUFSummary:
    """Raises InvalidGGUF for a malformed file and OSError for one that cannot be read."""
    header = read_gguf_header(path)
    metadata = {key: _value(field) for key, field in header.fields.items()}
    tensors = [TensorRow(t.name, t.type.name, t.shape, t.nbytes) for t in header.tensors]
    return GGUFSummary(metadata, tensors)


def _printable(value: Any, limit: int = 1024) -> str:
    """One line without control characters: a hostile key or value cannot move the cursor or start new lines."""
    text = str(value)[:limit].replace("\n", "\\n")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)


def format_summary(summary: GGUFSummary) -> str:
    lines = ["metadata:"]
    keys = {key: _printable(key) for key in summary.metadata}
    width = min(max((len(key) for key in keys.values()), default=0), 64)
    for key, value in summary.metadata.items():
        text = _printable(value)
        cut = text[:MAX_SHOWN_CHARS] + ("…" if len(text) > MAX_SHOWN_CHARS else "")
        lines.append(f"  {keys[key]:<{width}}  {cut}")
    lines.append(f"tensors: {len(summary.tensors)}, {sum(t.nbytes for t in summary.tensors):,} bytes")
    names = [_printable(t.name) for t in summary.tensors]
    name_width = max((len(name) for name in names), default=4)
    lines.append(f"  {'name':<{name_width}}  {'type':<6}  {'shape':<20}  {'bytes':>14}")
    for name, tensor in zip(names, summary.tensors, strict=True):
        shape = "×".join(str(d) for d in tensor.shape)
        lines.append(f"  {name:<{name_width}}  {tensor.type:<6}  {shape:<20}  {tensor.nbytes:>14,}")
    return "\n".join(lines)
