"""`python -m kubetune.llama convert` and its readers on generated model folders.

Well-formed safetensors files are read as the safetensors library reads them, and a small well-formed model folder
converts. Hostile input — every truncation and bit flips of a shard, absurd header lengths, any JSON in the header or
in its entries, any JSON at any place of config.json, tokenizer.json, tokenizer_config.json and the shard index,
files that are not JSON at all, shard names that leave the folder — ends in ConversionError: one `error:` line naming
the file, exit 2, no output folder left behind; never another exception, never a file read outside the model folder.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from kubetune.llama.__main__ import main as llama_cli
from kubetune.llama.errors import ConversionError
from kubetune.llama.gguf_reader import read_gguf_header
from kubetune.llama.safetensors_io import DTYPE_BITS, read_header, weight_files
from tests.property.scratch_files import overwrite

UP, UP_GGUF = "model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight"
# A hang detector, not a speed test: CPU seconds (not wall time: the machine may be busy) for one conversion of the
# tiny model or one refusal, far above what either takes; a loop driven by a hostile size would never end.
MAX_CPU_SECONDS = 60.0
MAX_HEADER_CPU_SECONDS = 30.0  # one header read, likewise

# --- a tiny Qwen2 model folder written without torch or transformers -------------------------------------------------


def byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (printable Latin-1 as itself, the rest from U+0100)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


SPECIALS = ["<|endoftext|>", "<|im_end|>"]
MERGES = ["Ġ t", "Ġt h", "h e"]


def tokenizer_files() -> dict[str, Any]:
    alphabet = byte_level_alphabet()
    vocab = {text: index for index, text in enumerate(alphabet + ["Ġt", "Ġth", "he"])}
    added = [{"id": len(vocab) + i, "content": text, "special": True, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False} for i, text in enumerate(SPECIALS)]
    tokenizer = {
        "version": "1.0",
        "added_tokens": added,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ]},
        "model": {"type": "BPE", "vocab": vocab, "merges": MERGES},
    }
    config = {"bos_token": SPECIALS[0], "eos_token": SPECIALS[1], "add_bos_token": False,
              "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config}


N_VOCAB = 256 + 3 + len(SPECIALS)
CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "vocab_size": N_VOCAB, "tie_word_embeddings": True,
}


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {
        "model.embed_tokens.weight": (N_VOCAB, 32), "model.norm.weight": (32,),
        "model.layers.0.self_attn.q_proj.weight": (32, 32), "model.layers.0.self_attn.q_proj.bias": (32,),
        "model.layers.0.self_attn.k_proj.weight": (16, 32), "model.layers.0.self_attn.k_proj.bias": (16,),
        "model.layers.0.self_attn.v_proj.weight": (16, 32), "model.layers.0.self_attn.v_proj.bias": (16,),
        "model.layers.0.self_attn.o_proj.weight": (32, 32),
        "model.layers.0.mlp.gate_proj.weight": (64, 32), "model.layers.0.mlp.up_proj.weight": (64, 32),
        "model.layers.0.mlp.down_proj.weight": (32, 64),
        "model.layers.0.input_layernorm.weight": (32,), "model.layers.0.post_attention_layernorm.weight": (32,),
    }
    return {name: rng.standard_normal(shape).astype(np.float16) for name, shape in shapes.items()}


def write_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    for name, content in tokenizer_files().items():
        (folder / name).write_text(json.dumps(content))
    save_file(weights(), str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen2")


@contextlib.contextmanager
def copy_of(model: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kubetune-hostile-model-") as folder:
        yield Path(shutil.copytree(model, Path(folder) / "model"))


def convert_cli(model: Path, *extra: str) -> tuple[int, list[str], Path]:
    """`python -m kubetune.llama convert MODEL --outtype f16 -o OUT` in-process: (exit code, stderr lines, OUT)."""
    out_dir = model.parent / "out"
    err = io.StringIO()
    started = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = llama_cli(["convert", str(model), "--outtype", "f16", "-o", str(out_dir), "--quiet", *extra])
    assert time.process_time() - started < MAX_CPU_SECONDS
    return code, err.getvalue().splitlines(), out_dir


def assert_converted_or_refused(model: Path, *extra: str) -> int:
    code, err, out_dir = convert_cli(model, *extra)
    if code == 0:
        [gguf] = out_dir.iterdir()
        assert read_gguf_header(gguf).tensors
    else:
        assert code == 2
        assert len(err) == 1 and err[0].startswith("error: "), err
        assert not out_dir.exists(), "a refused conversion left its output folder"
    return code


# --- hostile JSON -----------------------------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats()  # NaN and ±Infinity: Python's json reads them
    | st.sampled_from([0, -1, 2**31, 2**32, 2**63, 2**64, 10**400, "", "\ud800", "../../../etc/passwd", "F32", "BF16",
                       "U8", "Qwen2ForCausalLM", "llama3", "yarn"])
    | st.text(max_size=16)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
NOT_JSON = st.sampled_from([b"", b"{", b"\xff\xfe{}", b"[" * 100_000, b"1" * 5000, b"{\"a\": 1}}", b"\x00" * 64,
                            b"NaN", b"\"\\ud800\""]) | st.binary(max_size=64)


def places(doc: Any, path: tuple[Any, ...] = (), limit: int = 2000) -> list[tuple[Any, ...]]:
    """Paths to the nodes of a JSON document (the root first), at most `limit` of them."""
    found = [path]
    children = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for key, child in children:
        if len(found) >= limit:
            break
        found += places(child, (*path, key), limit - len(found))
    return found


@st.composite
def mutated(draw: st.DrawFn, doc: Any) -> Any:
    """`doc` with one to three nodes replaced by any JSON or deleted."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(places(doc)))
        if not path:
            return draw(JSON_VALUES)
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            parent[path[-1]] = draw(JSON_VALUES)
        elif isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    return doc


