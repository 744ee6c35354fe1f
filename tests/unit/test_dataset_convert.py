"""`kubetune dataset convert`: a messages, ShareGPT or Alpaca file becomes a datasets_new tree that the tree builder
builds back into the same conversations; what a tree sample cannot hold is reported and nothing is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.datasets_new.builder import BuildOptions, build_dataset
from kubetune.datasets_new.placeholders import DEFAULT_PLACEHOLDERS
from tests.fixtures.dataformats import MULTI_TURN, SHAREGPT_ROLE, Message, write_records

REASONING: list[list[Message]] = [
    [{"role": "user", "content": "Where is ${HOME}?"},
     {"role": "assistant", "content": "<think>A shell variable; $${HOME} stays literal.</think>\n"
                                      "<output>Your home folder.</output>"}],
    [{"role": "user", "content": "Two plus two?"},
     {"role": "assistant", "content": "<think>Add them.</think>\n<output>4</output>"}],
]


def kubetune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-P", "-m", "kubetune.cli", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def rows_of(format_name: str, conversations: list[list[Message]]) -> list[dict[str, object]]:
    if format_name == "messages":
        return [{"messages": c} for c in conversations]
    if format_name == "sharegpt":
        return [{"conversations": [{"from": SHAREGPT_ROLE[m["role"]], "value": m["content"]} for m in c]}
                for c in conversations]
    return [{"instruction": c[0]["content"], "output": c[1]["content"]} for c in conversations]


def built_back(tree: Path) -> list[list[Message]]:
    result = build_dataset(BuildOptions(structure_path=tree / "structure.enriched.json", topics_dir=tree / "topics",
                                        placeholders=DEFAULT_PLACEHOLDERS))
    return [json.loads(record.line)["messages"] for record in result.train]


@pytest.mark.parametrize(("format_name", "suffix"), [("messages", ".jsonl"), ("sharegpt", ".parquet"),
                                                     ("alpaca", ".json")])
def test_a_converted_file_builds_back_into_the_same_conversations(format_name: str, suffix: str,
                                                                  tmp_path: Path) -> None:
    source = write_records(rows_of(format_name, REASONING), tmp_path / f"chats{suffix}")
    done = kubetune("dataset", "convert", "--from", format_name, str(source), "--out", str(tmp_path / "tree"),
                    "--category", "chat", "--subcategory", "imported")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tree" / "topics" / "chat" / "imported" / "chat.imported.reasoning.json").is_file()
    assert built_back(tmp_path / "tree") == REASONING


def test_what_a_tree_sample_cannot_hold_is_reported_and_nothing_is_written(tmp_path: Path) -> None:
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    source = write_records(rows_of("messages", [REASONING[0], MULTI_TURN, plain]), tmp_path / "chats.jsonl")
    done = kubetune("dataset", "convert", "--from", "messages", str(source), "--out", str(tmp_path / "tree"))
    assert done.returncode == 2
    assert "has a system prompt, which a tree sample cannot hold" in done.stderr
    assert "has an answer not of the form <think>" in done.stderr
    assert "hint: train on this file with spec.dataset.format" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "tree").exists()


def test_an_existing_tree_is_never_overwritten(tmp_path: Path) -> None:
    source = write_records(rows_of("messages", REASONING), tmp_path / "chats.jsonl")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "keep.txt").write_text("mine", encoding="utf-8")
    done = kubetune("dataset", "convert", "--from", "messages", str(source), "--out", str(tmp_path / "tree"))
    assert done.returncode == 2 and "exists and is not an empty folder" in done.stderr
    assert [p.name for p in (tmp_path / "tree").iterdir()] == ["keep.txt"]


def test_field_flags_map_a_file_that_names_the_parts_its_own_way(tmp_path: Path) -> None:
    rows = [{"dialog": [{"speaker": m["role"], "text": m["content"]} for m in c]} for c in REASONING]
    source = write_records(rows, tmp_path / "chats.jsonl")
    done = kubetune("dataset", "convert", "--from", "messages", str(source), "--out", str(tmp_path / "tree"),
                    "--field", "messages=dialog", "--field", "role=speaker", "--field", "content=text")
    assert done.returncode == 0, done.stderr
    assert built_back(tmp_path / "tree") == REASONING
    bad = kubetune("dataset", "convert", "--from", "messages", str(source), "--out", str(tmp_path / "other"),
                   "--field", "speaker=role")
    assert bad.returncode == 2 and "--field: speaker: Extra inputs are not permitted" in bad.stderr
    assert "hint: PART is one of messages, role, content" in bad.stderr and not (tmp_path / "other").exists()
