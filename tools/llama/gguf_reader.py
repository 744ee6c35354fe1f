"""A validating GGUF header reader with bounded work and memory.

gguf-py's GGUFReader memory-maps the file and trusts its counts, lengths and offsets: a hostile header makes it
raise whatever numpy raises, or allocate and loop for as long as the header says. This reader checks every count,
length, type and offset against the file's size *before* using it, never reads tensor data, keeps at most
`KEPT_ITEMS` items of an array and `KEPT_STRING_BYTES` of a string, and so does work proportional to the header's
real size; what costs Python objects per entry is capped (`MAX_ENTRIES` metadata entries and tensors,
`MAX_NESTED_ARRAYS` nested arrays: real files have dozens, thousands and none). Every defect is an `InvalidGGUF`
naming the file, the byte offset and the field.

The rules are the GGUF specification's, with llama.cpp's loader where the specification leaves room: versions 2
and 3 (either byte order), known value and tensor types, at most 4 dimensions, tensor names of at most 64 bytes,
unique keys and tensor names, `general.alignment` a uint32 power of two, tensor data aligned, inside the file and
not overlapping.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, BinaryIO

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .errors import InvalidGGUF
from .files import open_regular_file

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSOR_NAME_BYTES = 64
MAX_ARRAY_NESTING = 8  # the spec allows nested arrays; no real file nests at all, and llama.cpp refuses any
MAX_NESTED_ARRAYS = 4096  # in the whole file
MAX_ENTRIES = 1 << 16  # metadata entries, and tensors (real files: dozens of entries, at most thousands of tensors)
KEPT_ITEMS = 8  # array items kept for display; the rest are checked and skipped
KEPT_STRING_BYTES = 1 << 20  # a longer string keeps its first MiB (chat templates are tens of KiB)
INT64_MAX = (1 << 63) - 1

V = GGUFValueType
SCALAR_FORMATS: dict[GGUFValueType, str] = {
    V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i", V.FLOAT32: "f",
    V.BOOL: "?", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d",
}
# The fewest bytes a value of each variable-size type occupies: a string's length, an array's type and count.
MIN_VARIABLE_SIZE = {V.STRING: 8, V.ARRAY: 12}


@dataclass(frozen=True)
class GGUFField:
    key: str
    type: GGUFValueType
    value: Any  # a scalar, a string (possibly cut at KEPT_STRING_BYTES), or an array's first KEPT_ITEMS items
    count: int = 1  # an array's length (its items beyond `value` were checked, not kept)
    item_type: GGUFValueType | None = None
    string_bytes: int = 0  # a string's full length in bytes

    @property
    def complete(self) -> bool:
        """Whether `value` holds the whole value (not a cut string or the head of a long array)."""
        if self.type == V.ARRAY:
            return self.count <= KEPT_ITEMS
        return self.type != V.STRING or self.string_bytes <= KEPT_STRING_BYTES


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    type: GGMLQuantizationType
    offset: int  # absolute offset of the data in the file
    nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    byte_order: str  # "<" or ">"
    fields: dict[str, GGUFField]
    tensors: list[GGUFTensor]
    alignment: int
    data_offset: int
    file_size: int

    def string(self, key: str) -> str | None:
        field = self.fields.get(key)
        return field.value if field is not None and field.type == V.STRING else None


class _Cursor:
    """Reads a file front to back through a bounded buffer; every read is checked against the file's size first."""

    CHUNK = 1 << 20

    def __init__(self, handle: BinaryIO, path: Path, size: int) -> None:
        self.handle, self.path, self.size = handle, path, size
        self.pos = 0
        self.order = "<"
        self._buffer = b""
        self._buffer_at = 0
        self._structs: dict[str, struct.Struct] = {}
        self.nested_arrays_left = MAX_NESTED_ARRAYS

    def fail(self, message: str, at: int | None = None) -> InvalidGGUF:
        return InvalidGGUF(f"{self.path}: not a valid GGUF file: {message} (at byte {self.pos if at is None else at})")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(f"truncated: {what} needs {n:,} bytes but only {self.size - self.pos:,} remain")

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        start = self.pos - self._buffer_at
        if start < 0 or start + n > len(self._buffer):
            self.handle.seek(self.pos)
            self._buffer = self.handle.read(max(n, self.CHUNK))
            self._buffer_at, start = self.pos, 0
            if len(self._buffer) < n:
                raise self.fail("the file shrank while it was read")
        self.pos += n
        return self._buffer[start:start + n]

    def unpack(self, fmt: str, what: str) -> Any:
        key = self.order + fmt  # the order is known only after the version is read
        packer = self._structs.get(key)
        if packer is None:
            packer = self._structs[key] = struct.Struct(key)
        return packer.unpack(self.read(packer.size, what))[0]

    def u32(self, what: str) -> int:
        value: int = self.unpack("I", what)
        return value

    def u64(self, what: str) -> int:
        value: int = self.unpack("Q", what)
        return value

    def string_bytes(self, what: str, keep: int = KEPT_STRING_BYTES) -> tuple[bytes, int]:
        """(the first `keep` bytes, the full length) of a length-prefixed string."""
        length = self.u64(f"the length of {what}")
        self.need(length, what)
        kept = self.read(min(length, keep), what)
        self.pos += length - len(kept)
        return kept, length

    def skip_strings(self, first: int, stop: int, what: str) -> None:
        """Check and pass items [first, stop) of a string array without reading them (token lists, merges)."""
        packer = struct.Struct(self.order + "Q")
        for index in range(first, stop):
            start = self.pos - self._buffer_at
            if 0 <= start <= len(self._buffer) - 8:
                length = packer.unpack_from(self._buffer, start)[0]
                self.pos += 8
            else:
                length = self.u64(f"the length of item {index} of {what}")
            if length > self.size - self.pos:
                raise self.fail(f"truncated: item {index} of {what} ({length:,} bytes) runs past the end of the file")
            self.pos += length

    def text(self, what: str, keep: int = KEPT_STRING_BYTES) -> tuple[str, int]:
        data, length = self.string_bytes(what, keep)
        return data.decode("utf-8", errors="replace"), length

    def value_type(self, what: str) -> GGUFValueType:
        at = self.pos
        raw = self.u32(f"the type of {what}")
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.fail(f"{what} has unknown value type {raw}", at) from None


