"""The docs are judged by the real thing: every command, manifest, path and setting that README.md, docs/*.md,
datasets_new/README.md and the chart's README show is one the code accepts, so what a user copies works.

Each case is named by the file and line that shows it."""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import importlib
import importlib.util
import json
import re
import typing
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from kubetune import cli
from kubetune.api.crd import render as render_crd
from kubetune.api.manifest_yaml import load_documents
from kubetune.api.types import FineTuneRunSpec
from kubetune.api.validate import InvalidManifest, load_runs, parse_run
from kubetune.datasets_new import build_train_jsonl
from tests.unit.docs_markdown import (
    DOCS,
    ROOT,
    Snippet,
    code_spans,
    command_lines,
    fenced_blocks,
    heading_anchors,
    links,
    prose,
    split_commands,
)
from tests.unit.docs_parsers import ScriptParser, lenient, parse_failure, parse_with_module_main

KUBETUNE = {"kubetune", ".venv/bin/kubetune"}
PYTHON = {"python", "python3", ".venv/bin/python", ".venv/bin/python3"}
# What a placeholder in a command stands for, so that the real parser judges the rest (by the flag before it, else
# by itself). A placeholder the docs start using must be added here with a value the command really takes.
PLACEHOLDERS_AFTER_FLAG = {
    ("--shapes", "S"): "qwen2.5-1.5b", ("--workloads", "W"): "chat",
    ("--subcategory", "S"): "billing", ("--category", "C"): "support",
}
PLACEHOLDERS = {
    "DIR_OR_URI": "store", "STAGE": "train", "MANIFEST": "run.yaml", "FILE": "chats.jsonl", "FORMAT": "sharegpt",
    "DIR": "tree", "N": "3", "PART=KEY": "messages=dialog", "MODEL_DIR": "model", "OUT_DIR": "out",
    "FILE.gguf": "model.gguf", "MODEL.gguf": "model.gguf", "<stage>": "train",
}
# Commands that read files and print, nothing else: run for real, as the docs show them.
RUN_FOR_REAL = {"validate", "crd"}


# --- what the docs show ---------------------------------------------------------------------------------------------

def block_commands() -> Iterator[tuple[Snippet, list[str]]]:
    """Every simple command of every command line in a fenced block, with where it is shown."""
    for doc in DOCS:
        for block in fenced_blocks(doc):
            for line in command_lines(block):
                try:
                    commands = split_commands(line.text)
                except ValueError as error:  # an unbalanced quote: the shell cannot read the line either
                    commands = [["<unreadable>", str(error)]]
                for argv in commands:
                    yield line, argv


def our_invocation(argv: list[str]) -> tuple[str, list[str]] | None:
    """('kubetune', args) or ('python', args) where the command runs ours: its first word, past variable
    assignments and a `flock [-x] FILE` wrapper."""
    words = list(argv)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words.pop(0)
    if words[:1] == ["flock"]:
        words = words[1:]
        while words and words[0].startswith("-"):
            words.pop(0)
        words = words[1:]  # the lock file
    if words[:1] and words[0] in KUBETUNE:
        return "kubetune", words[1:]
    if words[:1] and words[0] in PYTHON:
        return "python", [arg for arg in words[1:] if arg not in ("-P", "-u", "-O")]
    return None


def substituted(args: list[str]) -> list[list[str]]:
    """The arguments with placeholders filled in, brackets of optional parts and a closing '…' dropped; `<a|b|c>`
    gives one command per alternative."""
    variants: list[list[str]] = [[]]
    for index, raw in enumerate(args):
        word = raw.strip("[]")
        previous = args[index - 1].strip("[]") if index else ""
        if not word or word in ("…", "...") and index == len(args) - 1 and not previous.startswith("-"):
            continue  # "and so on", not a value such as --spec "…"
        value = PLACEHOLDERS_AFTER_FLAG.get((previous, word)) or PLACEHOLDERS.get(word)
        if value is None and re.fullmatch(r"<[\w-]+(\|[\w-]+)+>", word):
            variants = [[*variant, choice] for variant in variants for choice in word[1:-1].split("|")]
            continue
        variants = [[*variant, value or word] for variant in variants]
    return variants


