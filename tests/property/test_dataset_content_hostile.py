"""Hostile text inside data files and trees, through the commands users run: `kubetune dataset convert` and the
dataset stage of `kubetune run`.

- A `\\uD800`-`\\uDFFF` escape with no other half, in any text a record holds (a turn, a system prompt, an Alpaca
  instruction), is a located error with a hint and exit 2 in every format and file type, for `kubetune dataset
  convert` and the dataset stage alike: it used to reach the id's hash and train_data.jsonl as a string no UTF-8
  encoder writes, a UnicodeEncodeError traceback (the stage: exit 1, retried).
- A file that converts is a tree that builds back into exactly its conversations, whatever the text holds (controls,
  NUL, line separators, `${`, `$${`, `</think>` in the question).
- A tree that leaves nothing to train on (every topic file `[]`, `categories` selecting empty ones, every sample in
  the eval split) ends the dataset stage with one line naming the field and exit 2, and publishes nothing: it used
  to publish an empty train_data.jsonl, and the train stage failed on it later.
- A JSONL or JSON data file saved with a UTF-8 byte order mark says so at line 1, as the tree builder does (it was
  json's "Unexpected UTF-8 BOM (decode using utf-8-sig)", or "not a JSON array").
"""

from __future__ import annotations

import codecs
import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune.api.dataset_formats import DatasetFields
from kubetune.dataformats.build import DataFile, build_conversations
from kubetune.datasets_new.builder import BuildOptions, build_dataset, eval_fraction
from kubetune.datasets_new.errors import DatasetError
from kubetune.datasets_new.outputs import jsonl_blocks
from tests.fixtures.dataformats import SHAREGPT_ROLE, write_records
from tests.property.cli_inputs import SAMPLE, kubetune, manifest, write_sources
from tests.property.test_dataset_hostile import scratch

FORMATS = ("messages", "sharegpt", "alpaca")
SUFFIXES = (".jsonl", ".json")  # parquet strings are UTF-8 by the format: no escape reaches them
LONE = st.sampled_from(["\\ud800", "\\udfff", "x\\udc80y", "\\ude00\\ud83d", "\\uDBFF", "a\\ud834"])
# Any character a JSON string can carry, surrogates aside (a pair of them is one character, written as such).
any_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40).filter(str.strip)


def records(format_name: str, texts: list[str], system: str | None) -> list[dict[str, Any]]:
    """One record of `format_name` whose user/assistant texts are `texts` (pairs), with an optional system prompt."""
    if format_name == "alpaca":
        record: dict[str, Any] = {"instruction": texts[0], "input": "", "output": texts[1]}
        return [record | ({"system": system} if system is not None else {})]
    turns = [{"role": role, "content": text} for role, text in zip(("user", "assistant") * len(texts), texts)]
    if format_name == "messages":
        return [{"messages": ([{"role": "system", "content": system}] if system is not None else []) + turns}]
    sharegpt = [{"from": SHAREGPT_ROLE[turn["role"]], "value": turn["content"]} for turn in turns]
    return [{"conversations": sharegpt} | ({"system": system} if system is not None else {})]


@st.composite
def record_with_a_lone_surrogate(draw: st.DrawFn) -> tuple[str, str]:
    """(format, the JSON text of its file) where one text of one record is spliced with a lone surrogate escape."""
    format_name = draw(st.sampled_from(FORMATS))
    pairs = 1 if format_name == "alpaca" else draw(st.integers(1, 2))  # an Alpaca record is one exchange
    texts = draw(st.lists(any_text, min_size=2 * pairs, max_size=2 * pairs))
    system = draw(st.none() | any_text)
    marker = "\x01MARK\x01"
    slots = len(texts) + (system is not None)
    slot = draw(st.integers(0, slots - 1))
    if slot == len(texts):
        system = f"{system}{marker}"
    else:
        texts[slot] = f"{texts[slot]}{marker}"
    text = json.dumps(records(format_name, texts, system))
    return format_name, text.replace(json.dumps(marker)[1:-1], draw(LONE))


