"""The `--against-llama-cpp` row of convert_gguf.py: our converter vs llama.cpp's `convert_hf_to_gguf.py`.

llama.cpp's converter is taken, at benchmark time only, from the llama-cpp-python source distribution of the version
pinned in requirements/constraints.txt (`pip download --no-binary :all:`), extracted into a temporary folder and run
from there with its own gguf-py; nothing of it enters the project.

Both converters run as `/usr/bin/time -f '%M'` children (peak RSS of the converter process, which starts from a tiny
parent, so no inherited high-water mark) on the same random bf16 Llama in several shards with the Llama 3 tokenizer.
Warm-up: the shards are read once and each converter runs once unmeasured (f16), so every measured run sees the
weights in the page cache and compiled bytecode; then each type runs `repetitions` times per converter, alternating
which goes first. Finally both outputs are loaded by llama.cpp (llama-cpp-python) and compared tensor by tensor.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
OUTTYPES = ("f16", "q8_0")
# What llama.cpp's converter needs from the source distribution.
LLAMA_CPP_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


@dataclass(frozen=True)
class Run:
    converter: str  # "ours" or "llama.cpp"
    outtype: str
    wall_s: float
    peak_rss_mb: float


@dataclass(frozen=True)
class Row:
    outtype: str
    ours_wall_s: list[float]
    theirs_wall_s: list[float]
    ours_peak_rss_mb: float
    theirs_peak_rss_mb: float
    wall_ratio: float  # median ours / median theirs
    rss_ratio: float
    output_check: str


def pinned_llama_cpp_python() -> str:
    constraints = (REPO / "requirements" / "constraints.txt").read_text()
    match = re.search(r"^llama[-_]cpp[-_]python==(\S+)", constraints, re.MULTILINE | re.IGNORECASE)
    if match is None:
        raise SystemExit("requirements/constraints.txt pins no llama-cpp-python version")
    return match.group(1)


def fetch_llama_cpp_converter(into: Path) -> Path:
    """llama.cpp's convert_hf_to_gguf.py (with conversion/ and gguf-py/) from the pinned sdist; returns the script."""
    version = pinned_llama_cpp_python()
    download = into / "sdist"
    subprocess.run(
        [sys.executable, "-P", "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-binary", ":all:",
         "--no-deps", "-q", "-d", str(download)],
        check=True,
    )
    (archive,) = download.glob("*.tar.gz")
    root = into / "llama.cpp"
    with tarfile.open(archive) as tar:
        prefix = f"{tar.getnames()[0].split('/')[0]}/vendor/llama.cpp/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                   and m.name[len(prefix):].startswith(LLAMA_CPP_PARTS) and (m.isfile() or m.isdir())]
        for member in members:
            member.name = member.name[len(prefix):]
        tar.extractall(root, members=members, filter="data")
    archive.unlink()
    return root / "convert_hf_to_gguf.py"


def timed(command: list[str], env: dict[str, str], converter: str, outtype: str) -> Run:
    """Wall time and peak RSS (GNU time's %M, in KiB) of one converter run."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        start = time.perf_counter()
        result = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report.name, *command], env=env,
                                capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"{converter} {outtype} failed:\n{result.stderr[-3000:]}")
        peak_kib = int(report.read().split()[-1])
    return Run(converter, outtype, wall, peak_kib / 1024)


def child_env(pythonpath: Path | None) -> dict[str, str]:
    """Offline, and no repository root on the path (its operator/ would shadow the standard library's)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    return env if pythonpath is None else {**env, "PYTHONPATH": str(pythonpath)}


def run_ours(model_dir: Path, out_dir: Path, outtype: str) -> tuple[Run, Path]:
    command = [sys.executable, "-P", "-m", "kubetune.llama", "convert", str(model_dir), "--outtype", outtype,
               "-o", str(out_dir), "--name", "ours", "--quiet"]
    return timed(command, child_env(None), "ours", outtype), out_dir / f"ours-{outtype}.gguf"


def run_theirs(script: Path, model_dir: Path, out_dir: Path, outtype: str) -> tuple[Run, Path]:
    out_file = out_dir / f"theirs-{outtype}.gguf"
    command = [sys.executable, str(script), str(model_dir), "--outtype", outtype, "--outfile", str(out_file)]
    return timed(command, child_env(script.parent / "gguf-py"), "llama.cpp", outtype), out_file


def compare_outputs(ours: Path, theirs: Path) -> str:
    """Same tensor names, shapes and types, then the data: identical bytes or the largest difference."""
    from gguf import GGMLQuantizationType, GGUFReader, quants

    ours_tensors = {t.name: t for t in GGUFReader(ours).tensors}
    theirs_tensors = {t.name: t for t in GGUFReader(theirs).tensors}
    if ours_tensors.keys() != theirs_tensors.keys():
        only_ours = sorted(ours_tensors.keys() - theirs_tensors.keys())
        only_theirs = sorted(theirs_tensors.keys() - ours_tensors.keys())
        return f"DIFFERENT tensor names: only ours {only_ours[:5]}, only theirs {only_theirs[:5]}"
    identical, max_diff, differing = 0, 0.0, []
    for name, mine in ours_tensors.items():
        other = theirs_tensors[name]
        if mine.tensor_type != other.tensor_type or list(mine.shape) != list(other.shape):
            return (f"DIFFERENT {name}: ours {mine.tensor_type.name} {list(mine.shape)}, "
                    f"theirs {other.tensor_type.name} {list(other.shape)}")
        if np.array_equal(mine.data.view(np.uint8), other.data.view(np.uint8)):
            identical += 1
            continue
        differing.append(name)
        qtype = GGMLQuantizationType(mine.tensor_type)
        a = quants.dequantize(mine.data, qtype).astype(np.float32)
        b = quants.dequantize(other.data, qtype).astype(np.float32)
        max_diff = max(max_diff, float(np.abs(a - b).max()))
    summary = f"{len(ours_tensors)} tensors, same names/shapes/types; {identical} byte-identical"
    if differing:
        summary += f"; {len(differing)} differ (e.g. {differing[0]}), max abs diff {max_diff:.3g}"
    return summary


def loads_in_llama_cpp(path: Path) -> None:
    from llama_cpp import Llama

    model = Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False)
    tokens = model.tokenize(b"Hello world")
    model.eval(tokens)  # a forward pass: every weight is mapped and used
    model.close()


