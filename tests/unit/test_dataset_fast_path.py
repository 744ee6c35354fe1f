"""The builder's fast path changes nothing but speed: the generated schema predicate accepts exactly what the reporting
checker accepts, record lines are the bytes `json.dumps` writes, and whole builds have the bytes of the builder before
the fast path existed."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import random
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kubetune.datasets_new.builder import BuildOptions
from kubetune.datasets_new.difficulty import DifficultyScale
from kubetune.datasets_new.pipeline import OutputPaths, build_and_write
from kubetune.datasets_new.placeholders import Placeholders
from kubetune.datasets_new.recordline import RecordLineWriter, json_value
from kubetune.datasets_new.schema import (
    SchemaCompileError,
    Violation,
    _required_character,
    compile_predicate,
    compile_schema,
    load_bundled_schema,
)
from kubetune.datasets_new.structure import _STRUCTURE_SCHEMA

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "datasets_new"
IDENTITY = {"NAME": "Nova", "SPEC": "a fine-tuned assistant for Kubernetes operators"}


def benchmark_module() -> ModuleType:
    """benchmarks/dataset_build.py (not a package): its synthetic tree generator is the benchmark's input."""
    spec = importlib.util.spec_from_file_location("dataset_build_benchmark", REPO / "benchmarks" / "dataset_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


# sha256 of the outputs of the builder before the fast path (commit a2ef94b) for the benchmark's synthetic tree of
# 3,000 samples, NAME/SPEC set, eval split 0.2 with seed 1: the fast path must write the very same bytes.
SYNTHETIC_DIGESTS = {
    "train_data.jsonl": "c0d31fe948b2ee2fb74d0e55fb338e881fe83755835d694649a4c42b68fbcabb",
    "eval_data.jsonl": "e477391236c364b792e366dad61fe4ab24357fc698e404aac3bd83b8e9ff63cd",
    "stats.json": "5174fd9c0fa5c7045937e229a554649494be5eec282bdde32137062f10c814e4",
}


def test_synthetic_tree_builds_to_the_bytes_of_the_builder_before_the_fast_path(tmp_path: Path) -> None:
    structure, topics = benchmark_module().write_tree(tmp_path / "tree", 3000)
    out = OutputPaths.in_folder(tmp_path / "out")
    build_and_write(BuildOptions(structure, topics, placeholders={"NAME": "Nova", "SPEC": "a benchmark assistant"},
                                 eval_split=0.2, seed=1), out)
    assert len(out.train.read_text(encoding="utf-8").splitlines()) > 1024  # several write blocks
    for path in (out.train, out.eval, out.stats):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == SYNTHETIC_DIGESTS[path.name], path.name


def reference_train_lines(structure_path: Path, topics_dir: Path, values: dict[str, str]) -> list[str]:
    """train_data.jsonl of a valid tree as the builder before the fast path wrote it: each record a dict, in the
    contract's key order, through json.dumps(ensure_ascii=False); exact duplicates of the messages dropped."""
    structure = json.loads(structure_path.read_text(encoding="utf-8"))
    scale = DifficultyScale.from_schema(load_bundled_schema("difficulty_schema.json"))
    placeholders = Placeholders.from_values(values)
    seen: set[tuple[str, str]] = set()
    lines = []
    for category in sorted(structure["categories"], key=lambda entry: entry["name"]):
        for sub in sorted(category["subcategories"], key=lambda entry: entry["name"]):
            for content_type in sorted(sub["content_types"]):
                name = f"{category['name']}.{sub['name']}.{content_type}.json"
                path = topics_dir / category["name"] / sub["name"] / name
                if not path.exists():
                    continue
                for sample in json.loads(path.read_text(encoding="utf-8")):
                    question, think, output = (placeholders.substitute(sample[field])
                                               for field in ("question", "think", "output"))
                    assistant = f"<think>{think}</think>\n<output>{output}</output>"
                    if (question, assistant) in seen:
                        continue
                    seen.add((question, assistant))
                    base_tags = category["tags"] + sub["tags"]
                    lines.append(json.dumps({
                        "id": f"{category['name']}.{sub['name']}.{content_type}.{sample['id']}",
                        "category": category["name"], "subcategory": sub["name"], "content_type": content_type,
                        "tags": list(dict.fromkeys(base_tags + sample.get("tags", []))),
                        "difficulty": scale.normalise(sample["difficulty"], False).level,
                        "messages": [{"role": "user", "content": question},
                                     {"role": "assistant", "content": assistant}],
                        "metadata": {"source": f"{topics_dir.name}/{category['name']}/{sub['name']}/{name}",
                                     **sample.get("metadata", {})},
                    }, ensure_ascii=False))
    return lines


def test_bundled_dataset_builds_to_the_bytes_of_json_dumps_per_record(tmp_path: Path) -> None:
    out = OutputPaths.in_folder(tmp_path / "out")
    build_and_write(BuildOptions(BUNDLED / "structure.enriched.json", BUNDLED / "topics", placeholders=IDENTITY), out,
                    with_stats=False)
    expected = reference_train_lines(BUNDLED / "structure.enriched.json", BUNDLED / "topics", IDENTITY)
    assert len(expected) >= 400
    assert out.train.read_bytes() == "".join(line + "\n" for line in expected).encode("utf-8")


TRICKY_TEXTS = [
    "plain text", 'a "quote" and a back\\slash', "new\nline, tab\t, return\r", "controls \x00 \x1f \x7f",
    "café – naïve ✓ 漢字", "emoji 🙂", "lone surrogate \ud800", "</script> & <b>", "$${HOME}", "",
]


@pytest.mark.parametrize("text", TRICKY_TEXTS, ids=[ascii(text)[:24] for text in TRICKY_TEXTS])
def test_record_lines_are_the_bytes_json_dumps_writes(text: str) -> None:
    base_tags = ["base", text or "empty"]
    writer = RecordLineWriter("cat", "sub", "reasoning", base_tags, f"topics/cat/sub/{text}.json")
    metadata_cases: list[dict[str, Any] | None] = [
        None, {}, {"note": text, "n": 3, "big": 10**30, "f": 1.5, "e": 1e16, "zero": -0.0, "yes": True, "no": False}]
    for tags in (None, [], [text or "t", "base"], ["new", "new"]):
        for metadata in metadata_cases:
            line = writer.line(f"cat.sub.reasoning.{text}", 4, f"Q {text}", f"<think>{text}</think>", tags, metadata)
            assert line == json.dumps({
                "id": f"cat.sub.reasoning.{text}", "category": "cat", "subcategory": "sub",
                "content_type": "reasoning", "tags": list(dict.fromkeys(base_tags + (tags or []))), "difficulty": 4,
                "messages": [{"role": "user", "content": f"Q {text}"},
                             {"role": "assistant", "content": f"<think>{text}</think>"}],
                "metadata": {"source": f"topics/cat/sub/{text}.json", **(metadata or {})},
            }, ensure_ascii=False)


@pytest.mark.parametrize("value", ["", "x", "é\n", True, False, 0, -7, 2**70, 1.5, 1e300, -0.0, 3.0, float("nan"),
                                   float("inf"), None, [1, "a"], {"k": [True]}])
def test_json_value_matches_json_dumps(value: Any) -> None:
    assert json_value(value) == json.dumps(value, ensure_ascii=False)


# Values to put anywhere in a document: valid and invalid for every keyword our schemas use.
VALUE_POOL: list[Any] = [
    "", " \n", "ok", "who_are_you_01", "Bad Id", "x" * 81, "a</think>b", "use <output> tags", "I am ${NAME}",
    " padded", "easy", "3", "reasoning", "poetry", 0, 1, 3, 6, 7, -1, 2.5, 3.0, float("nan"), float("inf"), True, False,
    None, [], ["a"], [""], [" a"], ["a", "a"], ["reasoning"], ["reasoning", "reasoning"], ["poetry"], {}, {"k": 1},
    {"source": "s"}, {"bad key": 1}, {"k": None}, {"k": ""}, {"k": [1]}, {"k": True, "f": 1.5},
]


def single_edits(document: Any) -> list[Any]:
    """Every copy of `document` with one member or item removed, repeated, or replaced by each value of the pool."""
    edits: list[Any] = []

    def edit(path: tuple[Any, ...], value: Any) -> None:
        for key in (value if isinstance(value, dict) else range(len(value)) if isinstance(value, list) else ()):
            edit((*path, key), value[key])
        if not isinstance(value, (dict, list)):
            return
        keys = [*value, "extra"] if isinstance(value, dict) else list(range(len(value)))
        for key in keys:
            for replacement in [*VALUE_POOL, "delete", "repeat"]:
                edited = copy.deepcopy(document)
                target = edited
                for step in path:
                    target = target[step]
                if replacement == "delete" and (isinstance(target, list) or key in target):
                    del target[key]
                elif replacement == "repeat" and isinstance(target, list):
                    target.append(copy.deepcopy(target[key]))
                else:
                    target[key] = copy.deepcopy(replacement)
                edits.append(edited)

    edit((), document)
    return edits


def containers_in(value: Any) -> list[Any]:
    """`value` and every object or array nested in it."""
    if not isinstance(value, (dict, list)):
        return []
    found = [value]
    for item in (value.values() if isinstance(value, dict) else value):
        found += containers_in(item)
    return found


def mutated(document: Any, rng: random.Random) -> Any:
    """A deep copy of `document` with one to three random edits: a member removed, replaced, added, or an item
    replaced or repeated."""
    document = copy.deepcopy(document)
    for _ in range(rng.randint(1, 3)):
        containers = containers_in(document)
        if not containers:
            return document
        target = rng.choice(containers)
        if isinstance(target, dict):
            key = rng.choice([*target, "extra", "source"])
            if key in target and rng.random() < 0.3:
                del target[key]
            else:
                target[key] = copy.deepcopy(rng.choice(VALUE_POOL))
        elif target and rng.random() < 0.5:
            target.append(copy.deepcopy(rng.choice(target)))
        elif target:
            target[rng.randrange(len(target))] = copy.deepcopy(rng.choice(VALUE_POOL))
    return document


VALID_SAMPLE = {"id": "s1", "question": "Q?", "think": "T.", "output": "O.", "difficulty": 2,
                "tags": ["a", "b"], "metadata": {"author": "me", "reviewed": True, "score": 0.5}}
VALID_STRUCTURE = {"version": 1, "name": "n", "description": "d", "categories": [
    {"name": "math", "description": "d", "tags": ["m"], "subcategories": [
        {"name": "sums", "description": "d", "tags": [], "content_types": ["reasoning"]}]}]}


@pytest.mark.parametrize(("schema", "valid_document"), [
    (load_bundled_schema("schema_reasoning.json"), VALID_SAMPLE),
    (_STRUCTURE_SCHEMA, VALID_STRUCTURE),
    (load_bundled_schema("difficulty_schema.json"), 3),
], ids=["reasoning sample", "structure", "difficulty"])
def test_generated_predicate_accepts_exactly_what_the_checker_accepts(schema: dict[str, Any],
                                                                      valid_document: Any) -> None:
    is_valid, check = compile_predicate(schema), compile_schema(schema)
    rng = random.Random(20240611)
    candidates = [valid_document, *VALUE_POOL, *single_edits(valid_document),
                  *(mutated(valid_document, rng) for _ in range(2000))]
    verdicts = []
    for candidate in candidates:
        found: list[Violation] = []
        check(candidate, (), found)
        assert is_valid(candidate) == (not found), (candidate, found)
        verdicts.append(not found)
    assert any(verdicts) and not all(verdicts)  # both answers were exercised


def test_the_not_blank_shortcut_agrees_with_the_pattern_on_every_character() -> None:
    """The predicate writes `pattern: "\\S"` (after minLength 1) as `not text.isspace()`: both must call exactly the
    same characters whitespace, so every code point is tried, alone and next to a space."""
    non_blank = re.compile(r"\S")
    predicate = compile_predicate({"type": "string", "minLength": 1, "pattern": r"\S"})
    disagreeing = [code for code in range(sys.maxunicode + 1)
                   if (non_blank.search(chr(code)) is not None) != (not chr(code).isspace())]
    assert disagreeing == []
    assert predicate("x") and predicate(" \u3000x") and not predicate(" \t\u2028\u3000") and not predicate("")


def test_predicate_compiler_refuses_keywords_it_does_not_implement() -> None:
    with pytest.raises(SchemaCompileError, match="unsupported schema keyword"):
        compile_predicate({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}})


