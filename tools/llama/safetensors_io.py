"""A lazy safetensors reader that keeps memory at one chunk of one tensor.

We parse the safetensors header ourselves and read byte ranges with `os.pread` instead of `safetensors.safe_open`:
safe_open memory-maps the whole shard (touched pages count towards RSS until the file is closed) and needs torch
to decode bf16, which alone costs more memory than our budget allows. The format is an 8-byte little-endian header
length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw little-endian data.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConversionError

# Storage dtypes we can read as floating point; anything else in a weight file means a quantized checkpoint.
FLOAT_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}


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
        if self.dtype == "BF16":
            # bf16 is the upper half of a float32.
            return (np.frombuffer(buffer, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
        if self.dtype == "F16":
            return np.frombuffer(buffer, dtype="<f2").astype(np.float32).reshape(shape)
        return np.frombuffer(buffer, dtype="<f4").reshape(shape)


def read_header(path: Path) -> dict[str, StoredTensor]:
    """The tensors listed in one safetensors file (no data is read)."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ConversionError(f"{path.name}: not a safetensors file (too short)")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > 100 * 1024 * 1024:
            raise ConversionError(f"{path.name}: not a safetensors file (header of {header_size} bytes)")
        try:
            header = json.loads(handle.read(header_size))
        except ValueError as exc:
            raise ConversionError(f"{path.name}: unreadable safetensors header: {exc}") from exc
    data_start = 8 + header_size
    file_size = path.stat().st_size
    tensors: dict[str, StoredTensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        if data_start + int(end) > file_size:
            raise ConversionError(f"{path.name} is truncated: tensor {name} ends past the end of the file")
        tensors[name] = StoredTensor(
            name=name,
            file=path,
            dtype=str(entry["dtype"]),
            shape=tuple(int(dim) for dim in entry["shape"]),
            offset=data_start + int(begin),
            nbytes=int(end) - int(begin),
        )
    return tensors


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors shards of a Hugging Face folder, via the index when there is one."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [file.name for file in files if not file.is_file()]
        if missing:
            raise ConversionError(f"{index.name} lists missing shard(s): {', '.join(missing)}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
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
                raise ConversionError(f"tensor {name} appears in both {tensors[name].file.name} and {file.name}")
            tensors[name] = tensor
    return tensors
