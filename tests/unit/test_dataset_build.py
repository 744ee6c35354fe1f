"""Building train_data.jsonl from a topics tree: record shape, normalisation, placeholders, duplicates, eval split,
deterministic bytes, statistics, the schemas, and the CLIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kubetune.datasets_new.builder import BuildOptions, build_dataset, eval_fraction
from kubetune.datasets_new.create_dataset_by_structure import scaffold
from kubetune.datasets_new.errors import IssueCollector
from kubetune.datasets_new.pipeline import OutputPaths, build_and_write
from kubetune.datasets_new.schema import Violation, compile_schema, load_bundled_schema
from kubetune.datasets_new.scripts.normalizeJson import to_json_string
from kubetune.datasets_new.stats import percentiles
from kubetune.datasets_new.structure import load_structure

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def write_tree(root: Path, topics: dict[tuple[str, str], list[Any]]) -> BuildOptions:
    """A structure with one reasoning subcategory per key, and those samples in its topic file."""
    categories: dict[str, list[dict[str, Any]]] = {}
    for (category, subcategory), samples in topics.items():
        categories.setdefault(category, []).append({"name": subcategory, "description": f"{subcategory} samples",
                                                    "tags": [subcategory], "content_types": ["reasoning"]})
        path = root / "topics" / category / subcategory / f"{category}.{subcategory}.reasoning.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(samples, indent=2), encoding="utf-8")
    structure = {"version": 1, "name": "test", "description": "test tree", "categories": [
        {"name": name, "description": f"{name} things", "tags": [name, "shared"], "subcategories": subs}
        for name, subs in categories.items()]}
    (root / "structure.enriched.json").write_text(json.dumps(structure, indent=2), encoding="utf-8")
    return BuildOptions(root / "structure.enriched.json", root / "topics",
                        placeholders={"NAME": "Nova", "SPEC": "a fine-tuned assistant for tests"})


def sample(sample_id: str, difficulty: Any = 2, **fields: Any) -> dict[str, Any]:
    return {"id": sample_id, "question": f"Question {sample_id}?", "think": f"Think about {sample_id}.",
            "output": f"Answer {sample_id}.", "difficulty": difficulty, **fields}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_sample_becomes_the_contract_record(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("identity", "who_are_you"): [
        sample("0007", question="Who are you?", think="State my name.", output="I am ${NAME}, ${SPEC}.",
               difficulty=1, tags=["self", "intro"], metadata={"author": "kubetune", "reviewed": True})]})
    out = OutputPaths.in_folder(tmp_path / "out")
    build_and_write(options, out)
    assert out.train.read_text(encoding="utf-8") == json.dumps({
        "id": "identity.who_are_you.reasoning.0007",
        "category": "identity", "subcategory": "who_are_you", "content_type": "reasoning",
        "tags": ["identity", "shared", "who_are_you", "self", "intro"], "difficulty": 1,
        "messages": [{"role": "user", "content": "Who are you?"},
                     {"role": "assistant", "content": "<think>State my name.</think>\n<output>I am Nova, a fine-tuned "
                                                      "assistant for tests.</output>"}],
        "metadata": {"source": "topics/identity/who_are_you/identity.who_are_you.reasoning.json",
                     "author": "kubetune", "reviewed": True}}, ensure_ascii=False) + "\n"


def test_difficulty_spellings_are_normalised_and_counted(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("math", "sums"): [
        sample("a", 3), sample("b", "4"), sample("c", " 5 "), sample("d", 2.5), sample("e", 6.0),
        sample("f", "easy"), sample("g", "Expert"), sample("h", "1.4")]})
    result = build_dataset(options)
    assert [json.loads(record.line)["difficulty"] for record in result.train] == [3, 4, 5, 3, 6, 2, 6, 1]
    assert result.report.normalisations == {"string": 3, "float": 2, "word": 2}


def test_out_of_range_difficulty_is_clamped_and_counted_only_when_asked(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("math", "sums"): [sample("a", 0), sample("b", 9), sample("c", "12")]})
    clamped = build_dataset(BuildOptions(**{**options.__dict__, "clamp_difficulty": True}))
    assert [record.difficulty for record in clamped.train] == [1, 6, 6]
    assert clamped.report.normalisations == {"clamped": 3}


def test_placeholders_are_substituted_and_dollar_dollar_brace_escapes(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("identity", "who"): [
        sample("a", question="What is ${NAME}?", output="${NAME} is ${SPEC}; in bash write $${HOME}.")]})
    result = build_dataset(BuildOptions(**{**options.__dict__, "placeholders": {
        "NAME": "Nova", "SPEC": "a helper", "TEAM": "unused"}}))
    record = result.train[0]
    assert record.user == "What is Nova?"
    assert record.assistant.endswith("<output>Nova is a helper; in bash write ${HOME}.</output>")
    assert result.report.samples_with_placeholders == 1


def test_exact_duplicates_are_dropped_keeping_the_first(tmp_path: Path) -> None:
    same = {"question": "Q?", "think": "T.", "output": "O."}
    options = write_tree(tmp_path, {("a", "one"): [sample("x", **same), sample("y")],
                                    ("b", "two"): [sample("z", 5, **same)]})
    result = build_dataset(options)
    assert [record.id for record in result.train] == ["a.one.reasoning.x", "a.one.reasoning.y"]
    assert result.report.duplicates_dropped == 1
    assert result.report.duplicate_examples == [{"dropped": "b.two.reasoning.z", "kept": "a.one.reasoning.x"}]


def test_order_is_category_subcategory_then_file_order_whatever_the_structure_order(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("zeta", "b"): [sample("2"), sample("1")], ("alpha", "z"): [sample("3")],
                                    ("alpha", "a"): [sample("9"), sample("4")]})
    ids = [record.id for record in build_dataset(options).train]
    assert ids == ["alpha.a.reasoning.9", "alpha.a.reasoning.4", "alpha.z.reasoning.3", "zeta.b.reasoning.2",
                   "zeta.b.reasoning.1"]


def test_output_bytes_are_identical_across_builds(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("c", "s"): [sample(f"n{n}", (n % 6) + 1, output=f"caf\u00e9 {n}")
                                                 for n in range(50)]})
    first = build_and_write(options, OutputPaths.in_folder(tmp_path / "one"), with_stats=True)
    second = build_and_write(options, OutputPaths.in_folder(tmp_path / "two"), with_stats=True)
    for name in ("train_data.jsonl", "stats.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert "café" in (tmp_path / "one" / "train_data.jsonl").read_text(encoding="utf-8")
    assert first.written == (tmp_path / "one" / "train_data.jsonl", tmp_path / "one" / "stats.json")
    assert second.stats == first.stats


def test_eval_split_is_stable_when_unrelated_samples_are_added(tmp_path: Path) -> None:
    samples = [sample(f"s{n:03d}") for n in range(400)]
    small = write_tree(tmp_path / "small", {("c", "s"): samples})
    large = write_tree(tmp_path / "large", {("c", "s"): samples + [sample(f"extra{n}") for n in range(300)],
                                            ("d", "t"): [sample(f"t{n}") for n in range(100)]})
    split = {"eval_split": 0.2, "seed": 7}
    before = build_dataset(BuildOptions(**{**small.__dict__, **split}))
    after = build_dataset(BuildOptions(**{**large.__dict__, **split}))
    eval_before = {record.id for record in before.eval}
    assert eval_before == {record.id for record in after.eval if record.id.startswith("c.s.reasoning.s")}
    assert 0.12 < len(before.eval) / 400 < 0.28  # the hash spreads evenly
    reseeded = build_dataset(BuildOptions(**{**small.__dict__, "eval_split": 0.2, "seed": 8}))
    assert {record.id for record in reseeded.eval} != eval_before
    assert all((eval_fraction(record.id, 7) < 0.2) for record in before.eval)


def test_eval_split_writes_eval_data_and_counts_it(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("c", "s"): [sample(f"s{n}") for n in range(100)]})
    out = OutputPaths.in_folder(tmp_path / "out")
    outcome = build_and_write(BuildOptions(**{**options.__dict__, "eval_split": 0.3}), out)
    train, evaluation = lines(out.train), lines(out.eval)
    assert len(train) + len(evaluation) == 100 and evaluation
    assert not {r["id"] for r in train} & {r["id"] for r in evaluation}
    assert outcome.stats is not None and outcome.stats["samples"]["eval"] == len(evaluation)
    assert outcome.stats["categories"]["c"]["eval"] == len(evaluation)


def test_category_filter_builds_only_the_named_categories(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("a", "x"): [sample("1")], ("b", "y"): [sample("2")], ("c", "z"): [sample("3")]})
    result = build_dataset(BuildOptions(**{**options.__dict__, "categories": ("c", "a")}))
    assert [record.category for record in result.train] == ["a", "c"]


def test_stats_report_counts_and_token_percentiles(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("a", "x"): [sample("1", 1), sample("2", "hard"), sample("3", 2.0)],
                                    ("a", "y"): [], ("b", "z"): [sample("4", 6), sample("5", 6,
                                                                                          question="Question 4?",
                                                                                          think="Think about 4.",
                                                                                          output="Answer 4.")]})
    structure_path = options.structure_path
    structure = json.loads(structure_path.read_text())
    structure["categories"][0]["subcategories"].append(
        {"name": "w", "description": "declared, no file", "tags": [], "content_types": ["reasoning"]})
    structure_path.write_text(json.dumps(structure))
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    write_word_level_tokenizer(tokenizer / "tokenizer.json")
    outcome = build_and_write(options, OutputPaths.in_folder(tmp_path / "out"), tokenizer_path=tokenizer)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats == outcome.stats
    assert stats["samples"] == {"train": 4, "eval": 0, "total": 4, "read": 5}
    assert stats["categories"] == {"a": {"samples": 3, "subcategories": {"x": 3}, "eval": 0},
                                   "b": {"samples": 1, "subcategories": {"z": 1}, "eval": 0}}
    assert stats["difficulty"] == {"1": 1, "2": 1, "3": 0, "4": 1, "5": 0, "6": 1}
    assert stats["normalisations"] == {"string": 0, "float": 1, "word": 1, "clamped": 0}
    assert stats["duplicates_dropped"] == 1
    assert stats["empty_topic_files"] == [f"{options.topics_dir.as_posix()}/a/y/a.y.reasoning.json"]
    assert stats["missing_topic_files"] == [f"{options.topics_dir.as_posix()}/a/w/a.w.reasoning.json"]
    # Whitespace word-level tokenizer: "Question 1?" is 2 tokens; the assistant turn
    # "<think>Think about 1.</think>\n<output>Answer 1.</output>" is 5.
    assert stats["tokens"]["user"] == {"p50": 2, "p90": 2, "p99": 2, "max": 2, "mean": 2.0}
    assert stats["tokens"]["assistant"]["max"] == 5
    assert stats["tokens"]["total"]["max"] == 7 and stats["tokens"]["sum"] == 28


def write_word_level_tokenizer(path: Path) -> None:
    """A real `tokenizers` WordLevel tokenizer splitting on whitespace (no download needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path))


