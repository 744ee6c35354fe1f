"""TensorBoard event files of scalars, written without TensorFlow or the tensorboard package.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, the bytes, masked CRC-32C of the
bytes), each an `Event` protocol buffer: the first names the file version, the others carry a `Summary` of scalar
values at a step. Only the few protobuf fields that needs are encoded here.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

FILE_VERSION = "brain.Event:2"
_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected
_MASK_DELTA = 0xA282EAD8


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= 0xFFFFFFFFFFFFFFFF  # int64 as protobuf writes it (two's complement for negatives)
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    """Event: wall_time (1, double), step (2, int64), then one of its `what` fields, already encoded."""
    return b"\x09" + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step) + body


def scalar_summary(values: Mapping[str, float]) -> bytes:
    """Summary {repeated Value value = 1}, each Value {tag = 1, simple_value = 2 (float)}."""
    summary = b""
    for tag, value in values.items():
        value_bytes = _length_delimited(1, tag.encode("utf-8")) + b"\x15" + struct.pack("<f", value)
        summary += _length_delimited(1, value_bytes)
    return summary


def write_scalar_events(folder: Path, steps: Iterable[tuple[int, Mapping[str, float]]], *,
                        wall_time: float | None = None) -> Path:
    """Write one event file of `(step, {tag: value})` records into `folder` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time() if wall_time is None else wall_time
    path = folder / f"events.out.tfevents.{int(now)}.{socket.gethostname() or 'kubetune'}"
    with path.open("wb") as out:
        out.write(tfrecord(_event(now, 0, _length_delimited(3, FILE_VERSION.encode()))))
        for step, values in steps:
            if values:
                out.write(tfrecord(_event(now, step, _length_delimited(5, scalar_summary(values)))))
    return path