def kubetune_commands() -> list[tuple[str, list[str]]]:
    return [(line.where, args) for line, argv in block_commands()
            if (found := our_invocation(argv)) and found[0] == "kubetune" for args in substituted(found[1])]


def kubetune_spans() -> list[tuple[str, list[str]]]:
    """Inline mentions such as `kubetune run MANIFEST --to-stage dataset`: shown in prose, often without the
    arguments a full command needs."""
    return [(span.where, args) for doc in DOCS for span in code_spans(doc)
            if span.text.split(" ")[0] in KUBETUNE and " " in span.text
            for args in substituted(span.text.split()[1:])]


def python_commands() -> list[tuple[str, list[str], bool]]:
    """(where, arguments after `python`, whether it is a mention in prose rather than a whole command line)."""
    found = [(line.where, invocation[1], False) for line, argv in block_commands()
             if (invocation := our_invocation(argv)) and invocation[0] == "python"]
    for doc in DOCS:
        for span in code_spans(doc):
            words = span.text.split()
            invocation = our_invocation(words)
            if invocation and invocation[0] == "python":
                found.append((span.where, invocation[1], True))
            elif re.match(r"benchmarks/\w+\.py --", span.text):  # `benchmarks/train_scaling.py --shape … --gpus 1 2`
                found.append((span.where, words, True))
    return [(where, args, mention) for where, raw, mention in found if ours(raw) for args in substituted(raw)]


def ours(args: list[str]) -> bool:
    """A module of ours (`-m kubetune…`) or a script of the repository; not pytest, not `-c`."""
    return bool(args) and (args[0] == "-m" and args[1:2] != [] and args[1].startswith("kubetune")
                           or not args[0].startswith("-"))


def yaml_blocks() -> list[tuple[str, str]]:
    return [(f"{block.doc.relative_to(ROOT)}:{block.line}", block.text)
            for doc in DOCS for block in fenced_blocks(doc) if block.language in ("yaml", "yml")]


def cases(found: list[tuple[Any, ...]]) -> list[Any]:
    """Test ids that name the file and line first, then what is shown there (shortened)."""
    def shown(value: Any) -> str:
        return " ".join(value) if isinstance(value, list) else "" if isinstance(value, (Path, bool)) else str(value)
    return [pytest.param(*case, id=" ".join(filter(None, map(shown, case)))[:100].replace("\n", " ")) for case in found]


# --- 1. kubetune command lines ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("where", "args"), cases(kubetune_commands()))
def test_every_kubetune_command_in_a_code_block_parses_with_the_real_cli(where: str, args: list[str]) -> None:
    assert parse_failure(cli.build_parser(), args) is None, f"{where}: kubetune {' '.join(args)}"


@pytest.mark.parametrize(("where", "args"), cases(kubetune_spans()))
def test_every_kubetune_command_named_in_prose_uses_real_subcommands_flags_and_values(where: str, args: list[str]) -> None:
    assert parse_failure(lenient(cli.build_parser()), args) is None, f"{where}: kubetune {' '.join(args)}"


def runnable_commands() -> list[tuple[str, list[str]]]:
    return [(where, args) for where, args in kubetune_commands() + kubetune_spans()
            if args and (args[0] in RUN_FOR_REAL or "--help" in args or "-h" in args)
            and not parse_failure(cli.build_parser(), args)]


