"""Hugging Face folder → GGUF files: the converter's public entry point.

Everything that can be checked is checked before the first byte is written (architecture, weights, tokenizer,
vocabulary size, tensor names and shapes). Each output is written to `<name>.gguf.partial` and renamed when complete;
if anything fails, the call removes its partial file, the outputs it already finished and the output folder when it
made it, so a failed conversion leaves no `.gguf` behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import ConversionError
from .gguf_writer import write_gguf
from .hf_config import read_model_spec
from .quantize import LLAMA_CPP_FTYPES, quantize_with_llama_cpp
from .safetensors_io import index_tensors
from .tensors import DIRECT_WEIGHT_TYPES, TensorPlan, plan_tensors
from .tokenizer_export import load_vocab

DIRECT_OUTTYPES = tuple(DIRECT_WEIGHT_TYPES)  # written by us
LLAMA_CPP_OUTTYPES = tuple(LLAMA_CPP_FTYPES)  # quantized by llama.cpp from an f16 GGUF
OUTTYPES = DIRECT_OUTTYPES + LLAMA_CPP_OUTTYPES


@dataclass(frozen=True)
class ConvertedFile:
    path: Path
    outtype: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ConvertProgress:
    outtype: str
    stage: Literal["write", "quantize"]
    tensors_done: int
    tensors_total: int
    bytes_done: int  # source bytes converted so far (for "quantize": 0 until done)
    bytes_total: int


ProgressCallback = Callable[[ConvertProgress], None]


def normalize_outtypes(outtypes: Sequence[str]) -> list[str]:
    """Lower-cased, de-duplicated, validated output types in the order given."""
    normalized: list[str] = []
    for outtype in outtypes:
        key = outtype.strip().lower()
        if key not in OUTTYPES:
            raise ConversionError(f"unknown output type {outtype!r}; choose from {', '.join(OUTTYPES)}")
        if key not in normalized:
            normalized.append(key)
    if not normalized:
        raise ConversionError("no output type requested")
    return normalized


def check_basename(basename: str) -> None:
    """Output files are `<basename>-<outtype>.gguf` inside the output folder: the stem must not leave it."""
    if not basename or basename in (".", "..") or any(c in basename for c in "/\\\0"):
        raise ConversionError(f"output name {basename!r} must be a plain file name stem (no '/', '\\' or NUL)")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _atomic_output(path: Path) -> Iterator[Path]:
    partial = path.with_name(path.name + ".partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def convert(
    model_dir: Path,
    out_dir: Path,
    outtypes: Sequence[str],
    *,
    progress: ProgressCallback | None = None,
    basename: str | None = None,
) -> list[ConvertedFile]:
    """Convert the Hugging Face folder `model_dir` to one GGUF per output type in `out_dir`.

    Files are named `<basename>-<outtype>.gguf` (basename: the folder's name). K-quants reuse one f16 GGUF: the
    requested f16 output when there is one, else a temporary file in `out_dir`; it is written first and quantized in
    a thread while the other outputs are written.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    wanted = normalize_outtypes(outtypes)
    if basename is not None:
        check_basename(basename)
    spec = read_model_spec(model_dir)
    stored = index_tensors(model_dir)
    direct = [t for t in wanted if t in DIRECT_OUTTYPES]
    quantized = [t for t in wanted if t in LLAMA_CPP_OUTTYPES]
    # The f16 GGUF the k-quants are made from is written first, so that llama.cpp quantizes while the other outputs
    # are written.
    to_write = (["f16"] if quantized else []) + [t for t in direct if not (quantized and t == "f16")]
    plans = {outtype: plan_tensors(spec, stored, outtype) for outtype in to_write}
    vocab = load_vocab(model_dir, spec.vocab_size)
    if quantized:
        try:
            import llama_cpp  # noqa: F401  (fail before writing when k-quants cannot be made)
        except ImportError as exc:
            raise ConversionError(f"{', '.join(quantized)} need llama-cpp-python, which is not installed") from exc
    stem = basename or spec.name

    created_out_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    finished: dict[str, Path] = {}
    digests: dict[str, str] = {}  # sha256 of the outputs we write, computed while writing
    try:
        scratch = tempfile.TemporaryDirectory(prefix=".kubetune-convert-", dir=out_dir)
    except BaseException:
        _remove_if_empty(out_dir, created_out_dir)
        raise
    try:
        # Leaving this block waits for the quantizing thread, so that nothing below removes a file it still writes.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantize") as pool:
            quantizing: Future[None] | None = None
            for outtype in to_write:
                is_output = outtype in direct
                target = out_dir / f"{stem}-{outtype}.gguf" if is_output else Path(scratch.name) / "f16.gguf"
                with _atomic_output(target) as partial:
                    digest = write_gguf(partial, spec, vocab, outtype, plans[outtype],
                                        _tensor_progress(progress, outtype), output=is_output)
                if digest is not None:
                    digests[outtype] = digest
                finished[outtype] = target
                if outtype == "f16" and quantized:
                    for quantized_type in quantized:
                        _report(progress, ConvertProgress(quantized_type, "quantize", 0, 1, 0,
                                                          _source_bytes(plans["f16"])))
                    quantizing = pool.submit(_quantize_all, target, out_dir, stem, quantized, finished)
            if quantizing is not None:
                quantizing.result()
                for outtype in quantized:
                    _report(progress, ConvertProgress(outtype, "quantize", 1, 1, *(2 * [_source_bytes(plans["f16"])])))
    except BaseException:
        for path in finished.values():
            path.unlink(missing_ok=True)
        scratch.cleanup()
        _remove_if_empty(out_dir, created_out_dir)
        raise
    finally:
        scratch.cleanup()
    return [ConvertedFile(finished[t], t, finished[t].stat().st_size, digests.get(t) or sha256_of(finished[t]))
            for t in wanted]


def _quantize_all(source_f16: Path, out_dir: Path, stem: str, outtypes: list[str], finished: dict[str, Path]) -> None:
    """The k-quant outputs from the f16 GGUF, one after another (llama.cpp's quantizer uses every core)."""
    for outtype in outtypes:
        target = out_dir / f"{stem}-{outtype}.gguf"
        with _atomic_output(target) as partial:
            quantize_with_llama_cpp(source_f16, partial, outtype)
        finished[outtype] = target


def _source_bytes(plans: list[TensorPlan]) -> int:
    return sum(plan.n_source_bytes for plan in plans)


def _report(progress: ProgressCallback | None, event: ConvertProgress) -> None:
    if progress is not None:
        progress(event)


def _remove_if_empty(out_dir: Path, created: bool) -> None:
    """A failed conversion leaves nothing behind, not even the output folder it made."""
    if created:
        try:
            out_dir.rmdir()
        except OSError:
            pass  # not empty: someone else's files


def _tensor_progress(progress: ProgressCallback | None, outtype: str) -> Callable[[int, int, int, int], None] | None:
    if progress is None:
        return None
    callback = progress

    def report(done: int, total: int, bytes_done: int, bytes_total: int) -> None:
        callback(ConvertProgress(outtype, "write", done, total, bytes_done, bytes_total))

    return report
