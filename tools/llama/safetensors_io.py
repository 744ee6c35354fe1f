"""A lazy safetensors reader that keeps memory at one chunk of one tensor.

We parse the safetensors header ourselves and read byte ranges with `os.pread` instead of `safetensors.safe_open`:
safe_open memory-maps the whole shard (touched pages count towards RSS until the file is closed) and needs torch
to decode bf16, which alone costs more memory than our budget allows. The format is an 8-byte little-endian header
length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw little-endian data.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .errors import ConversionError
from .files import open_regular_file, read_json_object, short_repr

# Storage dtypes we can read as floating point; anything else in a weight file means a quantized checkpoint.
FLOAT_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}
STORED_NUMPY_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}
# Every dtype of the safetensors format, in bits per element (so that a header's byte ranges can be checked).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16,
    "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
# The format allows 100 MB, but parsed JSON takes ten times its size in Python objects; real shards' headers are tens
# to hundreds of KiB (a thousand tensors), so 16 MiB refuses only headers no model has.
MAX_HEADER_BYTES = 16 * 1024 * 1024
RESAVE = "; re-save the weights with safetensors (save_pretrained(safe_serialization=True))"


@dataclass(frozen=True)
class StoredTensor:
    name: str
    file: Path
    dtype: str  # safetensors dtype string: F32, F16, BF16, U8, I8, F8_E4M3, ...
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    def read_rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of the first dimension as float32 (a 1-D tensor has one row per element)."""
        stored = self.read_stored_rows(start, stop)
        if self.dtype == "BF16":
            # bf16 is the upper half of a float32.
            widened = np.empty(stored.shape, dtype=np.uint32)
            np.left_shift(stored, 16, out=widened, dtype=np.uint32)
            return widened.view(np.float32)
        return stored.astype(np.float32, copy=False)

    def read_stored_rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) as stored: float32 or float16, or bf16 as its uint16 bit patterns."""
        if self.dtype not in FLOAT_DTYPES:
            raise ConversionError(f"{self.name}: cannot read dtype {self.dtype} as floating point")
        stop = self.n_rows if stop is None else stop
        row_elements = self.n_elements // max(self.n_rows, 1)
        item = FLOAT_DTYPES[self.dtype]
        length = (stop - start) * row_elements * item
        buffer = bytearray(length)
        view = memoryview(buffer)
        position = self.offset + start * row_elements * item
        with open(self.file, "rb", buffering=0) as handle:
            done = 0
            while done < length:
                got = os.preadv(handle.fileno(), [view[done:]], position + done)
                if got == 0:
                    raise ConversionError(f"{self.file.name}: truncated data for tensor {self.name}")
                done += got
        shape = (stop - start, *self.shape[1:])
        return np.frombuffer(buffer, dtype=STORED_NUMPY_DTYPES[self.dtype]).reshape(shape)


def read_header(path: Path) -> dict[str, StoredTensor]:
    """The tensors listed in one safetensors file (no data is read), each checked against the file: known dtype,
    shape matching its byte range, ranges inside the file and not overlapping."""
    try:
        with open_regular_file(path) as handle:
            file_size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise ConversionError(f"{path}: not a safetensors file (only {len(prefix)} bytes){RESAVE}")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > file_size - 8:
                raise ConversionError(f"{path}: not a safetensors file or truncated: its header claims "
                                      f"{header_size:,} bytes but only {file_size - 8:,} follow{RESAVE}")
            if header_size > MAX_HEADER_BYTES:
                raise ConversionError(f"{path}: not a safetensors file (a header of {header_size:,} bytes){RESAVE}")
            raw = handle.read(header_size)
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ConversionError(f"{path}: unreadable safetensors header ({exc}){RESAVE}") from None
    if not isinstance(header, dict):
        raise ConversionError(f"{path}: the safetensors header is not a JSON object{RESAVE}")
    data_start = 8 + header_size
    tensors = {
        name: _stored_tensor(path, name, entry, data_start, file_size - data_start)
        for name, entry in header.items()
        if name != "__metadata__"
    }
    ordered = sorted(tensors.values(), key=lambda t: (t.offset, t.nbytes))
    for before, after in pairwise(ordered):
        if before.offset + before.nbytes > after.offset:
            raise ConversionError(f"{path}: the data of tensors {before.name!r} and {after.name!r} overlap{RESAVE}")
    return tensors


def _stored_tensor(path: Path, name: str, entry: Any, data_start: int, data_size: int) -> StoredTensor:
    where = f"{path}: tensor {short_repr(name)}"
    if not isinstance(entry, dict):
        raise ConversionError(f"{where}: expected an object with dtype, shape and data_offsets{RESAVE}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise ConversionError(f"{where}: unknown dtype {short_repr(dtype)} (known: {', '.join(DTYPE_BITS)})")
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise ConversionError(f"{where}: shape must be a list of non-negative integers, not {short_repr(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise ConversionError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, "
                              f"not {short_repr(offsets)}")
    begin, end = offsets
    if end > data_size:
        raise ConversionError(f"{path} is truncated: tensor {short_repr(name)} ends at byte {data_start + end:,}, "
                              f"past the end of the file at {data_start + data_size:,}")
    expected = (math.prod(shape) * DTYPE_BITS[dtype] + 7) // 8
    if end - begin != expected:
        raise ConversionError(f"{where}: shape {shape} of {dtype} needs {expected:,} bytes but data_offsets span "
                              f"{end - begin:,}{RESAVE}")
    return StoredTensor(name, path, dtype, tuple(shape), data_start + begin, end - begin)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shard_path(model_dir: Path, index: Path, name: Any) -> Path:
    """A weight_map entry as a file inside the model folder: never absolute, never through `..`."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ConversionError(f"{index}: weight_map values must be shard file names, not {short_repr(name)}")
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or "\\" in name:
        raise ConversionError(f"{index}: shard {short_repr(name)} is outside the model folder; "
                              "weight_map must name files inside it")
    return model_dir / relative


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors shards of a Hugging Face folder, via the index when there is one."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index, "re-save the model with save_pretrained").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{index}: weight_map must be a non-empty object of tensor name → shard file")
        files = sorted({_shard_path(model_dir, index, name) for name in weight_map.values()})
        missing = [str(file.relative_to(model_dir)) for file in files if not file.is_file()]
        if missing:
            raise ConversionError(f"{index} lists missing shard(s): {', '.join(missing[:8])}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))  # a folder or FIFO among them: read_header names it
    if not files:
        others = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt"))
        hint = f" (found {', '.join(others)}; save the model with safe_serialization=True)" if others else ""
        raise ConversionError(f"{model_dir}: no *.safetensors weights{hint}")
    return files


def index_tensors(model_dir: Path) -> dict[str, StoredTensor]:
    """Every tensor of the model folder by name, across shards."""
    tensors: dict[str, StoredTensor] = {}
    for file in weight_files(model_dir):
        for name, tensor in read_header(file).items():
            if name in tensors:
                raise ConversionError(f"tensor {short_repr(name)} appears in both {tensors[name].file.name} and {file.name}")
            tensors[name] = tensor
    return tensors