def _array(cursor: _Cursor, what: str, depth: int, keep: int) -> tuple[list[Any], int, GGUFValueType]:
    """(the first `keep` items, the item count, the item type) of an array; the other items are checked, not kept."""
    if depth > MAX_ARRAY_NESTING:
        raise cursor.fail(f"{what} nests arrays more than {MAX_ARRAY_NESTING} deep")
    if depth > 1:
        # Nested arrays cost a call each: a budget for the whole file keeps a file of empty ones from taking minutes.
        cursor.nested_arrays_left -= 1
        if cursor.nested_arrays_left < 0:
            raise cursor.fail(f"{what}: more than {MAX_NESTED_ARRAYS:,} nested arrays in the file")
    item_type = cursor.value_type(f"the items of {what}")
    count = cursor.u64(f"the length of {what}")
    items: list[Any] = []
    fmt = SCALAR_FORMATS.get(item_type)
    if fmt is not None:
        size = struct.calcsize(fmt)
        cursor.need(count * size, f"{what} ({count:,} {item_type.name} items)")
        items = [cursor.unpack(fmt, what) for _ in range(min(count, keep))]
        cursor.pos += (count - len(items)) * size
        return items, count, item_type
    cursor.need(count * MIN_VARIABLE_SIZE[item_type], f"{what} ({count:,} {item_type.name} items)")
    kept = min(count, keep)
    for index in range(kept):
        if item_type == V.STRING:
            items.append(cursor.text(f"item {index} of {what}")[0])
        else:
            items.append(_array(cursor, f"item {index} of {what}", depth + 1, keep)[0])
    if item_type == V.STRING:
        cursor.skip_strings(kept, count, what)
    else:
        for index in range(kept, count):
            _array(cursor, f"item {index} of {what}", depth + 1, 0)
    return items, count, item_type