def dump(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8")  # ensure_ascii: a lone surrogate travels as its \ud800 escape


# --- config.json, tokenizer files, shard index --------------------------------------------------------------------------

def test_the_tiny_model_converts(model: Path) -> None:
    with copy_of(model) as folder:
        assert assert_converted_or_refused(folder) == 0


@given(mutated(CONFIG))
@example({**CONFIG, "rms_norm_eps": 3.4028235677973366e38})  # past float32, which GGUF stores it as
def test_any_json_anywhere_in_config_json_converts_or_is_refused_in_one_line(model: Path, config: Any) -> None:
    with copy_of(model) as folder:
        (folder / "config.json").write_bytes(dump(config))
        assert_converted_or_refused(folder)


@given(st.sampled_from(["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"]),
       NOT_JSON)
def test_a_file_that_is_not_json_is_refused_in_one_line(model: Path, name: str, content: bytes) -> None:
    with copy_of(model) as folder:
        (folder / name).write_bytes(content)
        if name == "model.safetensors.index.json":
            assert assert_converted_or_refused(folder) == 2
        else:
            assert_converted_or_refused(folder)


@given(st.data())
def test_any_json_anywhere_in_the_tokenizer_files_converts_or_is_refused_in_one_line(
    model: Path, data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(["tokenizer.json", "tokenizer_config.json"]), label="file")
    document = data.draw(mutated(tokenizer_files()[name]), label="document")
    with copy_of(model) as folder:
        (folder / name).write_bytes(dump(document))
        assert_converted_or_refused(folder)


TRAVERSALS = ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors", "..", "",
              "..\\outside.safetensors", "model.safetensors\x00.txt", str(Path("/tmp/outside.safetensors"))]


@given(st.lists(st.sampled_from(TRAVERSALS) | st.text(max_size=30) | JSON_VALUES, min_size=1, max_size=4))
def test_shard_names_in_the_index_never_leave_the_model_folder(model: Path, names: list[Any]) -> None:
    with copy_of(model) as folder:
        shutil.copy(folder / "model.safetensors", folder.parent / "outside.safetensors")
        index = {"metadata": {}, "weight_map": {f"t{i}": name for i, name in enumerate(names)}}
        (folder / "model.safetensors.index.json").write_bytes(dump(index))
        try:
            files = weight_files(folder)
        except ConversionError:
            return
        for file in files:
            assert Path(os.path.normpath(file)).is_relative_to(folder), file


