"""Our GGUF reader and `python -m kubetune.llama inspect` on generated files.

Well-formed files (every value type, nested arrays, any alignment, big- and little-endian) are read exactly as gguf-py
reads them. Hostile ones — every truncation, absurd counts, lengths, types and offsets written into any header field,
random bit flips, random bytes after the magic — end in InvalidGGUF (one `error:` line naming the file, exit 2, from
the command), never another exception, within bounded time and memory.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from hypothesis import given
from hypothesis import strategies as st

from kubetune.llama.__main__ import main as llama_cli
from kubetune.llama.errors import InvalidGGUF
from kubetune.llama.gguf_reader import KEPT_ITEMS, GGUFHeader, read_gguf_header
from tests.property.scratch_files import overwrite

V = GGUFValueType
Q = GGMLQuantizationType
SCALARS = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i", V.FLOAT32: "f",
           V.BOOL: "?", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d"}
TENSOR_TYPES = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_K, Q.Q6_K, Q.I8, Q.I32)
VOCAB_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "testdata" / "llama-vocab"
# A hang detector, not a speed test: CPU seconds (not wall time: the machine may be busy) per read of a file of a few
# KiB, ~100x what a read takes under tracemalloc on a loaded machine; a loop driven by a hostile count (up to 2**64)
# would never end.
MAX_CPU_SECONDS = 30.0
MAX_TRACED_BYTES = 8 << 20  # likewise for an allocation sized by a hostile count or length


# --- a GGUF encoder that remembers where each header field is ---------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    offset: int
    size: int  # 4 or 8: a uint32 or uint64 header field (count, length, type, dimension, offset)
    what: str


@dataclass
class Encoder:
    order: str = "<"
    data: bytearray = field(default_factory=bytearray)
    slots: list[Slot] = field(default_factory=list)

    def number(self, fmt: str, value: Any, what: str = "") -> None:
        if what:
            self.slots.append(Slot(len(self.data), struct.calcsize(fmt), what))
        self.data += struct.pack(self.order + fmt, value)

    def string(self, text: str, what: str) -> None:
        raw = text.encode("utf-8")
        self.number("Q", len(raw), f"length of {what}")
        self.data += raw

    def value(self, value_type: GGUFValueType, value: Any, what: str) -> None:
        if value_type == V.STRING:
            self.string(value, what)
        elif value_type == V.ARRAY:
            item_type, items = value
            self.number("I", item_type, f"item type of {what}")
            self.number("Q", len(items), f"length of {what}")
            for index, item in enumerate(items):
                self.value(item_type, item, f"{what}[{index}]")
        else:
            self.number(SCALARS[value_type], value)


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    type: GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.type]
        return math.prod(self.shape) // block * size


@dataclass(frozen=True)
class Layout:
    fields: list[tuple[str, GGUFValueType, Any]]
    tensors: list[Tensor]
    alignment: int | None  # general.alignment when set
    order: str


@dataclass(frozen=True)
class Encoded:
    data: bytes
    slots: list[Slot]
    tensor_end: int  # where the last tensor's data ends: any shorter prefix is truncated


def encode(layout: Layout) -> Encoded:
    out = Encoder(layout.order)
    out.data += b"GGUF"
    out.number("I", 3, "version")
    out.number("Q", len(layout.tensors), "tensor count")
    fields = list(layout.fields)
    if layout.alignment is not None:
        fields.append(("general.alignment", V.UINT32, layout.alignment))
    out.number("Q", len(fields), "metadata count")
    for key, value_type, value in fields:
        out.string(key, f"key {key}")
        out.number("I", value_type, f"type of {key}")
        out.value(value_type, value, key)
    alignment = layout.alignment or 32
    offset = 0
    offsets = []
    for tensor in layout.tensors:
        out.string(tensor.name, f"name of {tensor.name}")
        out.number("I", len(tensor.shape), f"dimension count of {tensor.name}")
        for index, dim in enumerate(tensor.shape):
            out.number("Q", dim, f"dimension {index} of {tensor.name}")
        out.number("I", tensor.type, f"type of {tensor.name}")
        out.number("Q", offset, f"offset of {tensor.name}")
        offsets.append(offset)
        offset += -(-tensor.nbytes // alignment) * alignment
    start = -(-len(out.data) // alignment) * alignment
    out.data += bytes(start - len(out.data))
    for tensor, tensor_offset in zip(layout.tensors, offsets, strict=True):
        out.data += bytes(start + tensor_offset - len(out.data))
        out.data += bytes(range(256)) * (tensor.nbytes // 256) + bytes(tensor.nbytes % 256)
    tensor_end = len(out.data)
    out.data += bytes(-len(out.data) % alignment)
    return Encoded(bytes(out.data), out.slots, tensor_end)


# --- strategies -------------------------------------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)  # GGUF strings are UTF-8


def scalar(value_type: GGUFValueType) -> st.SearchStrategy[Any]:
    fmt = SCALARS[value_type]
    if fmt == "?":
        return st.booleans()
    if fmt in "fd":
        return st.floats(allow_nan=False, width=32 if fmt == "f" else 64)  # NaN != NaN would fail the comparison, not the reader
    bits = struct.calcsize(fmt) * 8
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if fmt.islower() else (0, (1 << bits) - 1)
    return st.integers(low, high)


@st.composite
def field_values(draw: st.DrawFn, nested: bool = True) -> tuple[GGUFValueType, Any]:
    kind = draw(st.sampled_from([*SCALARS, V.STRING, V.ARRAY]))
    if kind == V.STRING:
        return kind, draw(TEXT)
    if kind != V.ARRAY:
        return kind, draw(scalar(kind))
    item_type = draw(st.sampled_from([*SCALARS, V.STRING] + ([V.ARRAY] if nested else [])))
    if item_type == V.ARRAY:
        inner = draw(st.lists(field_values(nested=False).filter(lambda v: v[0] == V.ARRAY), max_size=3))
        return kind, (item_type, [value for _, value in inner])
    items = draw(st.lists(TEXT if item_type == V.STRING else scalar(item_type), max_size=12))
    return kind, (item_type, items)


@st.composite
def tensors(draw: st.DrawFn) -> Tensor:
    tensor_type = draw(st.sampled_from(TENSOR_TYPES))
    block, _ = GGML_QUANT_SIZES[tensor_type]
    shape = (block * draw(st.integers(1, 3)), *draw(st.lists(st.integers(1, 3), max_size=3)))
    return Tensor(draw(st.text("abcdefghij.", min_size=1, max_size=20)), shape, tensor_type)


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    fields = draw(st.lists(st.tuples(st.text(min_size=1, max_size=24).filter(_encodable), field_values()),
                           max_size=8, unique_by=lambda f: f[0]))
    fields = [(key, kind, value) for key, (kind, value) in fields if key != "general.alignment"]
    return Layout(
        fields,
        draw(st.lists(tensors(), max_size=4, unique_by=lambda t: t.name)),
        draw(st.none() | st.sampled_from([1, 8, 16, 32, 64, 256])),
        draw(st.sampled_from(["<", ">"])),
    )


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


HOSTILE_NUMBERS = st.sampled_from([0, 1, 2, 3, 4, 5, 7, 31, 64, 255, 1 << 16, (1 << 31) - 1, (1 << 32) - 1, 1 << 32,
                                   (1 << 40), (1 << 62), (1 << 63) - 1, 1 << 63, (1 << 64) - 1]) | st.integers(0, 1 << 64)


# --- helpers ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


def write(folder: Path, data: bytes, name: str = "model.gguf") -> Path:
    return overwrite(folder / name, data)


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    """The block must use at most MAX_CPU_SECONDS and allocate at most MAX_TRACED_BYTES at its peak."""
    tracemalloc.start()
    started = time.process_time()
    try:
        yield
    finally:
        elapsed = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < MAX_CPU_SECONDS, f"took {elapsed:.2f} CPU seconds"
    assert peak < MAX_TRACED_BYTES, f"allocated {peak:,} bytes at the peak"


def read_or_refuse(path: Path) -> GGUFHeader | None:
    """The header, or None when the reader refused the file with InvalidGGUF naming it; anything else fails."""
    with bounded():
        try:
            header = read_gguf_header(path)
        except InvalidGGUF as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
            return None
    assert_consistent(header)
    return header


def assert_consistent(header: GGUFHeader) -> None:
    """What a caller may rely on in an accepted header: every tensor's data lies in the file, aligned, apart."""
    spans = sorted((t.offset, t.offset + t.nbytes) for t in header.tensors)
    for begin, end in spans:
        assert header.data_offset <= begin <= end <= header.file_size
        assert (begin - header.data_offset) % header.alignment == 0
    assert all(end <= next_begin for (_, end), (next_begin, _) in itertools.pairwise(spans))
    assert len({t.name for t in header.tensors}) == len(header.tensors)