def _field(cursor: _Cursor, index: int, seen: set[bytes]) -> GGUFField:
    at = cursor.pos
    raw_key, _ = cursor.string_bytes(f"the key of metadata entry {index}", keep=1 << 16)
    key = raw_key.decode("utf-8", errors="replace")
    if raw_key in seen:
        raise cursor.fail(f"metadata key {key!r} appears twice", at)
    seen.add(raw_key)
    what = f"metadata {key!r}"
    value_type = cursor.value_type(what)
    if value_type == V.STRING:
        text, length = cursor.text(what)
        return GGUFField(key, value_type, text, string_bytes=length)
    if value_type == V.ARRAY:
        items, count, item_type = _array(cursor, what, 1, KEPT_ITEMS)
        return GGUFField(key, value_type, items, count, item_type)
    return GGUFField(key, value_type, cursor.unpack(SCALAR_FORMATS[value_type], what))


def _alignment(cursor: _Cursor, fields: dict[str, GGUFField]) -> int:
    field = fields.get("general.alignment")
    if field is None:
        return DEFAULT_ALIGNMENT
    if field.type != V.UINT32:
        raise cursor.fail(f"general.alignment must be a uint32, not {field.type.name}")
    alignment = int(field.value)
    if alignment <= 0 or alignment & (alignment - 1):
        raise cursor.fail(f"general.alignment must be a power of two, not {alignment}")
    return alignment


def _tensor_info(cursor: _Cursor, index: int) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int, int]:
    """(name, shape, type, offset relative to the data section, nbytes) of one tensor info."""
    at = cursor.pos
    raw_name, length = cursor.string_bytes(f"the name of tensor {index}", keep=MAX_TENSOR_NAME_BYTES)
    name = raw_name.decode("utf-8", errors="replace")
    if length > MAX_TENSOR_NAME_BYTES:
        raise cursor.fail(f"tensor {index} has a name of {length:,} bytes (at most {MAX_TENSOR_NAME_BYTES})", at)
    what = f"tensor {name!r}"
    n_dims = cursor.u32(f"the dimension count of {what}")
    if n_dims > MAX_DIMS:
        raise cursor.fail(f"{what} has {n_dims:,} dimensions (at most {MAX_DIMS})")
    shape = tuple(cursor.u64(f"dimension {d} of {what}") for d in range(n_dims))
    elements = 1
    for dim in shape:
        elements *= dim
        if elements > INT64_MAX:
            raise cursor.fail(f"{what} has shape {shape}: more than 2^63 elements")
    raw_type = cursor.u32(f"the type of {what}")
    try:
        tensor_type = GGMLQuantizationType(raw_type)
        block, block_bytes = GGML_QUANT_SIZES[tensor_type]
    except (ValueError, KeyError):
        raise cursor.fail(f"{what} has unknown tensor type {raw_type}") from None
    if shape and shape[0] % block:
        raise cursor.fail(f"{what}: its first dimension {shape[0]} is not a multiple of {tensor_type.name}'s "
                          f"block of {block}")
    offset = cursor.u64(f"the data offset of {what}")
    return name, shape, tensor_type, offset, elements // block * block_bytes