@pytest.mark.parametrize(("where", "args"), cases(runnable_commands()))
def test_every_read_only_kubetune_command_the_docs_show_succeeds_when_run(
        where: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`kubetune validate` on the repository's files, `kubetune crd` into a scratch copy of the folders it writes, and
    every `--help`: exit 0, and `crd` writes exactly the committed CRD files."""
    outputs = [Path(args[index + 1]) for index, arg in enumerate(args[:-1]) if arg in ("-o", "--output")]
    if outputs:
        for output in outputs:
            (tmp_path / output).parent.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(tmp_path)
    else:
        monkeypatch.chdir(ROOT)
    expanded = [match for arg in args for match in (sorted(glob.glob(arg)) if "*" in arg else [arg])]
    try:
        code: object = cli.main(expanded)
    except SystemExit as exit_:  # --help
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 0, f"{where}: kubetune {' '.join(args)} exited {code}: {captured.err.strip()}"
    for output in outputs:
        assert (tmp_path / output).read_text() == (ROOT / output).read_text(), f"{where}: {output} is not the generated CRD"
    if args == ["crd"]:
        assert captured.out == render_crd()


def dataset_conversions() -> list[tuple[str, list[str]]]:
    return [(where, args) for where, args in kubetune_commands() if args[:2] == ["dataset", "convert"]]


ANSWER = "<think>The user greets me.</think>\n<output>Hello! What can I help with?</output>"


def one_conversation(data_format: str, keys: dict[str, str]) -> dict[str, Any]:
    """A record of the format holding one question and one reasoning answer, under the keys `--field` names."""
    def key(part: str, default: str) -> str:
        return keys.get(part, default)
    if data_format == "alpaca":
        return {key("instruction", "instruction"): "Hi?", key("input", "input"): "", key("output", "output"): ANSWER}
    role, content = (key("role", "from"), key("content", "value")) if data_format == "sharegpt" \
        else (key("role", "role"), key("content", "content"))
    user, assistant = ("human", "gpt") if data_format == "sharegpt" else ("user", "assistant")
    turns = [{role: user, content: "Hi?"}, {role: assistant, content: ANSWER}]
    return {key("messages", "conversations" if data_format == "sharegpt" else "messages"): turns}


def write_data_file(path: Path, record: dict[str, Any]) -> None:
    if path.suffix == ".parquet":
        import pyarrow as pa  # a job dependency: only this example needs it here
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist([record]), path)
    elif path.suffix == ".json":
        path.write_text(json.dumps([record]))
    else:
        path.write_text(json.dumps(record) + "\n")


@pytest.mark.parametrize(("where", "args"), cases(dataset_conversions()))
def test_every_dataset_convert_the_docs_show_writes_the_tree_they_describe(
        where: str, args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Run on a one-conversation file of the format shown (its keys renamed as the `--field`s say): exit 0, and the
    tree datasets_new/README.md describes, `<out>/structure.enriched.json` and
    `<out>/topics/<category>/<subcategory>/<category>.<subcategory>.reasoning.json`."""
    shown = cli.build_parser().parse_args(args)
    monkeypatch.chdir(tmp_path)
    write_data_file(Path(shown.input), one_conversation(shown.format, dict(f.split("=", 1) for f in shown.field)))
    code = cli.main(args)
    assert code == 0, f"{where}: kubetune {' '.join(args)} exited {code}: {capsys.readouterr().err.strip()}"
    topic = f"topics/{shown.category}/{shown.subcategory}/{shown.category}.{shown.subcategory}.reasoning.json"
    assert (shown.out / "structure.enriched.json").is_file() and (shown.out / topic).is_file(), where
    assert len(json.loads((shown.out / topic).read_text())) == 1


def test_the_readme_command_list_shows_every_kubetune_subcommand() -> None:
    shown = {args[0] for where, args in kubetune_commands() if where.startswith("README.md:")}
    subcommands = next(action.choices for action in cli.build_parser()._actions
                       if isinstance(action, argparse._SubParsersAction))
    assert sorted(set(subcommands) - shown) == []


def test_the_docs_show_kubetune_commands_and_run_some_of_them() -> None:
    assert len(kubetune_commands()) >= 10 and len(runnable_commands()) >= 3


def helm_settings() -> list[tuple[str, str]]:
    """(where, value path) of every `--set PATH=VALUE` in a helm command the docs show, in a block or inline."""
    commands = [(line.where, argv) for line, argv in block_commands()]
    commands += [(span.where, split_commands(span.text)[0]) for doc in DOCS for span in code_spans(doc)
                 if "--set" in span.text and span.text.startswith(("helm ", "--set "))]
    return [(where, argv[index + 1].split("=", 1)[0]) for where, argv in commands
            if argv[0] in ("helm", "--set") for index, word in enumerate(argv[:-1]) if word == "--set"]


@pytest.mark.parametrize(("where", "path"), cases(helm_settings()))
def test_every_helm_set_the_docs_show_names_a_chart_value(where: str, path: str) -> None:
    values: Any = yaml.safe_load((ROOT / "charts" / "kubetune" / "values.yaml").read_text(encoding="utf-8"))
    for key in path.split("."):
        assert isinstance(values, dict) and key in values, f"{where}: the chart has no value {path}"
        values = values[key]


# --- 2. manifests ---------------------------------------------------------------------------------------------------

MINIMAL_RUN = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": "docs-example"}}


@pytest.mark.parametrize(("where", "text"), cases(yaml_blocks()))
def test_every_yaml_block_is_a_valid_finetunerun_or_a_spec_fragment_of_one(where: str, text: str) -> None:
    """A block with `apiVersion: kubetune.dev/…` is a whole manifest; one that starts at `spec:` is a fragment, judged
    merged into the minimal manifest (which is valid with `spec: {}`)."""
    for document in load_documents(text):
        assert isinstance(document, dict), f"{where}: not a YAML map"
        if str(document.get("apiVersion", "")).startswith("kubetune.dev/"):
            manifest = document
        else:
            assert set(document) == {"spec"}, f"{where}: neither a FineTuneRun nor a `spec:` fragment of one"
            manifest = {**MINIMAL_RUN, **document}
        try:
            parse_run(manifest, source=where)
        except InvalidManifest as error:
            pytest.fail(f"{where}: " + "; ".join(map(str, error.errors)))


def referenced_examples() -> list[str]:
    names = {match for doc in DOCS for match in re.findall(r"examples/[\w.-]+\.ya?ml", doc.read_text(encoding="utf-8"))}
    return sorted(names)


@pytest.mark.parametrize("example", referenced_examples())
def test_every_example_manifest_the_docs_name_exists_and_validates(example: str) -> None:
    # As `kubetune validate --local` reads it (the README's command): ./ paths are the manifest folder's.
    assert load_runs(ROOT / example, relative_paths=True)


def test_the_readme_shows_validation_errors_as_kubetune_validate_prints_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's `bad.yaml: spec.…: …` lines, from a manifest with those two mistakes: exit 1, both printed."""
    shown = re.findall(r"(?m)^bad\.yaml: spec\..+$", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert shown, "the README's example errors are gone: update this test"
    (tmp_path / "bad.yaml").write_text("apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneRun\nmetadata: {name: bad}\n"
                                       "spec:\n  training:\n    method: lora\n    quantization: {type: nf4}\n"
                                       "    lora: {r: 0}\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["validate", "bad.yaml"]) == 1
    assert set(shown) <= set(capsys.readouterr().err.splitlines())


def test_the_structure_sample_and_record_datasets_new_readme_shows_are_what_the_builder_reads_and_writes(
        tmp_path: Path) -> None:
    """Its structure file and topic file, built as they are shown, give the train_data.jsonl line it shows (the
    shown record abridges text with '…')."""
    readme = ROOT / "datasets_new" / "README.md"
    shown = [json.loads(block.text) for block in fenced_blocks(readme) if block.language == "json"]
    structure = next(doc for doc in shown if isinstance(doc, dict) and "categories" in doc)
    samples = next(doc for doc in shown if isinstance(doc, list))
    record = next(doc for doc in shown if isinstance(doc, dict) and "messages" in doc)
    topic = tmp_path / "topics" / record["metadata"]["source"].removeprefix("topics/")
    topic.parent.mkdir(parents=True)
    topic.write_text(json.dumps(samples))
    (tmp_path / "structure.enriched.json").write_text(json.dumps(structure))
    output = tmp_path / "train_data.jsonl"
    assert build_train_jsonl.main(["--structure", str(tmp_path / "structure.enriched.json"), "--topics-dir",
                                   str(tmp_path / "topics"), "--output", str(output), "--no-stats"]) == 0
    built = json.loads(output.read_text().splitlines()[0])
    for turn_shown, turn_built in zip(record.pop("messages"), built.pop("messages"), strict=True):
        pattern = ".*".join(map(re.escape, turn_shown["content"].split("…")))
        assert turn_shown["role"] == turn_built["role"] and re.fullmatch(pattern, turn_built["content"], re.DOTALL)
    assert built == record


# Dotted names in the docs that look like spec fields and are not: MLflow params taken from the resolved sources
# (docs/contracts.md, Tracking). The chart's README is left out: its `storage.uri` and `notify.enabled` are chart values.
NOT_SPEC_FIELDS = {"baseModel.digest", "baseModel.revision", "dataset.digest"}


@functools.cache
def crd_schema() -> dict[str, Any]:
    crd = load_documents(render_crd())[0]
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def field_names() -> list[tuple[str, str]]:
    """(where, path) for every field path in inline code: `spec.…`/`status.…`, or a path under a spec section
    (`training.lora.r`, `notify.webhooks[].format`, `resources.<stage>.scratchSize`)."""
    sections = set(crd_schema()["properties"]["spec"]["properties"])
    found = []
    for doc in DOCS:
        if doc.parent.parent == ROOT / "charts":
            continue
        for span in code_spans(doc):
            match = re.fullmatch(r"(?:spec|status)(?:\.[\w<>*]+(?:\[\])?)+|(\w+)(?:\.[\w<>*]+(?:\[\])?)+", span.text)
            if match and (match.group(1) is None or match.group(1) in sections) and span.text not in NOT_SPEC_FIELDS:
                found.append((span.where, span.text if match.group(1) is None else f"spec.{span.text}"))
    return found


def schema_has(node: dict[str, Any], path: list[str]) -> bool:
    """Whether the schema has the path; `<placeholder>` and `*` stand for every key of a map or object."""
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "[]":
        return "items" in node and schema_has(node["items"], rest)
    if head.endswith("[]"):
        return schema_has(node, [head[:-2], "[]", *rest])
    if head == "*" or head.startswith("<"):
        children = list(node.get("properties", {}).values())
        if isinstance(node.get("additionalProperties"), dict):
            children.append(node["additionalProperties"])
        return bool(children) and all(schema_has(child, rest) for child in children)
    child = node.get("properties", {}).get(head)
    return child is not None and schema_has(child, rest)


@pytest.mark.parametrize(("where", "path"), cases(field_names()))
def test_every_field_path_the_docs_name_is_in_the_crd(where: str, path: str) -> None:
    assert schema_has(crd_schema(), path.split(".")), f"{where}: the FineTuneRun CRD has no {path}"


# --- 3. repository paths --------------------------------------------------------------------------------------------

def top_level_names(folder: Path) -> set[str]:
    return {entry.name for entry in folder.iterdir() if not entry.name.startswith(".")}


ROOT_FOLDERS = {name for name in top_level_names(ROOT) if (ROOT / name).is_dir()} - {"build"}


def named_paths() -> list[tuple[str, Path, str]]:
    """(where, doc, path) for every repository path the docs name in inline code, in a command or in plain prose: a
    word starting with a top-level folder of the repository, or of the doc's own folder."""
    found: dict[tuple[str, str], Path] = {}
    for doc in DOCS:
        prefixes = ROOT_FOLDERS | (top_level_names(doc.parent) if doc.parent != ROOT else set())
        texts = [(span, re.sub(r"/\s+(?=[\w.])", "/", span.text)) for span in code_spans(doc)]
        texts += [(line, line.text) for block in fenced_blocks(doc) if block.language in ("bash", "sh", "console", "shell")
                  for line in command_lines(block)]
        texts += [(Snippet(doc, number, line), line) for number, line in enumerate(prose(doc).splitlines(), 1)]
        for snippet, text in texts:
            for word in re.split(r"[\s=,;()'\"`\[\]]+", text):
                word = word.split("#")[0].rstrip(".:")  # a link's heading is checked with the links
                if "/" in word and word.split("/")[0] in prefixes and not re.search(r"[<{…]|\.\.\.", word) \
                        and "://" not in word:
                    found.setdefault((snippet.where, word), doc)
    return [(where, doc, path) for (where, path), doc in found.items()]


@pytest.mark.parametrize(("where", "doc", "path"), cases(named_paths()))
def test_every_repository_path_the_docs_name_exists(where: str, doc: Path, path: str) -> None:
    candidates = [doc.parent / path, ROOT / path]
    assert any(glob.glob(str(candidate)) if "*" in path else candidate.exists() for candidate in candidates), \
        f"{where}: {path} does not exist"


def link_targets() -> list[tuple[str, Path, str]]:
    return [(link.where, doc, link.text) for doc in DOCS for link in links(doc)
            if not re.match(r"[a-z]+:", link.text)]


@pytest.mark.parametrize(("where", "doc", "target"), cases(link_targets()))
def test_every_link_leads_to_a_file_and_heading_that_exist(where: str, doc: Path, target: str) -> None:
    """Relative to the linking file, as GitHub renders it."""
    path, _, anchor = target.partition("#")
    linked = (doc.parent / path).resolve() if path else doc
    assert linked.exists(), f"{where}: {path} does not exist"
    if anchor:
        assert anchor in heading_anchors(linked), f"{where}: no heading #{anchor} in {linked.relative_to(ROOT)}"


# --- 4. python -m kubetune… and scripts -----------------------------------------------------------------------------

def module_main(args: list[str]) -> tuple[Callable[..., Any] | None, list[str]]:
    """The main() a `python -m kubetune.X …` or `python datasets_new/X.py …` line runs, and its arguments."""
    if args[:1] == ["-m"]:
        name, rest = args[1], args[2:]
        module = importlib.import_module(name if name.count(".") > 1 or name.endswith("_jsonl") else f"{name}.__main__")
        return getattr(module, "main", None), rest
    script = Path(args[0])
    assert script.parts[0] == "datasets_new", f"{script}: not a script this test knows how to import"
    return importlib.import_module("kubetune." + ".".join(script.with_suffix("").parts)).main, args[1:]


@pytest.mark.parametrize(("where", "args", "mention"), cases(python_commands()))
def test_every_python_command_runs_a_real_module_or_script_that_takes_its_flags(
        where: str, args: list[str], mention: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if args[0].startswith("benchmarks/"):  # they need a GPU and import torch: their flags are read from the source
        script = ROOT / args[0]
        assert script.is_file(), f"{where}: {args[0]} does not exist"
        parser = ScriptParser(script).parser()
        assert parse_failure(lenient(parser) if mention else parser, args[1:]) is None, f"{where}: python {' '.join(args)}"
        return
    main, rest = module_main(args)
    if main is None or args[1:2] == ["kubetune.operator"]:  # the operator takes no arguments: its settings are env vars
        assert not rest, f"{where}: {args[1]} takes no arguments"
        return
    failure = parse_with_module_main(main, rest, monkeypatch, mention=mention)
    assert failure is None, f"{where}: python {' '.join(args)}: {failure}"


def test_the_docs_show_python_commands_of_every_kind() -> None:
    kinds = {args[1] if args[0] == "-m" else args[0].split("/")[0] for _, args, _ in python_commands()}
    assert {"kubetune.jobs", "kubetune.llama", "benchmarks", "datasets_new"} <= kinds


def documented_defaults() -> list[tuple[str, str, str]]:
    """(where, field path, default) from the docs' `| field | default | … |` tables, where the default cell is one
    literal in backticks (cells such as "none" or "`1.0` with an eval split" say more than a value)."""
    found = []
    for doc in DOCS:
        header: list[str] = []
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else []
            if not cells:
                header = []
            elif not header:
                header = [cell.lower() for cell in cells]
            elif header[:2] == ["field", "default"] and (path := re.fullmatch(r"`([\w.\[\]]+)`", cells[0])) \
                    and (default := re.fullmatch(r"`([^`]+)`", cells[1])):
                found.append((f"{doc.relative_to(ROOT)}:{number}", path.group(1), default.group(1)))
    return found


def spec_model_field(path: str) -> Any:
    """The pydantic field of a spec path such as `notify.webhooks[].format` (camelCase, as in a manifest)."""
    model: Any = FineTuneRunSpec
    field: Any = None
    for segment in path.removeprefix("spec.").split("."):
        fields = {info.alias or name: info for name, info in model.model_fields.items()}
        field = fields[segment.removesuffix("[]")]
        model = next(iter(nested_models(field.annotation)), None)
    return field


def nested_models(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from nested_models(argument)


@pytest.mark.parametrize(("where", "path", "default"), cases(documented_defaults()))
def test_every_default_the_docs_tabulate_is_the_models_default(where: str, path: str, default: str) -> None:
    real = spec_model_field(path).get_default(call_default_factory=True)
    assert yaml.safe_load(default) == real, f"{where}: {path} defaults to {real!r}, not {default}"


def test_the_builders_flag_table_lists_exactly_the_flags_it_takes() -> None:
    readme = (ROOT / "datasets_new" / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Building", 1)[1].split("\n## ", 1)[0]
    documented = {flag for row in re.findall(r"(?m)^\| `--.*", section) for flag in re.findall(r"`(--[\w-]+)", row)}
    taken = {option for action in build_train_jsonl.parser()._actions for option in action.option_strings
             if option.startswith("--") and option != "--help"}
    assert documented == taken


MLFLOW_TAGS = {"kubetune.run", "kubetune.uid", "kubetune.stageKey"}  # tag names of the MLflow run, not Python names


def python_names() -> list[tuple[str, str]]:
    return [(span.where, span.text) for doc in DOCS for span in code_spans(doc)
            if re.fullmatch(r"kubetune(\.\w+)+", span.text) and span.text not in MLFLOW_TAGS]


@pytest.mark.parametrize(("where", "name"), cases(python_names()))
def test_every_kubetune_python_name_the_docs_give_exists(where: str, name: str) -> None:
    """`kubetune.jobs.runtime` is a module, `kubetune.store.content_digest` a name in one; a module is found without
    running it (the train stage's imports torch)."""
    parts = name.split(".")
    for length in range(len(parts), 0, -1):
        with contextlib.suppress(ModuleNotFoundError):
            if importlib.util.find_spec(".".join(parts[:length])) is not None:
                break
    else:
        pytest.fail(f"{where}: no module {parts[0]}")
    found: Any = importlib.import_module(".".join(parts[:length])) if length < len(parts) else None
    for attribute in parts[length:]:
        assert hasattr(found, attribute), f"{where}: {name}: {'.'.join(parts[:length])} has no {attribute}"
        found = getattr(found, attribute)


# --- 5. environment variables ---------------------------------------------------------------------------------------

READERS = ("kubetune", "jobs", "operator", "tools")
BUILD_READERS = ("scripts", "images")  # build-time settings (KUBETUNE_LLAMA_CMAKE_ARGS) are read by the build
ENV_NAME = re.compile(r"KUBETUNE_[A-Z0-9_]*[A-Z0-9_]")


def names_in_code(folders: tuple[str, ...]) -> set[str]:
    names: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in ("", ".py", ".sh", ".Dockerfile") and "__pycache__" not in path.parts:
                names |= set(ENV_NAME.findall(path.read_text(encoding="utf-8", errors="replace")))
    return names


def documented_variables() -> dict[str, str]:
    """name → where first named; `KUBETUNE_SECRET_<NAME>_<KEY>` is documented as its prefix `KUBETUNE_SECRET_`."""
    found: dict[str, str] = {}
    for doc in DOCS:
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for match in re.finditer(r"KUBETUNE_[A-Z0-9_]*(?=<)|KUBETUNE_[A-Z0-9_]*[A-Z0-9]", line):
                found.setdefault(match.group(), f"{doc.relative_to(ROOT)}:{number}")
    return found


def is_read(name: str, read: set[str]) -> bool:
    return name in read or any(prefix.endswith("_") and name.startswith(prefix) for prefix in read)


@pytest.mark.parametrize(("name", "where"), sorted(documented_variables().items()))
def test_every_kubetune_variable_the_docs_name_is_read_by_the_code(name: str, where: str) -> None:
    assert is_read(name, names_in_code(READERS + BUILD_READERS)), f"{where}: nothing reads {name}"


def test_variables_the_code_reads_but_the_docs_never_name_are_reported() -> None:
    documented = set(documented_variables())
    undocumented = sorted(name for name in names_in_code(READERS)
                          if not is_read(name, documented) and not any(d.startswith(name) for d in documented))
    if undocumented:
        warnings.warn(f"read by the code, named in no doc: {', '.join(undocumented)}", stacklevel=1)


def test_the_counts_of_what_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    counts = {"kubetune commands": len(kubetune_commands()), "kubetune mentions": len(kubetune_spans()),
              "run for real": len(runnable_commands()) + len(dataset_conversions()), "python commands": len(python_commands()),
              "helm --set": len(helm_settings()),
              "yaml blocks": len(yaml_blocks()), "examples": len(referenced_examples()), "fields": len(field_names()),
              "python names": len(python_names()), "defaults": len(documented_defaults()),
              "paths": len(named_paths()), "links": len(link_targets()), "variables": len(documented_variables())}
    with capsys.disabled():
        print("\n[docs] " + json.dumps(counts))
    assert all(counts.values())
