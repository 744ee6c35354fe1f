"""Reading one topic file into built records: schema checks, ids, difficulty, placeholders, serialisation."""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kubetune.datasets_new.difficulty import DifficultyError, DifficultyScale
from kubetune.datasets_new.errors import DatasetIssue
from kubetune.datasets_new.jsonsource import PositionIndex, format_path, read_json_document
from kubetune.datasets_new.layout import TopicFile
from kubetune.datasets_new.placeholders import PlaceholderError, Placeholders
from kubetune.datasets_new.schema import Check, Violation, compile_schema, load_bundled_schema
from kubetune.datasets_new.structure import CONTENT_TYPE_SCHEMAS

_TEXT_FIELDS = ("question", "think", "output")
# One encoder for every record: the same bytes on every machine (UTF-8 text, the contract's separators).
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


class BuiltRecord(NamedTuple):
    """A record of train_data.jsonl: `line` is its JSON text; the other fields are what the builder needs."""

    id: str
    category: str
    subcategory: str
    difficulty: int
    user: str
    assistant: str
    line: str


@dataclass
class FileOutcome:
    records: list[BuiltRecord] = field(default_factory=list)
    issues: list[DatasetIssue] = field(default_factory=list)
    issue_count: int = 0
    parsed: bool = False
    empty: bool = False
    samples_read: int = 0
    normalisations: Counter[str] = field(default_factory=Counter)
    samples_with_placeholders: int = 0


@dataclass(frozen=True)
class SampleRules:
    placeholders: Placeholders
    clamp_difficulty: bool
    max_issues: int


class _ContentType:
    """A content type's compiled sample schema and the difficulty scale (compiled once per process)."""

    def __init__(self, schema_name: str) -> None:
        self.check: Check = compile_schema(load_bundled_schema(schema_name))
        difficulty_schema = load_bundled_schema("difficulty_schema.json")
        self.scale = DifficultyScale.from_schema(difficulty_schema)
        self.difficulty_hint = str(difficulty_schema["x-hint"])


@functools.cache
def _content_type(name: str) -> _ContentType:
    return _ContentType(CONTENT_TYPE_SCHEMAS[name])


def read_topic_file(topic: TopicFile, rules: SampleRules) -> FileOutcome:
    outcome = FileOutcome()
    document = read_json_document(topic.path, topic.shown)
    if isinstance(document, DatasetIssue):
        _add(outcome, document, rules)
        return outcome
    outcome.parsed = True
    samples = document.value
    if type(samples) is not list:
        kind = "an object" if isinstance(samples, dict) else f"a {type(samples).__name__}"
        line, column = PositionIndex(document.text).line_column(())
        _add(outcome, DatasetIssue(topic.shown, f"top level must be an array of samples, found {kind}",
                                   "wrap the samples in [ ... ] (an empty topic is [])", line=line, column=column),
             rules)
        return outcome
    outcome.empty = not samples
    violations = _build_records(topic, samples, rules, outcome)
    if violations:
        _report_violations(topic.shown, document.text, samples, violations, outcome, rules)
    return outcome


