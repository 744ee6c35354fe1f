"""The build's statistics report (`stats.json`) and its human summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.datasets_new.builder import BuildResult
from kubetune.datasets_new.difficulty import DifficultyScale
from kubetune.datasets_new.errors import DatasetIssue, printable
from kubetune.datasets_new.samples import BuiltRecord
from kubetune.datasets_new.schema import load_bundled_schema

STATS_SCHEMA_VERSION = 1


class TokenizerError(ValueError):
    """A tokenizer path that cannot be used; `issue` names it, says why and how to fix it."""

    def __init__(self, issue: DatasetIssue) -> None:
        super().__init__(f"{issue.location()}: {issue.message}")
        self.issue = issue


def build_stats(result: BuildResult, tokenizer: LoadedTokenizer | None = None) -> dict[str, Any]:
    report = result.report
    scale = DifficultyScale.from_schema(load_bundled_schema("difficulty_schema.json"))
    categories: dict[str, dict[str, Any]] = {}
    for (category, subcategory), count in sorted(report.per_subcategory.items()):
        entry = categories.setdefault(category, {"samples": 0, "subcategories": {}})
        entry["samples"] += count
        entry["subcategories"][subcategory] = count
    eval_by_category: dict[str, int] = {}
    for record in result.eval:
        eval_by_category[record.category] = eval_by_category.get(record.category, 0) + 1
    for name, entry in categories.items():
        entry["eval"] = eval_by_category.get(name, 0)
    stats: dict[str, Any] = {
        "schema": STATS_SCHEMA_VERSION,
        "samples": {"train": len(result.train), "eval": len(result.eval),
                    "total": len(result.train) + len(result.eval), "read": report.samples_read},
        "files": report.files,
        "categories": categories,
        "difficulty": {str(level): report.difficulty.get(level, 0)
                       for level in range(scale.minimum, scale.maximum + 1)},
        "normalisations": {kind: report.normalisations.get(kind, 0)
                           for kind in ("string", "float", "word", "clamped")},
        "samples_with_placeholders": report.samples_with_placeholders,
        "duplicates_dropped": report.duplicates_dropped,
        "duplicate_examples": report.duplicate_examples,
        "empty_topic_files": report.empty_files,
        "missing_topic_files": report.missing_files,
        "eval_split": {"fraction": result.options.eval_split, "seed": result.options.seed},
        "categories_selected": list(result.options.categories) or "all",
    }
    if tokenizer is not None:
        stats["tokens"] = token_stats(result.train + result.eval, tokenizer)
    return stats


@dataclass(frozen=True)
class LoadedTokenizer:
    path: Path
    tokenizer: Any  # tokenizers.Tokenizer (untyped library)


def load_tokenizer(path: Path) -> LoadedTokenizer:
    """A `tokenizers.Tokenizer` from a folder holding tokenizer.json (or the file itself); never from a hub."""
    from tokenizers import Tokenizer  # imported here: plain builds do not need it

    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():  # (is_file: a FIFO or device is never opened)
        raise TokenizerError(DatasetIssue(path.as_posix(), "no tokenizer.json here",
                                          "--tokenizer-path takes a local folder holding tokenizer.json (models are "
                                          "never downloaded from a hub)"))
    try:
        return LoadedTokenizer(path, Tokenizer.from_file(str(file)))
    except Exception as error:  # the Rust library raises plain Exception subclasses
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise TokenizerError(DatasetIssue(file.as_posix(), f"cannot load the tokenizer: {first_line}",
                                          "pass the folder of a model saved with save_pretrained")) from error


def token_stats(records: Sequence[BuiltRecord], loaded: LoadedTokenizer) -> dict[str, Any]:
    """Token counts of the user and assistant turns (content only, no chat template), batch encoded."""
    tokenizer = loaded.tokenizer
    users = [record.user for record in records]
    assistants = [record.assistant for record in records]
    try:
        user_lengths = [len(encoding.ids) for encoding in tokenizer.encode_batch(users, add_special_tokens=False)]
        assistant_lengths = [len(encoding.ids)
                             for encoding in tokenizer.encode_batch(assistants, add_special_tokens=False)]
    except Exception as error:  # a tokenizer.json that loads may still fail to encode (e.g. no unknown token)
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise TokenizerError(DatasetIssue(printable(loaded.path.as_posix()), f"cannot count tokens: {first_line}",
                                          "pass the folder of the model the run trains")) from error
    totals = [user + assistant for user, assistant in zip(user_lengths, assistant_lengths, strict=True)]
    return {
        "tokenizer": printable(loaded.path.as_posix()),
        "counted": "user + assistant message content, without the chat template",
        "total": percentiles(totals),
        "user": percentiles(user_lengths),
        "assistant": percentiles(assistant_lengths),
        "sum": sum(totals),
    }


def percentiles(values: Sequence[int]) -> dict[str, float | int]:
    """Nearest-rank p50/p90/p99, max and mean; zeros for no values."""
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0, "mean": 0.0}
    ordered = sorted(values)

    def rank(percent: int) -> int:
        return ordered[max(1, math.ceil(percent / 100 * len(ordered))) - 1]

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1],
            "mean": round(sum(ordered) / len(ordered), 1)}


def summary(stats: dict[str, Any]) -> str:
    samples = stats["samples"]
    lines = [(f"samples: {samples['total']} written ({samples['train']} train, {samples['eval']} eval) "
              f"from {samples['read']} read in {stats['files']} file(s)")]
    for name, entry in stats["categories"].items():
        subcategories = ", ".join(f"{sub} {count}" for sub, count in entry["subcategories"].items())
        lines.append(f"  {name}: {entry['samples']} ({subcategories})")
    lines.append("difficulty: " + ", ".join(f"{level}:{count}" for level, count in stats["difficulty"].items()))
    normalised = {kind: count for kind, count in stats["normalisations"].items() if count}
    lines.append("normalised difficulty: "
                 + (", ".join(f"{kind} {count}" for kind, count in normalised.items()) if normalised else "none"))
    lines.append(f"placeholders substituted in {stats['samples_with_placeholders']} sample(s)")
    lines.append(f"duplicates dropped: {stats['duplicates_dropped']}")
    for key, label in (("empty_topic_files", "empty topic files"), ("missing_topic_files", "missing topic files")):
        if stats[key]:
            lines.append(f"{label} ({len(stats[key])}): {', '.join(stats[key][:5])}"
                         + (" ..." if len(stats[key]) > 5 else ""))
    if "tokens" in stats:
        total = stats["tokens"]["total"]
        lines.append(f"tokens per sample: p50 {total['p50']}, p90 {total['p90']}, p99 {total['p99']}, "
                     f"max {total['max']} (sum {stats['tokens']['sum']})")
    return "\n".join(lines)