def read_gguf_header(path: Path) -> GGUFHeader:
    """The validated header of the GGUF at `path` (no tensor data is read). Raises InvalidGGUF, or OSError when the
    file cannot be opened or read (missing, a directory, no permission)."""
    path = Path(path)
    with open_regular_file(path, InvalidGGUF) as handle:
        size = os.fstat(handle.fileno()).st_size
        cursor = _Cursor(handle, path, size)
        magic = cursor.read(4, "the magic") if size >= 4 else b""
        if magic != MAGIC:
            raise InvalidGGUF(f"{path}: not a GGUF file (it does not start with {MAGIC!r}; "
                              f"{'the file is empty' if size == 0 else f'it starts with {magic!r}'})")
        version = cursor.u32("the version")
        if version not in SUPPORTED_VERSIONS:
            swapped = struct.unpack(">I", struct.pack("<I", version))[0]
            if swapped not in SUPPORTED_VERSIONS:
                hint = "version 1 is no longer supported: reconvert the model" if version == 1 else (
                    f"this reader knows versions {', '.join(map(str, SUPPORTED_VERSIONS))}")
                raise cursor.fail(f"unsupported GGUF version {version}; {hint}", 4)
            cursor.order, version = ">", swapped
        n_tensors = cursor.u64("the tensor count")
        n_fields = cursor.u64("the metadata count")
        # Each entry takes at least 13 bytes (key length, type, one byte) and each tensor info 24: counts the
        # file cannot hold are refused before any loop runs.
        room = size - cursor.pos
        if n_fields > room // 13:
            raise cursor.fail(f"the header claims {n_fields:,} metadata entries, more than {room:,} bytes can hold", 16)
        if n_tensors > room // 24:
            raise cursor.fail(f"the header claims {n_tensors:,} tensors, more than {room:,} bytes can hold", 8)
        # Each entry becomes a few hundred bytes of Python objects: a large file of tiny entries must not make this
        # reader take gigabytes. Real models have a few dozen entries and at most a few thousand tensors.
        for count, what, at in ((n_fields, "metadata entries", 16), (n_tensors, "tensors", 8)):
            if count > MAX_ENTRIES:
                raise cursor.fail(f"the header claims {count:,} {what}; this reader takes at most {MAX_ENTRIES:,}", at)
        seen: set[bytes] = set()
        fields: dict[str, GGUFField] = {}
        for index in range(n_fields):
            field = _field(cursor, index, seen)
            fields[field.key] = field
        alignment = _alignment(cursor, fields)
        infos = [(cursor.pos, *_tensor_info(cursor, index)) for index in range(n_tensors)]
    data_offset = -(-cursor.pos // alignment) * alignment
    tensors = _place_tensors(cursor, infos, data_offset, alignment)
    return GGUFHeader(path, version, cursor.order, fields, tensors, alignment, data_offset, size)


def _place_tensors(
    cursor: _Cursor,
    infos: list[tuple[int, str, tuple[int, ...], GGMLQuantizationType, int, int]],
    data_offset: int,
    alignment: int,
) -> list[GGUFTensor]:
    tensors: list[GGUFTensor] = []
    names: set[str] = set()
    for at, name, shape, tensor_type, offset, nbytes in infos:
        if name in names:
            raise cursor.fail(f"tensor name {name!r} appears twice", at)
        names.add(name)
        if offset % alignment:
            raise cursor.fail(f"tensor {name!r} has data offset {offset:,}, not a multiple of the alignment "
                              f"{alignment}", at)
        end = data_offset + offset + nbytes
        if end > cursor.size:
            raise cursor.fail(f"truncated: tensor {name!r} ({nbytes:,} bytes at data offset {offset:,}) ends at byte "
                              f"{end:,}, past the end of the file at {cursor.size:,}", at)
        tensors.append(GGUFTensor(name, shape, tensor_type, data_offset + offset, nbytes))
    ordered = sorted(tensors, key=lambda t: t.offset)
    for before, after in pairwise(ordered):
        if before.offset + before.nbytes > after.offset:
            raise cursor.fail(f"the data of tensors {before.name!r} and {after.name!r} overlap", data_offset)
    return tensors