@given(record_with_a_lone_surrogate(), st.sampled_from(SUFFIXES))
def test_a_lone_surrogate_escape_in_any_text_is_a_located_error(drawn: tuple[str, str], suffix: str) -> None:
    format_name, text = drawn
    with scratch() as root:
        path = root / f"chats{suffix}"
        rows = json.loads(text)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows) if suffix == ".jsonl" else text,
                        encoding="utf-8")
        try:
            build_conversations(format_name, [DataFile(path, path.name)], DatasetFields(), eval_split=0.0)
        except DatasetError as error:
            [issue] = error.issues
            assert (issue.path, issue.line) == (path.name, 1) and "lone UTF-16 surrogate" in issue.message, issue
            assert issue.hint.strip()
        else:
            raise AssertionError("a lone surrogate escape was taken as text")
        code, err = kubetune("dataset", "convert", "--from", format_name, str(path), "--out", str(root / "tree"))
        assert code == 2 and err[0].startswith(f"{path.as_posix()}:1: ") and err[1].startswith("    hint: "), err
        assert not (root / "tree").exists()


@given(st.sampled_from(FORMATS), st.sampled_from(SUFFIXES), st.lists(any_text, min_size=2, max_size=2),
       st.booleans())
def test_a_data_file_saved_with_a_byte_order_mark_says_so_at_line_1(format_name: str, suffix: str, texts: list[str],
                                                                   crlf: bool) -> None:
    rows = records(format_name, texts, None)
    text = "".join(json.dumps(row) + "\n" for row in rows) if suffix == ".jsonl" else json.dumps(rows, indent=1)
    with scratch() as root:
        path = root / f"chats{suffix}"
        path.write_bytes(codecs.BOM_UTF8 + (text.replace("\n", "\r\n") if crlf else text).encode())
        try:
            build_conversations(format_name, [DataFile(path, path.name)], DatasetFields(), eval_split=0.0)
        except DatasetError as error:
            [issue] = error.issues
            assert (issue.line, issue.message, issue.hint) == (
                1, "file starts with a UTF-8 byte order mark (BOM)", "save the file as UTF-8 without BOM"), issue
        else:
            raise AssertionError("a file with a byte order mark was read")
        path.write_bytes(path.read_bytes()[len(codecs.BOM_UTF8):])  # without it, the same file reads
        assert build_conversations(format_name, [DataFile(path, path.name)], DatasetFields(), eval_split=0.0).train


reasoning_text = any_text.filter(lambda text: "</think>" not in text and "</output>" not in text and text.strip())


@given(st.sampled_from(FORMATS), st.lists(st.tuples(any_text, reasoning_text, reasoning_text), min_size=1,
                                          max_size=4, unique_by=lambda triple: triple))
def test_a_converted_file_builds_back_into_exactly_its_conversations(
        format_name: str, triples: list[tuple[str, str, str]]) -> None:
    conversations = [[question, f"<think>{think}</think>\n<output>{output}</output>"]
                     for question, think, output in triples]
    with scratch() as root:
        path = write_records([row for texts in conversations for row in records(format_name, texts, None)],
                             root / "chats.jsonl")
        code, err = kubetune("dataset", "convert", "--from", format_name, str(path), "--out", str(root / "tree"))
        blank_answer = any(not think.strip() or not output.strip() for _, think, output in triples)
        if code != 0:
            assert code == 2 and blank_answer, err
            return
        result = build_dataset(BuildOptions(structure_path=root / "tree" / "structure.enriched.json",
                                            topics_dir=root / "tree" / "topics"))
    lines = b"".join(jsonl_blocks(result.train)).decode().split("\n")[:-1]  # JSONL lines end at "\n" only
    assert [[message["content"] for message in json.loads(line)["messages"]] for line in lines] == conversations


# ---- the dataset stage of `kubetune run` -----------------------------------------------------------------------

TOPIC = Path("ds/topics/identity/who/identity.who.reasoning.json")


def held_out_samples(count: int) -> list[dict[str, Any]]:
    """Samples whose ids an eval split of 0.5 holds out (the stage's seed is 0)."""
    ids = (f"who_{number:02d}" for number in range(1000))
    held_out = [sample_id for sample_id in ids if eval_fraction(f"identity.who.reasoning.{sample_id}", 0) < 0.5]
    return [SAMPLE | {"id": sample_id, "question": f"Who are you, {sample_id}?"} for sample_id in held_out[:count]]


NOTHING_TO_TRAIN: dict[str, tuple[dict[str, Any], str]] = {  # how a tree leaves no training record, and the field the line must name
    "every topic file empty": ({"topic": []}, "spec.dataset.uri"),
    "no topic files at all": ({"topic": None}, "spec.dataset.uri"),
    "every sample in the eval split": ({"topic": held_out_samples(3), "evalSplit": 0.5}, "spec.dataset.evalSplit"),
}


