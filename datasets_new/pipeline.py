"""Build a topics tree and write its outputs: the one code path of the CLI and the `dataset` job stage."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.datasets_new.builder import BuildOptions, BuildResult, build_dataset, cyclic_gc_paused
from kubetune.datasets_new.outputs import check_output_paths, jsonl_blocks, stats_bytes, write_files_atomically
from kubetune.datasets_new.stats import build_stats, load_tokenizer

TRAIN_FILE = "train_data.jsonl"
EVAL_FILE = "eval_data.jsonl"
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class OutputPaths:
    train: Path
    eval: Path
    stats: Path

    @classmethod
    def beside(cls, train: Path) -> OutputPaths:
        """The default layout: eval_data.jsonl and stats.json next to the train file."""
        return cls(train, train.with_name(EVAL_FILE), train.with_name(STATS_FILE))

    @classmethod
    def in_folder(cls, folder: Path) -> OutputPaths:
        return cls(folder / TRAIN_FILE, folder / EVAL_FILE, folder / STATS_FILE)


@dataclass(frozen=True)
class BuildOutcome:
    result: BuildResult
    stats: dict[str, Any] | None
    written: tuple[Path, ...]


def build_and_write(options: BuildOptions, outputs: OutputPaths, tokenizer_path: Path | None = None,
                    with_stats: bool = True) -> BuildOutcome:
    """Validate and build everything first, then write train (+ eval when split, + stats) atomically.

    Raises DatasetError for bad input, OutputError for an output that cannot be written, TokenizerError for a bad
    tokenizer path; in each case nothing is written.
    """
    targets = [outputs.train, *([outputs.eval] if options.eval_split > 0 else []), *([outputs.stats] if with_stats else [])]
    # Outputs and tokenizer first: a bad path fails before any time is spent on the build.
    check_output_paths(targets, options.topics_dir, options.structure_path)
    tokenizer = load_tokenizer(tokenizer_path) if with_stats and tokenizer_path is not None else None
    with cyclic_gc_paused():
        result = build_dataset(options)
        stats = build_stats(result, tokenizer) if with_stats else None
        contents: dict[Path, Iterable[bytes]] = {outputs.train: jsonl_blocks(result.train)}
        if options.eval_split > 0:
            contents[outputs.eval] = jsonl_blocks(result.eval)
        if stats is not None:
            contents[outputs.stats] = [stats_bytes(stats)]
        write_files_atomically(contents)
    return BuildOutcome(result, stats, tuple(contents))