def run_inspect(path: Path) -> tuple[int, list[str], list[str]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = llama_cli(["inspect", str(path)])
    return code, out.getvalue().splitlines(), err.getvalue().splitlines()


def gguf_py_view(path: Path) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], int, int, int]]]:
    reader = GGUFReader(path)
    # gguf-py's contents() does not decode nested arrays: those are compared by the next test
    fields = {key: None if f.types[:2] == [V.ARRAY, V.ARRAY] else f.contents()
              for key, f in reader.fields.items() if not key.startswith("GGUF.")}
    found = [(t.name, tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.data_offset), int(t.n_bytes))
             for t in reader.tensors]
    return fields, found


# --- well-formed files --------------------------------------------------------------------------------------------------

@given(layouts())
def test_a_well_formed_file_is_read_as_gguf_py_reads_it(scratch: Path, layout: Layout) -> None:
    path = write(scratch, encode(layout).data)
    header = read_or_refuse(path)
    assert header is not None, "a well-formed GGUF was refused"
    fields, found = gguf_py_view(path)
    assert list(header.fields) == list(fields)
    for key, value in fields.items():
        ours = header.fields[key]
        if value is None:
            continue
        assert ours.value == (value[:KEPT_ITEMS] if ours.type == V.ARRAY else value)
        assert ours.count == (len(value) if ours.type == V.ARRAY else 1)
    assert [(t.name, t.shape, int(t.type), t.offset, t.nbytes) for t in header.tensors] == found