@settings(max_examples=len(NOTHING_TO_TRAIN) * 2)
@given(st.sampled_from(sorted(NOTHING_TO_TRAIN)), st.booleans())
def test_a_tree_with_nothing_to_train_on_is_one_line_and_publishes_nothing(case: str, via_categories: bool) -> None:
    change, field = NOTHING_TO_TRAIN[case]
    with scratch() as root, contextlib.chdir(root):
        write_sources(root)
        if change["topic"] is None:
            (root / TOPIC).unlink()
        else:
            (root / TOPIC).write_text(json.dumps(change["topic"]), encoding="utf-8")
        doc = json.loads(manifest("tree"))
        if "evalSplit" in change:
            doc["spec"]["dataset"]["evalSplit"] = change["evalSplit"]
        if via_categories:  # the same through a category selection: the one selected holds nothing
            doc["spec"]["dataset"]["categories"] = ["identity"]
        (root / "run.yaml").write_text(json.dumps(doc), encoding="utf-8")
        code, err = kubetune("run", "run.yaml", "--store", "store", "--to-stage", "dataset")
        published = sorted(path.name for path in (root / "store").rglob("*") if path.is_file())
        leftovers = sorted(path.name for path in (root / ".kubetune").rglob("work/**/*") if path.is_file())
    assert code == 2 and "Traceback" not in "\n".join(err), err
    assert err[-1].startswith(f"kubetune: dataset exited with 2: {field}: "), err
    assert published == ["progress.json"], published  # the stage's Failed record, no output
    assert leftovers == [], leftovers


hostile_lines = st.one_of(
    record_with_a_lone_surrogate().map(lambda drawn: (drawn[0], "".join(  # escapes stay escapes: ASCII JSON
        json.dumps(row) + "\n" for row in json.loads(drawn[1])))),
    st.tuples(st.sampled_from(FORMATS), st.sampled_from(["\ufeff{}\n", "{\n", "[]\n", "null\n", '{"messages": 1}\n',
                                                         "\x00\n", '{"instruction": "\\ud800", "output": "x"}\n'])),
)


@settings(max_examples=8)
@given(hostile_lines)
def test_the_dataset_stage_ends_a_hostile_data_file_with_exit_2_naming_it(drawn: tuple[str, str]) -> None:
    format_name, text = drawn
    with scratch() as root, contextlib.chdir(root):
        write_sources(root)
        (root / "data" / "chats.jsonl").write_text(text, encoding="utf-8")
        doc = json.loads(manifest("messages"))
        doc["spec"]["dataset"] |= {"format": format_name, "tokenStats": False}
        (root / "run.yaml").write_text(json.dumps(doc), encoding="utf-8")
        code, err = kubetune("run", "run.yaml", "--store", "store", "--to-stage", "dataset")
        published = sorted(path.name for path in (root / "store").rglob("*") if path.is_file())
    assert code == 2 and "Traceback" not in "\n".join(err), err
    # One line, however many problems the record has (an alpaca record without either key has two): the first,
    # named by file and line, and how many more.
    assert re.match(r"kubetune: dataset exited with 2: \d+ dataset error\(s\): .*chats\.jsonl:1:", err[-1]), err
    assert published == ["progress.json"], published


SUBPROCESS_RECORDS = {  # as users run it: the exit code and stderr of the real command
    "a lone surrogate in a turn": '{"messages": [{"role": "user", "content": "\\ud800"}, '
                                  '{"role": "assistant", "content": "<think>t</think>\\n<output>o</output>"}]}\n',
    "a byte order mark": '\ufeff{"messages": []}\n',
}


@pytest.mark.parametrize("case", sorted(SUBPROCESS_RECORDS))
def test_as_a_command_convert_ends_a_hostile_file_with_one_located_error_and_exit_2(case: str, tmp_path: Path) -> None:
    source = tmp_path / "chats.jsonl"
    source.write_text(SUBPROCESS_RECORDS[case], encoding="utf-8")
    done = subprocess.run([sys.executable, "-P", "-m", "kubetune.cli", "dataset", "convert", "--from", "messages",
                           str(source), "--out", str(tmp_path / "tree")], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith(f"{source}:1") and lines[1].startswith("    hint: "), lines
    assert not (tmp_path / "tree").exists()