def test_percentiles_use_nearest_rank() -> None:
    assert percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p99": 99, "max": 100, "mean": 50.5}
    assert percentiles([7]) == {"p50": 7, "p90": 7, "p99": 7, "max": 7, "mean": 7.0}
    assert percentiles([])["max"] == 0


def test_bundled_schemas_are_valid_json_schema_and_agree_with_our_validator() -> None:
    reasoning, difficulty = load_bundled_schema("schema_reasoning.json"), load_bundled_schema("difficulty_schema.json")
    jsonschema.Draft202012Validator.check_schema(reasoning)
    jsonschema.Draft202012Validator.check_schema(difficulty)
    ours, reference = compile_schema(reasoning), jsonschema.Draft202012Validator(reasoning)
    candidates: list[Any] = [
        sample("ok"), sample("ok", tags=["a"], metadata={"k": 1, "b": False, "f": 1.5}), sample("ok", 2.5),
        sample("ok", "easy"), sample("Bad Id"), sample("x", True), sample("x", None), sample("x", question=""),
        sample("x", think=" \n"), sample("x", output="a</think>b"), sample("ok", output="use <output> tags"), sample("x", tags="a"), sample("x", tags=[""]),
        sample("x", tags=[" padded"]), sample("x", metadata={"source": "s"}), sample("x", metadata={"k": None}),
        sample("x", metadata={"k": ""}), sample("x", metadata={"bad key": 1}), sample("x", extra=1),
        {"id": "x"}, [], "text", 3, sample("x" * 81), sample("x", 3.0),
    ]
    for candidate in candidates:
        found: list[Violation] = []
        ours(candidate, (), found)
        assert (not found) == reference.is_valid(candidate), (candidate, found)
    levels = compile_schema(difficulty)
    for value, valid in ((1, True), (6, True), (0, False), (7, False), (3.0, True), ("3", False), (True, False)):
        found = []
        levels(value, (), found)
        assert (not found) == valid == jsonschema.Draft202012Validator(difficulty).is_valid(value), value