def compare_with_llama_cpp(work_dir: Path, repetitions: int, *, as_json: bool) -> list[Row]:
    from convert_gguf import build_random_llama_1b, read_floor_s  # beside this module

    from tests.fixtures.tiny_models import vocab_tokenizer_dir

    tokenizer = vocab_tokenizer_dir("llama-bpe", work_dir / "vocab-llama-bpe")
    model_dir = build_random_llama_1b(work_dir / "llama-1b", tokenizer)
    shards = len(list(model_dir.glob("*.safetensors")))
    model_mb = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / MB
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="llama-cpp-row-", dir=work_dir) as scratch_name:
        scratch = Path(scratch_name)
        script = fetch_llama_cpp_converter(scratch)
        out_dir = scratch / "out"
        out_dir.mkdir()
        read_floor_s(model_dir)  # warm-up: weights into the page cache
        for warm_up in (run_ours, lambda m, o, t: run_theirs(script, m, o, t)):
            _, output = warm_up(model_dir, out_dir, "f16")
            output.unlink()
        for outtype in OUTTYPES:
            runs: list[Run] = []
            for repetition in range(repetitions):
                order = ("ours", "theirs") if repetition % 2 == 0 else ("theirs", "ours")
                for converter in order:
                    if converter == "ours":
                        run, ours_file = run_ours(model_dir, out_dir, outtype)
                    else:
                        run, theirs_file = run_theirs(script, model_dir, out_dir, outtype)
                    runs.append(run)
                    print(f"{run.converter:<9} {outtype:<5} {run.wall_s:7.1f} s {run.peak_rss_mb:7.0f} MB", flush=True)
            for path in (ours_file, theirs_file):
                loads_in_llama_cpp(path)
            check = compare_outputs(ours_file, theirs_file) + "; both load and run in llama.cpp"
            ours_file.unlink()
            theirs_file.unlink()
            ours_runs = [r for r in runs if r.converter == "ours"]
            theirs_runs = [r for r in runs if r.converter == "llama.cpp"]
            ours_wall = statistics.median(r.wall_s for r in ours_runs)
            theirs_wall = statistics.median(r.wall_s for r in theirs_runs)
            ours_rss = max(r.peak_rss_mb for r in ours_runs)
            theirs_rss = max(r.peak_rss_mb for r in theirs_runs)
            rows.append(Row(outtype, [round(r.wall_s, 2) for r in ours_runs], [round(r.wall_s, 2) for r in theirs_runs],
                            round(ours_rss), round(theirs_rss), round(ours_wall / theirs_wall, 2),
                            round(ours_rss / theirs_rss, 2), check))
    model = f"random Llama-3.2-1B shape, 1.24B params, bf16, {shards} shards, {model_mb:.0f} MB"
    if as_json:
        print(json.dumps({"model": model, "cpus": os.cpu_count(), "rows": [asdict(r) for r in rows]}, indent=1))
    else:
        print(f"\n{model}; median wall of {repetitions} runs each, peak RSS the largest")
        print(f"{'type':<5} {'ours s':>7} {'theirs s':>9} {'× wall':>7} {'ours MB':>8} {'theirs MB':>10} {'× RSS':>6}")
        for row in rows:
            print(f"{row.outtype:<5} {statistics.median(row.ours_wall_s):>7.1f} {statistics.median(row.theirs_wall_s):>9.1f} "
                  f"{row.wall_ratio:>7.2f} {row.ours_peak_rss_mb:>8.0f} {row.theirs_peak_rss_mb:>10.0f} "
                  f"{row.rss_ratio:>6.2f}\n      {row.output_check}")
    return rows
