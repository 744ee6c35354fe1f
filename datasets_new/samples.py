"""Reading one topic file into built records: schema checks, ids, difficulty, placeholders, exact duplicates,
serialisation.

A file is read on a fast path that assumes every sample is valid: a generated schema predicate per sample, duplicates
dropped before their record line is written, and the lines written from pre-encoded parts. At the first problem it
stops; the file is then gone through again on the reporting path, which collects every violation of every sample so
they can be located and reported together.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kubetune.datasets_new.difficulty import DifficultyError, DifficultyScale, Normalised
from kubetune.datasets_new.errors import DatasetIssue
from kubetune.datasets_new.jsonsource import PositionIndex, format_path, read_json_document
from kubetune.datasets_new.layout import TopicFile
from kubetune.datasets_new.placeholders import PlaceholderError, Placeholders
from kubetune.datasets_new.recordline import RecordLineWriter
from kubetune.datasets_new.schema import (
    Check,
    Predicate,
    Violation,
    compile_predicate,
    compile_schema,
    load_bundled_schema,
)
from kubetune.datasets_new.structure import CONTENT_TYPE_SCHEMAS

_TEXT_FIELDS = ("question", "think", "output")

# Messages (user, assistant) -> the id of the first record that has them, shared by every file of one build.
FirstRecordIds = dict[tuple[str, str], str]


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
    records: list[BuiltRecord] = field(default_factory=list)  # without the exact duplicates of earlier records
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (dropped id, kept id), in file order
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
        schema = load_bundled_schema(schema_name)
        self.is_valid: Predicate = compile_predicate(schema)
        self.check: Check = compile_schema(schema)
        difficulty_schema = load_bundled_schema("difficulty_schema.json")
        self.scale = DifficultyScale.from_schema(difficulty_schema)
        self.difficulty_hint = str(difficulty_schema["x-hint"])


@functools.cache
def _content_type(name: str) -> _ContentType:
    return _ContentType(CONTENT_TYPE_SCHEMAS[name])


def read_topic_file(topic: TopicFile, rules: SampleRules, first_record_ids: FirstRecordIds) -> FileOutcome:
    """Validate one file and build its records, dropping samples whose messages are those of a record built before
    (from this file or, through `first_record_ids`, from an earlier one)."""
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
    outcome.samples_read = len(samples)
    if not _build_records(topic, samples, rules, first_record_ids, outcome):
        violations = _find_violations(topic, samples, rules)
        if not violations:
            raise AssertionError(f"{topic.shown}: the fast path stopped at a sample the full checks accept")
        _report_violations(topic.shown, document.text, samples, violations, outcome, rules)
    return outcome


def _build_records(topic: TopicFile, samples: list[Any], rules: SampleRules, first_record_ids: FirstRecordIds,
                   outcome: FileOutcome) -> bool:
    """The fast path: build every sample's record into `outcome`; False (and no records) at the first problem.

    `first_record_ids` may keep the messages of the samples before that problem: harmless, as the build then fails.
    """
    content_type = _content_type(topic.content_type)
    is_valid, scale, clamp = content_type.is_valid, content_type.scale, rules.clamp_difficulty
    lowest, highest = scale.minimum, scale.maximum
    substitute = rules.placeholders.substitute
    category, subcategory = topic.category.name, topic.subcategory.name
    lines = RecordLineWriter(category, subcategory, topic.content_type,
                             list(dict.fromkeys(topic.category.tags + topic.subcategory.tags)), topic.source)
    record_prefix = f"{category}.{subcategory}.{topic.content_type}."
    seen_ids: set[str] = set()
    records: list[BuiltRecord] = []
    duplicates: list[tuple[str, str]] = []
    # Bound once: this loop runs for every sample.
    record_line, add_record, first_record_id = lines.line, records.append, first_record_ids.setdefault
    normalisations: Counter[str] = Counter()
    normalised_levels: dict[tuple[type, Any], Normalised] = {}  # a file repeats the same few spellings ("3", "hard")
    with_placeholders = 0
    for sample in samples:
        if not is_valid(sample):
            return False
        # The predicate guarantees the required fields and their types from here on.
        sample_id = sample["id"]
        if sample_id in seen_ids:
            return False
        seen_ids.add(sample_id)
        level = sample["difficulty"]
        if type(level) is not int or not lowest <= level <= highest:  # else: a plain in-range level, as is
            spelling = (type(level), level)
            normalised = normalised_levels.get(spelling)
            if normalised is None:
                try:
                    normalised = normalised_levels[spelling] = scale.normalise(level, clamp)
                except DifficultyError:
                    return False
            level = normalised.level
            normalisations[normalised.kind] += 1
        question, think, output = sample["question"], sample["think"], sample["output"]
        # `"$" in` (memchr) first: a two-character search scans ~15x slower, and most text holds no "$" at all.
        if ("$" in question or "$" in think or "$" in output) and (
                "${" in question or "${" in think or "${" in output):
            try:
                question, think, output = substitute(question), substitute(think), substitute(output)
            except PlaceholderError:
                return False
            with_placeholders += 1
        record_id = record_prefix + sample_id
        assistant = f"<think>{think}</think>\n<output>{output}</output>"
        kept_id = first_record_id((question, assistant), record_id)
        if kept_id != record_id:
            duplicates.append((record_id, kept_id))
            continue
        line = record_line(record_id, level, question, assistant, sample.get("tags"), sample.get("metadata"))
        add_record(BuiltRecord(record_id, category, subcategory, level, question, assistant, line))
    outcome.records = records
    outcome.duplicates = duplicates
    outcome.normalisations = normalisations
    outcome.samples_with_placeholders = with_placeholders
    return True


def _find_violations(topic: TopicFile, samples: list[Any], rules: SampleRules) -> list[Violation]:
    """The reporting path: every schema violation, duplicate id, unreadable difficulty and placeholder error."""
    content_type = _content_type(topic.content_type)
    is_valid, check, scale = content_type.is_valid, content_type.check, content_type.scale
    violations: list[Violation] = []
    first_index_of: dict[str, int] = {}
    for index, sample in enumerate(samples):
        if not is_valid(sample):
            check(sample, (index,), violations)
        if type(sample) is not dict:
            continue
        # Checks beyond the schema run on whichever fields have the right type, so one pass reports them all.
        sample_id = sample.get("id")
        if type(sample_id) is str:
            first = first_index_of.setdefault(sample_id, index)
            if first != index:
                violations.append(Violation((index, "id"), f"duplicate id {sample_id!r}, already used by sample "
                                            f"{first}", "ids must be unique within a file; rename this one"))
        raw_difficulty = sample.get("difficulty")
        if type(raw_difficulty) in (int, float, str):
            try:
                scale.normalise(raw_difficulty, rules.clamp_difficulty)
            except DifficultyError as error:
                violations.append(Violation((index, "difficulty"), str(error), content_type.difficulty_hint))
        _check_placeholders(sample, index, rules.placeholders, violations)
    return violations


def _check_placeholders(sample: dict[str, Any], index: int, placeholders: Placeholders,
                        violations: list[Violation]) -> None:
    for name in _TEXT_FIELDS:
        text = sample.get(name)
        if type(text) is str:
            try:
                placeholders.substitute(text)
            except PlaceholderError as error:
                violations.append(Violation((index, name), str(error), error.hint))


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