def test_schema_compiler_refuses_keywords_it_does_not_implement() -> None:
    with pytest.raises(ValueError, match="unsupported schema keyword"):
        compile_schema({"type": "object", "patternProperties": {"^x": {"type": "string"}}})


def test_scaffold_creates_missing_topic_files_and_never_overwrites(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("a", "x"): [sample("1")]})
    doc = json.loads(options.structure_path.read_text())
    doc["categories"].append({"name": "new", "description": "d", "tags": [], "subcategories": [
        {"name": "sub", "description": "d", "tags": [], "content_types": ["reasoning"]}]})
    options.structure_path.write_text(json.dumps(doc))
    structure = load_structure(options.structure_path, "structure.enriched.json", IssueCollector())
    assert structure is not None
    existing = options.topics_dir / "a" / "x" / "a.x.reasoning.json"
    before = existing.read_bytes()
    assert scaffold(structure, options.topics_dir, dry_run=True) == [options.topics_dir / "new/sub/new.sub.reasoning.json"]
    assert not (options.topics_dir / "new").exists()
    assert scaffold(structure, options.topics_dir) == [options.topics_dir / "new/sub/new.sub.reasoning.json"]
    assert (options.topics_dir / "new/sub/new.sub.reasoning.json").read_text() == "[]\n"
    assert scaffold(structure, options.topics_dir) == []
    assert existing.read_bytes() == before
    build_dataset(options)  # the scaffolded tree builds