def test_nested_arrays_keep_their_first_items_and_count_the_rest(scratch: Path) -> None:
    nested = (V.ARRAY, [(V.UINT8, list(range(20))), (V.STRING, ["a", "b"])] + [(V.INT8, [])] * 10)
    path = write(scratch, encode(Layout([("nested", V.ARRAY, nested)], [], None, "<")).data)
    header = read_gguf_header(path)
    field = header.fields["nested"]
    assert field.count == 12 and len(field.value) == KEPT_ITEMS
    assert field.value[:3] == [list(range(KEPT_ITEMS)), ["a", "b"], []]


@pytest.mark.parametrize("name", ["gpt-2", "llama-bpe", "llama-spm", "qwen2", "deepseek-llm", "phi-3"])
def test_real_vocabulary_files_are_accepted(name: str) -> None:
    path = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    header = read_gguf_header(path)
    assert_consistent(header)
    tokens = header.fields["tokenizer.ggml.tokens"]
    assert tokens.count > 30_000 and all(isinstance(t, str) for t in tokens.value)
    assert header.string("tokenizer.ggml.model") in ("gpt2", "llama")


def test_inspect_lists_metadata_and_tensors_of_a_well_formed_file(scratch: Path) -> None:
    layout = Layout([("general.architecture", V.STRING, "llama"), ("tokens", V.ARRAY, (V.STRING, list("abcdefghijk")))],
                    [Tensor("blk.0.attn_q.weight", (32, 4), Q.Q8_0)], None, "<")
    code, out, err = run_inspect(write(scratch, encode(layout).data))
    assert (code, err) == (0, [])
    assert any(line.split() == ["general.architecture", "llama"] for line in out)
    assert any("[11 items: 'a', 'b', 'c', …]" in line for line in out)
    assert any(line.split() == ["blk.0.attn_q.weight", "Q8_0", "32×4", "136"] for line in out)


# --- hostile files ------------------------------------------------------------------------------------------------------

SMALL_MODEL = Layout(
    [("general.architecture", V.STRING, "llama"), ("llama.block_count", V.UINT32, 1),
     ("tokenizer.ggml.tokens", V.ARRAY, (V.STRING, ["<s>", "a", "b", "ab"])),
     ("tokenizer.ggml.scores", V.ARRAY, (V.FLOAT32, [0.0, -1.0, -2.0, -3.0])),
     ("nested", V.ARRAY, (V.ARRAY, [(V.UINT16, [1, 2]), (V.STRING, ["x"])]))],
    [Tensor("token_embd.weight", (32, 4), Q.Q8_0), Tensor("output_norm.weight", (32,), Q.F32),
     Tensor("blk.0.ffn_up.weight", (256, 2), Q.Q4_K)],
    64,
    "<",
)


@pytest.fixture(scope="module")
def small_model() -> Encoded:
    return encode(SMALL_MODEL)


def test_every_truncation_of_a_model_is_refused(scratch: Path, small_model: Encoded) -> None:
    """Cut anywhere in the header, and at and around each tensor's data boundaries."""
    header = read_gguf_header(write(scratch, small_model.data))
    boundaries = {end + step for t in header.tensors for end in (t.offset, t.offset + t.nbytes) for step in (-1, 0, 1)}
    for length in sorted({*range(header.data_offset + 1), *boundaries, len(small_model.data)}):
        header = read_or_refuse(write(scratch, small_model.data[:length]))
        assert (header is not None) == (length >= small_model.tensor_end), f"a prefix of {length} bytes"


@given(st.data())
def test_an_absurd_number_in_any_header_field_is_refused_or_harmless(
    scratch: Path, small_model: Encoded, data: st.DataObject
) -> None:
    slot = data.draw(st.sampled_from(small_model.slots), label="field")
    value = data.draw(HOSTILE_NUMBERS, label="value") % (1 << (8 * slot.size))
    mutated = bytearray(small_model.data)
    mutated[slot.offset:slot.offset + slot.size] = value.to_bytes(slot.size, "little")
    read_or_refuse(write(scratch, bytes(mutated)))


