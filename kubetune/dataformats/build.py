"""Build train_data.jsonl (+ eval_data.jsonl) and stats.json from `messages`, ShareGPT or Alpaca data files: every
record validated first (all problems reported, up to a limit), exact duplicates dropped, the eval split decided by
each record's id as the tree builder does. Nothing is written unless the whole input is valid."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kubetune.api.dataset_formats import DatasetFields
from kubetune.dataformats.formats import NORMALISERS, Keys, Message
from kubetune.dataformats.rows import RowsError, read_rows, unparsed
from kubetune.datasets_new.builder import cyclic_gc_paused, eval_fraction
from kubetune.datasets_new.errors import DatasetError, DatasetIssue, IssueCollector
from kubetune.datasets_new.outputs import stats_bytes, write_files_atomically
from kubetune.datasets_new.pipeline import OutputPaths
from kubetune.datasets_new.stats import LoadedTokenizer, TokenizerError, percentiles

STATS_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DataFile:
    path: Path
    shown: str  # as reports name it (the URI's view, not a download folder)


@dataclass(frozen=True)
class Conversation:
    id: str
    messages: list[Message]

    def line(self) -> str:
        return json.dumps({"id": self.id, "messages": self.messages}, ensure_ascii=False)


@dataclass
class FormatBuild:
    format: str
    train: list[Conversation] = field(default_factory=list)
    eval: list[Conversation] = field(default_factory=list)
    files: int = 0
    records_read: int = 0
    duplicates_dropped: int = 0
    turns: Counter[str] = field(default_factory=Counter)
    with_system: int = 0
    multi_turn: int = 0


def build_conversations(format_name: str, files: Sequence[DataFile], fields: DatasetFields, *, eval_split: float,
                        seed: int = 0, max_errors: int = 50) -> FormatBuild:
    """Every record of `files` as a conversation; raises DatasetError naming each bad record (file:line)."""
    normalise, keys = NORMALISERS[format_name], Keys.of(format_name, fields)
    issues = IssueCollector(limit=max_errors)
    build = FormatBuild(format_name)
    seen: set[str] = set()
    kept: list[Conversation] = []
    with cyclic_gc_paused():
        for data_file in files:
            build.files += 1
            try:
                for row in read_rows(data_file.path, data_file.shown):
                    build.records_read += 1
                    bad_line = unparsed(row)
                    result = [bad_line] if bad_line else normalise(row, keys)
                    if result and isinstance(result[0], DatasetIssue):
                        for issue in result:
                            assert isinstance(issue, DatasetIssue)
                            issues.add(issue)
                        continue
                    messages = cast(list[Message], result)  # not issues: a conversation
                    conversation = _conversation(messages)
                    if conversation.id in seen:
                        build.duplicates_dropped += 1
                        continue
                    seen.add(conversation.id)
                    if not issues:
                        kept.append(conversation)
                        _count(build, messages)
            except RowsError as error:
                issues.add(error.issue)
        if build.records_read == 0 and not issues:
            shown = ", ".join(data_file.shown for data_file in files[:3]) or "(no data files)"
            issues.add(DatasetIssue(shown, "no records", "the dataset needs at least one conversation"))
        issues.raise_if_any()
        for conversation in kept:
            (build.eval if eval_split > 0 and eval_fraction(conversation.id, seed) < eval_split
             else build.train).append(conversation)
    if not build.train:
        raise DatasetError([DatasetIssue(files[0].shown, f"every one of {len(kept)} record(s) went to the eval split",
                                         "lower spec.dataset.evalSplit or add records")])
    return build


def _conversation(messages: list[Message]) -> Conversation:
    digest = hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()
    return Conversation(digest[:16], messages)


def _count(build: FormatBuild, messages: list[Message]) -> None:
    build.turns.update(message["role"] for message in messages)
    build.with_system += messages[0]["role"] == "system"
    build.multi_turn += sum(message["role"] == "assistant" for message in messages) > 1


def format_stats(build: FormatBuild, eval_split: float, seed: int,
                 tokenizer: LoadedTokenizer | None) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "schema": STATS_SCHEMA_VERSION,
        "format": build.format,
        "samples": {"train": len(build.train), "eval": len(build.eval), "total": len(build.train) + len(build.eval),
                    "read": build.records_read},
        "files": build.files,
        "turns": {role: build.turns.get(role, 0) for role in ("system", "user", "assistant")},
        "samples_with_system_prompt": build.with_system,
        "multi_turn_samples": build.multi_turn,
        "duplicates_dropped": build.duplicates_dropped,
        "eval_split": {"fraction": eval_split, "seed": seed},
    }
    if tokenizer is not None:
        stats["tokens"] = _token_stats(build.train + build.eval, tokenizer)
    return stats


def _token_stats(conversations: Sequence[Conversation], loaded: LoadedTokenizer) -> dict[str, Any]:
    """Token counts per conversation of every turn's content (system, user, assistant), without the chat template."""
    texts = [message["content"] for conversation in conversations for message in conversation.messages]
    try:
        lengths = iter(len(encoding.ids) for encoding in loaded.tokenizer.encode_batch(texts, add_special_tokens=False))
    except Exception as error:  # the Rust library raises plain Exception subclasses
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise TokenizerError(DatasetIssue(loaded.path.as_posix(), f"cannot count tokens: {first_line}",
                                          "pass the folder of the model the run trains")) from error
    totals: list[int] = []
    assistant: list[int] = []
    for conversation in conversations:
        counts = [(message["role"], next(lengths)) for message in conversation.messages]
        totals.append(sum(count for _, count in counts))
        assistant.append(sum(count for role, count in counts if role == "assistant"))
    return {"tokenizer": loaded.path.as_posix(), "counted": "every turn's content, without the chat template",
            "total": percentiles(totals), "assistant": percentiles(assistant), "sum": sum(totals)}


def write_outputs(build: FormatBuild, outputs: OutputPaths, stats: dict[str, Any], eval_split: float) -> None:
    contents: dict[Path, Iterable[bytes]] = {outputs.train: _jsonl(build.train), outputs.stats: [stats_bytes(stats)]}
    if eval_split > 0:
        contents[outputs.eval] = _jsonl(build.eval)
    write_files_atomically(contents)


def _jsonl(conversations: Sequence[Conversation]) -> Iterable[bytes]:
    for start in range(0, len(conversations), 1024):
        yield "".join(conversation.line() + "\n" for conversation in conversations[start:start + 1024]).encode()