def test_normalize_json_turns_pasted_text_into_a_json_string() -> None:
    text = 'Line "one"\r\n\tindented \\ back\n\nI am ${NAME} – ok\n\n'
    literal = to_json_string(text)
    assert literal == '"Line \\"one\\"\\n\\tindented \\\\ back\\n\\nI am ${NAME} – ok"'
    assert json.loads(literal) == 'Line "one"\n\tindented \\ back\n\nI am ${NAME} – ok'


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, *args], capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_cli_script_builds_with_the_original_flags(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("identity", "who"): [sample("1", output="I am ${NAME}.")],
                                    ("math", "sums"): [sample("2", "medium")]})
    out = tmp_path / "out" / "train_data.jsonl"
    done = run_cli("datasets_new/build_train_jsonl.py", "--structure", str(options.structure_path),
                   "--topics-dir", str(options.topics_dir), "--output", str(out), "--name", "Nova",
                   "--placeholder", "SPEC=unused", "--eval-split", "0.5", "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert "samples: 2 written" in done.stderr and "normalised difficulty: word 1" in done.stderr
    written = lines(out) + lines(out.with_name("eval_data.jsonl"))
    assert sorted(record["id"] for record in written) == ["identity.who.reasoning.1", "math.sums.reasoning.2"]
    assert json.loads(out.with_name("stats.json").read_text())["samples"]["total"] == 2
    no_stats = tmp_path / "plain" / "train.jsonl"
    done = run_cli("-m", "kubetune.datasets_new.build_train_jsonl", "--structure", str(options.structure_path),
                   "--topics-dir", str(options.topics_dir), "--output", str(no_stats), "--name", "Nova", "--no-stats")
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in no_stats.parent.iterdir()) == ["train.jsonl"]
    assert lines(no_stats)[0]["messages"][1]["content"].endswith("<output>I am Nova.</output>")