@given(st.data())
def test_random_bit_flips_are_refused_or_harmless(scratch: Path, small_model: Encoded, data: st.DataObject) -> None:
    flips = data.draw(st.lists(st.tuples(st.integers(0, small_model.tensor_end - 1), st.integers(0, 7)),
                               min_size=1, max_size=6), label="flips")
    mutated = bytearray(small_model.data)
    for position, bit in flips:
        mutated[position] ^= 1 << bit
    read_or_refuse(write(scratch, bytes(mutated)))


def many_entries(kind: str, count: int) -> bytes:
    """A file that really holds `count` tiny metadata entries, tensor infos or nested (empty) arrays."""
    if kind == "metadata":
        body = b"".join(struct.pack("<Q", len(k)) + k + struct.pack("<IB", V.UINT8, 1)
                        for k in (f"k{i}".encode() for i in range(count)))
        return b"GGUF" + struct.pack("<IQQ", 3, 0, count) + body
    if kind == "tensors":
        body = b"".join(struct.pack("<Q", len(n)) + n + struct.pack("<IQIQ", 1, 0, Q.F32, 0)  # empty: no data
                        for n in (f"t{i}".encode() for i in range(count)))
        return b"GGUF" + struct.pack("<IQQ", 3, count, 0) + body + bytes(32)
    key = b"nested"
    return (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
            + struct.pack("<IIQ", V.ARRAY, V.ARRAY, count) + struct.pack("<IQ", V.UINT8, 0) * count)


@pytest.mark.parametrize("kind", ["metadata", "tensors", "nested arrays"])
def test_a_file_of_a_hundred_thousand_tiny_entries_is_refused_at_once(scratch: Path, kind: str) -> None:
    """Each entry costs Python objects and calls: a large file of tiny ones must not take minutes or gigabytes."""
    path = write(scratch, many_entries(kind, 100_000))
    assert read_or_refuse(path) is None


def test_real_numbers_of_entries_are_accepted(scratch: Path) -> None:
    for kind, count in (("metadata", 5_000), ("tensors", 5_000), ("nested arrays", 1_000)):
        assert read_or_refuse(write(scratch, many_entries(kind, count))) is not None, kind


@given(st.binary(max_size=512), st.sampled_from([2, 3, 1, 4, 0x03000000]))
def test_random_bytes_after_the_magic_are_refused_or_harmless(scratch: Path, tail: bytes, version: int) -> None:
    read_or_refuse(write(scratch, b"GGUF" + struct.pack("<I", version) + tail))


@given(st.data())
def test_inspect_answers_a_hostile_file_with_one_error_line_and_exit_2(
    scratch: Path, small_model: Encoded, data: st.DataObject
) -> None:
    slot = data.draw(st.sampled_from(small_model.slots), label="field")
    mutated = bytearray(small_model.data)
    mutated[slot.offset:slot.offset + slot.size] = b"\xff" * slot.size  # the largest count, length, type or offset
    path = write(scratch, bytes(mutated))
    code, out, err = run_inspect(path)
    assert code == 2 and out == [], slot.what
    assert len(err) == 1 and err[0].startswith(f"error: {path}: "), err


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("empty", lambda folder: write(folder, b""), "not a GGUF file"),
        ("not a gguf", lambda folder: write(folder, b"PK\x03\x04 a zip file"), "not a GGUF file"),
        ("version 1", lambda folder: write(folder, b"GGUF" + struct.pack("<IQQ", 1, 0, 0)), "version 1"),
        ("huge counts", lambda folder: write(folder, b"GGUF" + struct.pack("<IQQ", 3, 1 << 62, 1 << 62)), "claims"),
        ("truncated", lambda folder: write(folder, encode(SMALL_MODEL).data[:300]), "truncated"),
        ("a directory", lambda folder: folder, "a directory"),
        ("a named pipe", lambda folder: _fifo(folder / "pipe.gguf"), "not a regular file"),
        ("missing", lambda folder: folder / "missing.gguf", "No such file or directory"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_the_inspect_command_prints_one_line_and_exits_2(tmp_path: Path, name: str, make: Any, message: str) -> None:
    path = make(tmp_path)
    code, out, err = run_inspect(path)
    assert (code, out) == (2, []), err
    [line] = err
    assert line.startswith(f"error: {path}") and message in line


def test_as_a_process_the_command_leaves_no_traceback_and_does_not_wait_on_a_pipe(tmp_path: Path) -> None:
    for path in (write(tmp_path, encode(SMALL_MODEL).data[:300]), _fifo(tmp_path / "pipe.gguf")):
        result = subprocess.run([sys.executable, "-P", "-m", "kubetune.llama", "inspect", str(path)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith(f"error: {path}: ") and result.stderr.count("\n") == 1


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path