@pytest.mark.parametrize("pattern, required", [
    ("</(think|output)>", "<"), ("<x+", "<"), ("ab?", "a"), ("(a|b)c", None), ("a|b", None), ("<a|b>", None),
    ("a*b", None), ("a?b", None), ("a{0,2}b", None), (r"\S", None), ("^<", None), (".x", None), ("", None),
])
def test_a_forbidden_pattern_is_pre_checked_only_by_a_character_every_match_holds(pattern: str,
                                                                                   required: str | None) -> None:
    assert _required_character(pattern) == required


@pytest.mark.parametrize("pattern", ["</(think|output)>", "<x+", "ab?", "a|b", "a*b", "(a|<)c"])
def test_a_not_pattern_predicate_agrees_with_the_regex_on_random_text(pattern: str) -> None:
    forbidden = re.compile(pattern)
    predicate = compile_predicate({"type": "string", "not": {"pattern": pattern}})
    generator = random.Random(pattern)
    texts = ["", "</think>", "</output>", "x</outputs>", *("".join(generator.choice("ab<x/c>thinkoput")
                                                                     for _ in range(generator.randrange(12)))
                                                          for _ in range(3000))]
    disagreeing = [text for text in texts if predicate(text) != (forbidden.search(text) is None)]
    assert disagreeing == []