def test_cli_exits_2_with_located_errors_and_writes_nothing(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("identity", "who"): [sample("1", output="I am ${NICK}.")],
                                    ("math", "sums"): [sample("2", 8)]})
    out = tmp_path / "out" / "train_data.jsonl"
    done = run_cli("datasets_new/build_train_jsonl.py", "--structure", str(options.structure_path),
                   "--topics-dir", str(options.topics_dir), "--output", str(out))
    assert done.returncode == 2
    assert f"{options.topics_dir.as_posix()}/identity/who/identity.who.reasoning.json:6:5:" in done.stderr
    assert "unknown placeholder ${NICK}" in done.stderr and "hint: known placeholders: ${NAME}, ${SPEC}" in done.stderr
    assert "math.sums.reasoning.json:" in done.stderr and "8 is outside 1-6" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("2 dataset error(s)")
    assert not out.parent.exists()
    missing_tokenizer = run_cli("datasets_new/build_train_jsonl.py", "--structure", str(options.structure_path),
                                "--topics-dir", str(options.topics_dir), "--output", str(out), "--name", "N",
                                "--tokenizer-path", str(tmp_path / "nope"))
    assert missing_tokenizer.returncode == 2 and "no tokenizer.json" in missing_tokenizer.stderr


def test_scaffold_and_normalize_clis(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("a", "x"): [sample("1")]})
    fresh = tmp_path / "fresh"
    first = run_cli("datasets_new/create_dataset_by_structure.py", "--structure", str(options.structure_path),
                    "--topics-dir", str(fresh))
    assert first.returncode == 0 and first.stdout == f"created {fresh.as_posix()}/a/x/a.x.reasoning.json\n"
    again = run_cli("datasets_new/create_dataset_by_structure.py", "--structure", str(options.structure_path),
                    "--topics-dir", str(fresh))
    assert again.returncode == 0 and again.stdout == "" and "created 0 topic file(s)" in again.stderr
    pasted = tmp_path / "pasted.txt"
    pasted.write_text("two\nlines\n", encoding="utf-8")
    normalized = run_cli("datasets_new/scripts/normalizeJson.py", str(pasted))
    assert normalized.returncode == 0 and normalized.stdout == '"two\\nlines"\n'


def test_the_seed_quickstart_builds_the_bundled_dataset_on_the_documented_defaults(tmp_path: Path) -> None:
    # The seed's command as written (identity placeholders swapped automatically), writing into tmp_path.
    out = tmp_path / "train_data.jsonl"
    done = run_cli("datasets_new/build_train_jsonl.py", "--structure", "datasets_new/structure.enriched.json",
                   "--topics-dir", "datasets_new/topics", "--output", str(out))
    assert done.returncode == 0, done.stderr
    identity = [record for record in lines(out) if record["category"] == "identity"]
    answers = " ".join(record["messages"][1]["content"] for record in identity)
    assert "Nova" in answers and "an assistant for fine-tuning language models on Kubernetes" in answers
    assert "${" not in answers


def test_placeholder_flags_override_the_defaults_and_each_other(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("identity", "who"): [sample("1", output="I am ${NAME}, ${SPEC}.")]})
    out = tmp_path / "out.jsonl"
    done = run_cli("datasets_new/build_train_jsonl.py", "--structure", str(options.structure_path),
                   "--topics-dir", str(options.topics_dir), "--output", str(out), "--no-stats",
                   "--name", "Ada", "--placeholder", "SPEC=a tester")
    assert done.returncode == 0, done.stderr
    assert lines(out)[0]["messages"][1]["content"].endswith("<output>I am Ada, a tester.</output>")


def test_scaffolding_never_writes_through_a_symlink_out_of_the_tree_nor_raises(tmp_path: Path) -> None:
    options = write_tree(tmp_path, {("a", "x"): [sample("1")]})
    fresh, outside = tmp_path / "fresh", tmp_path / "outside"
    fresh.mkdir()
    outside.mkdir()
    (fresh / "a").symlink_to(outside)
    linked = run_cli("datasets_new/create_dataset_by_structure.py", "--structure", str(options.structure_path),
                     "--topics-dir", str(fresh))
    assert linked.returncode == 2 and "symlink leads outside the topics folder" in linked.stderr
    assert list(outside.iterdir()) == []
    under_a_file = run_cli("datasets_new/create_dataset_by_structure.py", "--structure", str(options.structure_path),
                           "--topics-dir", str(options.structure_path / "topics"))
    assert under_a_file.returncode == 2 and "cannot create: Not a directory" in under_a_file.stderr
    assert "Traceback" not in linked.stderr + under_a_file.stderr


def test_normalize_refuses_a_named_pipe_instead_of_waiting(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    done = run_cli("datasets_new/scripts/normalizeJson.py", str(pipe))
    assert done.returncode == 2 and "is a named pipe (FIFO), not a regular file" in done.stderr
