"""Malformed dataset input: every problem names its file, its line (or field) and a one-line hint, and nothing is
written to the output path."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune.datasets_new.builder import BuildOptions
from kubetune.datasets_new.errors import DatasetError, DatasetIssue, OutputError
from kubetune.datasets_new.pipeline import OutputPaths, build_and_write
from kubetune.datasets_new.stats import TokenizerError

WHO = "topics/identity/who/identity.who.reasoning.json"
ARITH = "topics/math/arith/math.arith.reasoning.json"


def structure(**category_overrides: Any) -> dict[str, Any]:
    identity = {"name": "identity", "description": "Who the assistant is.", "tags": ["identity"],
                "subcategories": [{"name": "who", "description": "Who are you?", "tags": ["self"],
                                   "content_types": ["reasoning"]}]}
    math = {"name": "math", "description": "Arithmetic.", "tags": ["math"],
            "subcategories": [{"name": "arith", "description": "Sums.", "tags": ["arith"],
                               "content_types": ["reasoning"]}]}
    identity.update(category_overrides)
    return {"version": 1, "name": "test", "description": "A tiny tree.", "categories": [identity, math]}


def sample(number: int = 1, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": f"s{number}", "question": f"What is {number} + {number}?",
                            "think": "Add the two numbers.", "output": str(2 * number), "difficulty": 2}
    base.update(fields)
    return {key: value for key, value in base.items() if value is not DROP}


DROP = object()


def samples_text(*items: Any) -> str:
    """One sample per line: sample i starts on line i + 2."""
    return "[\n" + ",\n".join(json.dumps(item, ensure_ascii=False) for item in items) + "\n]\n"


def write_tree(root: Path, files: dict[str, str | bytes], structure_doc: Any = None) -> None:
    doc = structure() if structure_doc is None else structure_doc
    root.mkdir(parents=True, exist_ok=True)
    (root / "structure.enriched.json").write_text(
        doc if isinstance(doc, str) else json.dumps(doc, indent=2), encoding="utf-8")
    defaults: dict[str, str | bytes] = {WHO: samples_text(sample(1, output="I am ${NAME}.")),
                                        ARITH: samples_text(sample(1), sample(2))}
    for relative, content in {**defaults, **files}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


@dataclass(frozen=True)
class Case:
    name: str
    files: dict[str, str | bytes]
    path: str  # the file the error must name (suffix)
    message: str  # fragment of the message
    hint: str  # fragment of the hint
    line: int | None = None
    column: int | None = None
    field: str | None = None
    structure_doc: Any = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


CASES = [
    Case("invalid JSON: missing comma", {ARITH: '[\n{"id": "s1", "question": "q" "think": "t"}\n]'},
         ARITH, "invalid JSON: Expecting ',' delimiter", "comma is missing", line=2, column=30),
    Case("invalid JSON: trailing comma", {ARITH: samples_text(sample(1)).replace("}\n]", "},\n]")},
         ARITH, "invalid JSON: Expecting value", "trailing comma", line=3, column=1),
    Case("invalid JSON: raw newline in a string", {ARITH: '[\n{"id": "s1", "question": "two\nlines"}\n]'},
         ARITH, "Invalid control character", "write \\n", line=2, column=30),
    Case("invalid JSON: bad escape", {ARITH: '[\n{"id": "s1", "question": "C:\\path"}\n]'},
         ARITH, "Invalid \\escape", "backslash", line=2, column=29),
    Case("UTF-8 byte order mark", {ARITH: b"\xef\xbb\xbf" + samples_text(sample(1)).encode()},
         ARITH, "byte order mark", "without BOM", line=1, column=1),
    Case("non-UTF-8 bytes", {ARITH: samples_text(sample(1), sample(2, think="caf\u00e9")).encode("latin-1")},
         ARITH, "is not valid UTF-8", "UTF-8 encoding", line=3),
    Case("empty file", {ARITH: ""}, ARITH, "file is empty", "empty array: []", line=1),
    Case("whitespace-only file", {ARITH: "\n  \n"}, ARITH, "file is empty", "empty array: []", line=1),
    Case("top level is an object", {ARITH: '\n{"samples": []}\n'}, ARITH,
         "top level must be an array of samples, found an object", "wrap the samples in [ ... ]", line=2, column=1),
    Case("a sample that is not an object", {ARITH: samples_text(sample(1), "just text")}, ARITH,
         "sample 1: must be an object", "one sample object", line=3),
    Case("missing field", {ARITH: samples_text(sample(1), sample(2, think=DROP))}, ARITH,
         "sample 1 (id 's2'): missing required field 'think'", "every sample needs id, question, think", line=3),
    Case("unexpected field", {ARITH: samples_text(sample(1, answer="2"))}, ARITH,
         "unexpected field 'answer'", "put anything else under metadata", line=2, field="answer"),
    Case("wrong type", {ARITH: samples_text(sample(1), sample(2, question=42))}, ARITH,
         "question: must be a string, got integer 42", "write the user's question", line=3, field="question"),
    Case("empty string", {ARITH: samples_text(sample(1, output=""))}, ARITH,
         "output: must not be empty", "write the answer", line=2, field="output"),
    Case("whitespace-only string", {ARITH: samples_text(sample(1, think="   "))}, ARITH,
         "think: \"   \" does not match", "write the reasoning", line=2, field="think"),
    Case("empty id", {ARITH: samples_text(sample(1, id=""))}, ARITH, "id: must not be empty",
         "ids use lowercase letters", line=2, field="id"),
    Case("id with spaces and capitals", {ARITH: samples_text(sample(1, id="Sample 1"))}, ARITH,
         "does not match /^[a-z0-9_-]+$/", "ids use lowercase letters", line=2, field="id"),
    Case("duplicate ids", {ARITH: samples_text(sample(1), sample(2), sample(3, id="s1"))}, ARITH,
         "duplicate id 's1', already used by sample 0", "unique within a file", line=4, field="id"),
    Case("difficulty above the range", {ARITH: samples_text(sample(1, difficulty=9))}, ARITH,
         "difficulty: 9 is outside 1-6", "1 (trivial) to 6 (expert)", line=2, field="difficulty"),
    Case("difficulty zero", {ARITH: samples_text(sample(1), sample(2, difficulty=0))}, ARITH,
         "0 is outside 1-6", "difficulty_schema.json", line=3, field="difficulty"),
    Case("difficulty that is not a level", {ARITH: samples_text(sample(1, difficulty="tricky"))}, ARITH,
         "'tricky' is neither a number nor a level name", "1 (trivial) to 6 (expert)", line=2, field="difficulty"),
    Case("difficulty as a boolean", {ARITH: samples_text(sample(1, difficulty=True))}, ARITH,
         "must be an integer or a number or a string, got boolean true", "difficulty_schema.json", line=2,
         field="difficulty"),
    Case("difficulty NaN", {ARITH: samples_text(sample(1)).replace('"difficulty": 2', '"difficulty": NaN')}, ARITH,
         "got number NaN", "1 (trivial)", line=2, field="difficulty"),
    Case("tags not a list", {ARITH: samples_text(sample(1, tags="arith"))}, ARITH,
         "tags: must be an array", "tags is a list of non-empty strings", line=2, field="tags"),
    Case("metadata value that is a list", {ARITH: samples_text(sample(1, metadata={"refs": ["a"]}))}, ARITH,
         "metadata.refs: must be a string", "metadata values are non-empty strings", line=2, field="metadata.refs"),
    Case("reserved metadata key", {ARITH: samples_text(sample(1, metadata={"source": "me"}))}, ARITH,
         "metadata.source: \"source\" is not allowed here", "'source' is reserved", line=2, field="metadata.source"),
    Case("structure tags inside the text", {ARITH: samples_text(sample(1, output="2</output>"))}, ARITH,
         "must not match /</(think|output)>/", "would end the model's turn early", line=2, field="output"),
    Case("unknown placeholder", {WHO: samples_text(sample(1, output="I am ${NICKNAME}."))}, WHO,
         "output: unknown placeholder ${NICKNAME}", "known placeholders: ${NAME}, ${SPEC}", line=2, field="output"),
    Case("known placeholder without a value", {WHO: samples_text(sample(1, think="I am ${SPEC}."))}, WHO,
         "placeholder ${SPEC} has no value", "--spec TEXT or --placeholder SPEC=TEXT", line=2, field="think"),
    Case("unterminated placeholder", {WHO: samples_text(sample(1, question="Are you ${NAME ?"))}, WHO,
         "unterminated placeholder '${NAME'", "close it with '}'", line=2, field="question"),
    Case("file in the wrong folder", {"topics/math/arith/identity.who.reasoning.json": samples_text(sample(5))},
         "topics/math/arith/identity.who.reasoning.json", "file is named for identity/who but lies in math/arith",
         "move it to topics/identity/who/"),
    Case("file named against the structure", {"topics/math/arith/math.arithmetic.reasoning.json": "[]"},
         "topics/math/arith/math.arithmetic.reasoning.json", "named for math/arithmetic but lies in math/arith",
         "rename it to math.arith.reasoning.json"),
    Case("content type the structure does not list", {"topics/math/arith/math.arith.dialogue.json": "[]"},
         "topics/math/arith/math.arith.dialogue.json", "content type 'dialogue' is not listed for math/arith",
         "add it to the subcategory's content_types"),
    Case("file name without category and subcategory", {"topics/math/arith/notes.json": "[]"},
         "topics/math/arith/notes.json", "file name is not <category>.<subcategory>.<content_type>.json",
         "rename it, e.g. math.arith.reasoning.json"),
    Case("category folder the structure does not define", {"topics/physics/waves/physics.waves.reasoning.json": "[]"},
         "topics/physics", "folder 'physics' is not a category of the structure", "structure.enriched.json"),
    Case("subcategory folder the structure does not define", {"topics/math/geometry/math.geometry.reasoning.json": "[]"},
         "topics/math/geometry", "folder 'geometry' is not a subcategory of 'math'", "rename the folder"),
    Case("stray file at the top of the tree", {"topics/README.md": "notes"}, "topics/README.md",
         "file outside any category folder", "topics/<category>/<subcategory>/"),
    Case("structure: invalid category name", {}, "structure.enriched.json", "does not match /^[a-z0-9_]+$/",
         "names are lowercase letters", field="categories[0].name", line=7,
         structure_doc=structure(name="Identity")),
    Case("structure: unknown content type", {}, "structure.enriched.json", "must be one of \"reasoning\"",
         "content types with a schema: reasoning", field="categories[0].subcategories[0].content_types[0]",
         structure_doc=structure(subcategories=[{"name": "who", "description": "d", "tags": [],
                                                 "content_types": ["poetry"]}])),
    Case("structure: invalid JSON", {}, "structure.enriched.json", "invalid JSON: Expecting value", "a value is missing",
         structure_doc='{"version": 1,\n "name": }', line=2, column=10),
    Case("unknown --category", {}, "structure.enriched.json", "--category 'physics' is not in the structure",
         "categories: identity, math", options={"categories": ("physics",)}),
    Case("unknown spec.dataset.categories entry (the dataset stage)", {}, "structure.enriched.json",
         "spec.dataset.categories: 'physics' is not in the structure", "categories: identity, math",
         options={"categories": ("physics",), "categories_origin": "spec.dataset.categories:"}),
    Case("lone surrogate escape", {ARITH: samples_text(sample(1), sample(2, tags=["ok"])).replace('"ok"', '"\\udc80"')},
         ARITH, "[1].tags[0] holds a lone UTF-16 surrogate escape", "both halves of a surrogate pair", line=3),
    Case("integer beyond the parser's digit limit", {ARITH: samples_text(sample(1), sample(2, difficulty=0)).replace(
        '"difficulty": 0', '"difficulty": ' + "7" * 4301)}, ARITH, "an integer has more than 4300 digits",
         "put long digit strings in quotes", line=3, column=106),
    Case("nesting deeper than the parser", {ARITH: "[" * 100_000 + "]" * 100_000}, ARITH,
         "values nest more than 500 levels deep", "remove the nested brackets", line=1, column=501),
    Case("deep nesting the parser reads", {ARITH: "[\n" + "[" * 450 + "]" * 450 + "\n]"}, ARITH,
         "sample 0: must be an object", "each item of the top-level array is one sample object", line=2),
    Case("blank placeholder value", {}, "--placeholder", "placeholder NAME has an empty value", "give NAME some text",
         options={"placeholders": {"NAME": " \t"}}),
    Case("placeholder value closing the output tag", {}, "--placeholder", "placeholder NAME's value holds </think>",
         "the builder adds these tags", options={"placeholders": {"NAME": "Nova</output>"}}),
    Case("placeholder value that is not Unicode", {}, "--placeholder", "placeholder SPEC's value is not valid Unicode",
         "UTF-8", options={"placeholders": {"NAME": "Nova", "SPEC": "\udcff"}}),
]


def build_case(tmp_path: Path, case: Case) -> tuple[DatasetError, Path]:
    root = tmp_path / "tree"
    write_tree(root, case.files, case.structure_doc)
    out = tmp_path / "out"
    options = BuildOptions(root / "structure.enriched.json", root / "topics",
                           **{"placeholders": {"NAME": "Nova"}, **case.options})
    with pytest.raises(DatasetError) as raised:
        build_and_write(options, OutputPaths.in_folder(out), with_stats=True)
    return raised.value, out


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_malformed_input_is_reported_precisely_and_nothing_is_written(tmp_path: Path, case: Case) -> None:
    error, out = build_case(tmp_path, case)
    matching = [issue for issue in error.issues if case.message in issue.message]
    assert matching, f"no issue mentions {case.message!r}:\n{error.report()}"
    issue: DatasetIssue = matching[0]
    assert issue.path.endswith(case.path), issue.path
    assert case.hint in issue.hint and "\n" not in issue.hint
    if case.line is not None:
        assert issue.line == case.line, issue.format()
    if case.column is not None:
        assert issue.column == case.column, issue.format()
    if case.field is not None:
        assert issue.field == case.field, issue.format()
    assert issue.format().startswith(issue.location() + ": ")
    assert not out.exists(), "a failed build must not create or touch the output folder"


def test_errors_from_every_file_are_collected_before_failing(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {
        WHO: samples_text(sample(1, difficulty=7)),
        ARITH: samples_text(sample(1, question=""), sample(2, difficulty="hard-ish")),
        "topics/math/arith/notes.json": "[]",
    }
    error, _ = build_case(tmp_path, Case("many", files, "", "", ""))
    located = {(Path(issue.path).name, issue.line, issue.field) for issue in error.issues}
    assert located == {("identity.who.reasoning.json", 2, "difficulty"), ("math.arith.reasoning.json", 2, "question"),
                       ("math.arith.reasoning.json", 3, "difficulty"), ("notes.json", None, None)}
    assert error.total == 4 and "4 dataset error(s)" in str(error)


def test_the_error_list_is_capped_but_every_error_is_counted(tmp_path: Path) -> None:
    bad = samples_text(*(sample(number, difficulty=10 + number) for number in range(30)))
    error, _ = build_case(tmp_path, Case("cap", {ARITH: bad}, "", "", "", options={"max_errors": 5}))
    assert len(error.issues) == 5 and error.total == 30
    assert "25 more error(s) not shown" in error.report()


def test_a_failed_rebuild_leaves_the_previous_output_untouched(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    write_tree(root, {})
    out = OutputPaths.in_folder(tmp_path / "out")
    options = BuildOptions(root / "structure.enriched.json", root / "topics", placeholders={"NAME": "Nova"})
    build_and_write(options, out)
    before = {path.name: path.read_bytes() for path in out.train.parent.iterdir()}
    (root / ARITH).write_text(samples_text(sample(1, difficulty=99)), encoding="utf-8")
    with pytest.raises(DatasetError):
        build_and_write(options, out)
    assert {path.name: path.read_bytes() for path in out.train.parent.iterdir()} == before


def build_tree(tmp_path: Path, files: dict[str, str | bytes] | None = None) -> tuple[BuildOptions, OutputPaths]:
    root = tmp_path / "tree"
    write_tree(root, files or {})
    options = BuildOptions(root / "structure.enriched.json", root / "topics", placeholders={"NAME": "Nova"})
    return options, OutputPaths.in_folder(tmp_path / "out")


def only_issue(options: BuildOptions, outputs: OutputPaths) -> DatasetIssue:
    with pytest.raises(DatasetError) as raised:
        build_and_write(options, outputs)
    assert raised.value.total == 1, raised.value.report()
    assert not outputs.train.parent.exists()
    return raised.value.issues[0]


@pytest.mark.parametrize("which", ["topic file", "structure file"])
def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path: Path, which: str) -> None:
    options, outputs = build_tree(tmp_path)
    target = options.topics_dir.parent / ARITH if which == "topic file" else options.structure_path
    target.unlink()
    os.mkfifo(target)
    signal.alarm(30)  # a regression would block in open(); fail instead of hanging the suite
    try:
        issue = only_issue(options, outputs)
    finally:
        signal.alarm(0)
    assert issue.path == target.as_posix() and issue.message == "is a named pipe (FIFO), not a regular file"


@pytest.mark.parametrize("link", [ARITH, "topics/math", "topics/math/arith"])
def test_a_symlink_out_of_the_topics_folder_is_refused_and_never_read(tmp_path: Path, link: str) -> None:
    options, outputs = build_tree(tmp_path)
    outside = tmp_path / "outside"
    write_tree(outside, {})  # a whole valid tree: whatever the link points at would build
    target = options.topics_dir.parent / link
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.symlink_to(outside / link)
    issue = only_issue(options, outputs)
    assert issue.path == target.as_posix() and issue.message == "symlink leads outside the topics folder"


def test_a_folder_or_file_the_build_may_not_read_is_reported_not_raised(tmp_path: Path, monkeypatch: Any) -> None:
    # The tests run as root, which permissions do not stop: the refusal is simulated where the system reports it.
    options, outputs = build_tree(tmp_path)
    denied = {str(options.topics_dir / "identity"), str(options.topics_dir.parent / ARITH)}

    def refuse(real: Any) -> Any:
        def call(path: Any, *args: Any) -> Any:
            if str(path) in denied:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *args)
        return call

    monkeypatch.setattr(os, "scandir", refuse(os.scandir))
    monkeypatch.setattr(os, "open", refuse(os.open))
    with pytest.raises(DatasetError) as raised:
        build_and_write(options, outputs)
    messages = {(Path(issue.path).name, issue.message) for issue in raised.value.issues}
    assert messages == {("identity", "cannot list folder: Permission denied"),
                        ("math.arith.reasoning.json", "cannot read file: Permission denied")}


@pytest.mark.parametrize("outputs_of", [
    lambda out, tree: OutputPaths(out / "a.jsonl", out / "eval.jsonl", out / "a.jsonl"),
    lambda out, tree: OutputPaths.in_folder(tree / "topics" / "math"),
    lambda out, tree: OutputPaths(tree / "structure.enriched.json", out / "e", out / "s"),
    lambda out, tree: OutputPaths(out, out / "e", out / "s"),
], ids=["one file for two outputs", "inside the topics folder", "the structure file", "a folder"])
def test_an_output_that_cannot_be_written_is_refused_before_the_build(tmp_path: Path, outputs_of: Any) -> None:
    options, _ = build_tree(tmp_path)
    (tmp_path / "out").mkdir()
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(OutputError) as raised:
        build_and_write(options, outputs_of(tmp_path / "out", tmp_path / "tree"))
    assert raised.value.issue.hint and "\n" not in raised.value.issue.message
    assert sorted(tmp_path.rglob("*")) == before


def test_a_file_too_large_for_a_dataset_is_refused_before_it_is_read(tmp_path: Path) -> None:
    options, outputs = build_tree(tmp_path)
    topic = options.topics_dir.parent / ARITH
    os.truncate(topic, 300 * 1024 * 1024)  # sparse: nothing is written to disk, and nothing must be read
    issue = only_issue(options, outputs)
    assert issue.path == topic.as_posix() and issue.message == "file is larger than 256 MiB"


@pytest.mark.parametrize("tokenizer_json", [
    "{}",  # does not load
    json.dumps({"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
                "pre_tokenizer": None, "post_processor": None, "decoder": None,
                "model": {"type": "WordLevel", "vocab": {}, "unk_token": "zz"}}),  # loads, cannot encode
], ids=["not a tokenizer", "cannot encode"])
def test_an_unusable_tokenizer_is_one_located_error_and_nothing_is_written(tmp_path: Path, tokenizer_json: str) -> None:
    options, outputs = build_tree(tmp_path)
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    with pytest.raises(TokenizerError) as raised:
        build_and_write(options, outputs, tmp_path / "tokenizer")
    assert raised.value.issue.hint and "\n" not in raised.value.issue.message
    assert not outputs.train.parent.exists()