def _build_records(topic: TopicFile, samples: list[Any], rules: SampleRules, outcome: FileOutcome) -> list[Violation]:
    content_type = _content_type(topic.content_type)
    check, scale, clamp, placeholders = (content_type.check, content_type.scale, rules.clamp_difficulty,
                                         rules.placeholders)
    violations: list[Violation] = []
    first_index_of: dict[str, int] = {}
    category, subcategory = topic.category.name, topic.subcategory.name
    record_prefix = f"{category}.{subcategory}.{topic.content_type}."
    base_tags = list(dict.fromkeys(topic.category.tags + topic.subcategory.tags))
    records = outcome.records
    for index, sample in enumerate(samples):
        errors_before = len(violations)
        check(sample, (index,), violations)
        if type(sample) is not dict:
            continue
        schema_ok = len(violations) == errors_before
        # Checks beyond the schema run on whichever fields have the right type, so one pass reports them all.
        sample_id = sample.get("id")
        if type(sample_id) is str:
            first = first_index_of.setdefault(sample_id, index)
            if first != index:
                violations.append(Violation((index, "id"), f"duplicate id {sample_id!r}, already used by sample "
                                            f"{first}", "ids must be unique within a file; rename this one"))
        difficulty = None
        raw_difficulty = sample.get("difficulty")
        if type(raw_difficulty) in (int, float, str):
            try:
                difficulty = scale.normalise(raw_difficulty, clamp)
            except DifficultyError as error:
                violations.append(Violation((index, "difficulty"), str(error), content_type.difficulty_hint))
        texts = _substituted_texts(sample, index, placeholders, violations)
        if not schema_ok or texts is None or difficulty is None or violations:
            continue  # keep validating the file, but build no more records from it
        if difficulty.kind is not None:
            outcome.normalisations[difficulty.kind] += 1
        question, think, output, substituted = texts
        if substituted:
            outcome.samples_with_placeholders += 1
        record_id = f"{record_prefix}{sample_id}"
        assistant = f"<think>{think}</think>\n<output>{output}</output>"
        tags = sample.get("tags")
        line = _ENCODE({
            "id": record_id,
            "category": category,
            "subcategory": subcategory,
            "content_type": topic.content_type,
            "tags": list(dict.fromkeys(base_tags + tags)) if tags else base_tags,
            "difficulty": difficulty.level,
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": assistant}],
            "metadata": {"source": topic.source, **sample.get("metadata", {})},
        })
        records.append(BuiltRecord(record_id, category, subcategory, difficulty.level, question, assistant, line))
    outcome.samples_read = len(samples)
    if violations:
        outcome.records.clear()
    return violations


def _substituted_texts(sample: dict[str, Any], index: int, placeholders: Placeholders,
                       violations: list[Violation]) -> tuple[str, str, str, bool] | None:
    """(question, think, output, whether any placeholder was used), or None when a field is missing or wrong."""
    question, think, output = sample.get("question"), sample.get("think"), sample.get("output")
    if type(question) is str and type(think) is str and type(output) is str and \
            "${" not in question and "${" not in think and "${" not in output:
        return question, think, output, False  # fast path: the common case
    substituted: list[str] = []
    for name in _TEXT_FIELDS:
        text = sample.get(name)
        if type(text) is not str:
            continue
        try:
            substituted.append(placeholders.substitute(text))
        except PlaceholderError as error:
            violations.append(Violation((index, name), str(error), error.hint))
    if len(substituted) != len(_TEXT_FIELDS):
        return None
    return substituted[0], substituted[1], substituted[2], True


def _add(outcome: FileOutcome, issue: DatasetIssue, rules: SampleRules) -> None:
    outcome.issue_count += 1
    if len(outcome.issues) < rules.max_issues:
        outcome.issues.append(issue)


def _report_violations(shown: str, text: str, samples: list[Any], violations: list[Violation],
                       outcome: FileOutcome, rules: SampleRules) -> None:
    positions = PositionIndex(text)
    located = sorted(((positions.line_column(violation.path), violation) for violation in violations),
                     key=lambda pair: pair[0])
    for (line, column), violation in located:
        index, *field_path = violation.path
        field_name = format_path(tuple(field_path)) or None
        _add(outcome, DatasetIssue(shown, f"{_sample_label(samples, index, field_name)}: {violation.message}",
                                   violation.hint, line=line, column=column, field=field_name), rules)


def _sample_label(samples: list[Any], index: str | int, field_name: str | None) -> str:
    """`sample 3 (id 'who_01') difficulty`: which sample, and which of its fields."""
    sample = samples[index] if isinstance(index, int) else None
    sample_id = sample.get("id") if isinstance(sample, dict) else None
    label = f"sample {index}" + (f" (id {sample_id!r})" if isinstance(sample_id, str) else "")
    return f"{label} {field_name}" if field_name else label