def test_an_index_pointing_outside_the_folder_is_refused_by_the_command(model: Path) -> None:
    with copy_of(model) as folder:
        shutil.copy(folder / "model.safetensors", folder.parent / "outside.safetensors")
        index = {"weight_map": {"model.embed_tokens.weight": "../outside.safetensors"}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        code, err, _ = convert_cli(folder)
        assert code == 2 and "outside the model folder" in err[0]


# --- safetensors headers ------------------------------------------------------------------------------------------------

@st.composite
def safetensors_files(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """A well-formed safetensors file (any dtype, shapes with zero and one-sized dims) and its header."""
    names = draw(st.lists(st.text(min_size=1, max_size=12).filter(lambda n: n != "__metadata__"), max_size=5,
                          unique=True))
    header: dict[str, Any] = {}
    offset = 0
    for name in names:
        dtype = draw(st.sampled_from([d for d, bits in DTYPE_BITS.items() if bits % 8 == 0]))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        size = math.prod(shape) * DTYPE_BITS[dtype] // 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if draw(st.booleans()):
        header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(range(256)) * (offset // 256) + bytes(offset % 256), header


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("safetensors")


def read_or_refuse(path: Path) -> dict[str, Any] | None:
    started = time.process_time()
    try:
        tensors = read_header(path)
    except ConversionError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return None
    finally:
        assert time.process_time() - started < MAX_HEADER_CPU_SECONDS
    size = path.stat().st_size
    spans = sorted((t.offset, t.offset + t.nbytes) for t in tensors.values())
    assert all(0 <= begin <= end <= size for begin, end in spans)
    assert all(end <= next_begin for (_, end), (next_begin, _) in itertools.pairwise(spans))
    for tensor in tensors.values():
        assert tensor.nbytes * 8 >= math.prod(tensor.shape) * DTYPE_BITS[tensor.dtype]
    return tensors


@given(safetensors_files())
def test_a_well_formed_file_is_read_as_the_safetensors_library_reads_it(
    scratch: Path, file: tuple[bytes, dict[str, Any]]
) -> None:
    data, header = file
    path = overwrite(scratch / "weights.safetensors", data)
    tensors = read_or_refuse(path)
    assert tensors is not None, "a well-formed safetensors file was refused"
    with safe_open(str(path), "numpy") as reference:
        assert sorted(tensors) == sorted(reference.keys())
        for name, tensor in tensors.items():
            assert list(tensor.shape) == reference.get_slice(name).get_shape()
            assert tensor.dtype == reference.get_slice(name).get_dtype()
            begin, end = header[name]["data_offsets"]
            assert (tensor.offset, tensor.nbytes) == (len(data) - header_data_size(header) + begin, end - begin)


def header_data_size(header: dict[str, Any]) -> int:
    return max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)


@pytest.fixture(scope="module")
def shard(model: Path) -> bytes:
    return (model / "model.safetensors").read_bytes()


def test_every_truncation_of_a_shard_is_refused(scratch: Path, shard: bytes) -> None:
    """Cut anywhere in the header, and at and around each tensor's data boundaries."""
    path = scratch / "truncated.safetensors"
    header_end = 8 + struct.unpack("<Q", shard[:8])[0]
    boundaries = {header_end + end + step for entry in json.loads(shard[8:header_end]).values() if "data_offsets" in entry
                  for end in entry["data_offsets"] for step in (-1, 0, 1)}
    for length in sorted({*range(header_end + 1), *boundaries} - {len(shard), len(shard) + 1}):
        overwrite(path, shard[:length])
        assert read_or_refuse(path) is None, f"a prefix of {length} bytes was accepted"


@given(st.data())
def test_bit_flips_and_absurd_header_lengths_are_refused_or_harmless(
    scratch: Path, shard: bytes, data: st.DataObject
) -> None:
    mutated_shard = bytearray(shard)
    if data.draw(st.booleans(), label="absurd header length"):
        mutated_shard[:8] = data.draw(st.integers(0, (1 << 64) - 1), label="length").to_bytes(8, "little")
    header_end = 8 + struct.unpack("<Q", shard[:8])[0]
    for position, bit in data.draw(st.lists(st.tuples(st.integers(0, header_end - 1), st.integers(0, 7)),
                                            max_size=6), label="flips"):
        mutated_shard[position] ^= 1 << bit
    path = overwrite(scratch / "flipped.safetensors", bytes(mutated_shard))
    read_or_refuse(path)


@given(st.data())
def test_any_json_anywhere_in_a_header_is_refused_or_harmless(
    scratch: Path, shard: bytes, data: st.DataObject
) -> None:
    header = json.loads(shard[8:8 + struct.unpack("<Q", shard[:8])[0]])
    raw = dump(data.draw(mutated(header), label="header"))
    path = overwrite(scratch / "hostile.safetensors",
                     struct.pack("<Q", len(raw)) + raw + shard[8 + struct.unpack("<Q", shard[:8])[0]:])
    read_or_refuse(path)


@pytest.mark.parametrize(
    ("name", "break_model", "message"),
    [
        ("config not json", lambda m: (m / "config.json").write_text("{ not json"), "config.json:1:3: not valid JSON"),
        ("config a list", lambda m: (m / "config.json").write_text("[]"), "expected a JSON object"),
        ("absurd layers", lambda m: (m / "config.json").write_text(json.dumps({**CONFIG, "num_hidden_layers": 10**9})),
         "num_hidden_layers"),
        ("no model folder", lambda m: shutil.rmtree(m), "no config.json"),
        ("shard is a pipe", lambda m: _replace_with_fifo(m / "model.safetensors"), "not a regular file"),
        ("slash in --name", lambda m: None, "plain file name"),
        ("output is a file", lambda m: (m.parent / "out").write_text("x"), "File exists"),
        ("line breaks in a quoted value", lambda m: _edit_tokenizer(m, ("pre_tokenizer", "type"), "\x85\u2028\n\x1b[2J"),
         "unknown pre-tokenizer"),
        ("a merge that is not text", lambda m: _edit_tokenizer(m, ("model", "merges"), ["Ġ t", None, "h e"]),
         "merge 1 is None, not a string"),
        ("a pre-tokenizer nested 600 deep", lambda m: _edit_tokenizer(m, ("pre_tokenizer", "type"), "ByteLevel",
                                                                       nest=600), "pre-tokenizer: nested too deeply"),
        ("NaN weights", lambda m: save_file({**weights(), UP: np.full((64, 32), np.nan, np.float16)},
                                            str(m / "model.safetensors")), f"{UP_GGUF}: the weights hold NaN"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_the_convert_command_prints_one_line_and_exits_2(model: Path, name: str, break_model: Any, message: str) -> None:
    with copy_of(model) as folder:
        break_model(folder)
        extra = ["--name", "../escape"] if name == "slash in --name" else []
        code, err, _ = convert_cli(folder, *extra)
        assert code == 2, err
        [line] = err
        assert line.startswith("error: ") and message in line
        assert not list(folder.parent.glob("**/*.gguf*")) and not (folder.parent.parent / "escape-f16.gguf").exists()


def test_as_a_process_the_command_leaves_no_traceback(model: Path) -> None:
    with copy_of(model) as folder:
        (folder / "config.json").write_text('{"hidden_size": "64"')
        result = subprocess.run(
            [sys.executable, "-P", "-m", "kubetune.llama", "convert", str(folder), "--outtype", "q8_0", "-o",
             str(folder.parent / "out")],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr == f"error: {folder / 'config.json'}:1:21: not valid JSON: Expecting ',' delimiter; " \
            "fix config.json or re-save the model with transformers' save_pretrained\n"


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _edit_tokenizer(model: Path, place: tuple[str, str], value: Any, nest: int = 0) -> None:
    """Set tokenizer.json's `place` to `value`, inside `nest` levels of {"a": …} (written as text: json.dumps would
    reach the recursion limit first)."""
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer[place[0]][place[1]] = "<placeholder>"
    text = json.dumps(tokenizer, ensure_ascii=False)
    (model / "tokenizer.json").write_text(
        text.replace('"<placeholder>"', '{"a": ' * nest + json.dumps(value, ensure_ascii=False) + "}" * nest)
    )
