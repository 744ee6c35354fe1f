"""Data-file datasets: each format in each file type becomes the same conversations; every bad record is named by
file:line (parquet: row and column) with a hint, and nothing is built while one is bad."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api.dataset_formats import DatasetFields
from kubetune.dataformats.build import DataFile, FormatBuild, build_conversations, format_stats
from kubetune.datasets_new.errors import DatasetError
from tests.fixtures.dataformats import MULTI_TURN, SYSTEM, records, write_records

FORMATS = ("messages", "sharegpt", "alpaca")
SUFFIXES = (".jsonl", ".json", ".parquet")


def build(format_name: str, *paths: Path, fields: DatasetFields | None = None, eval_split: float = 0.0
          ) -> FormatBuild:
    files = [DataFile(path, path.name) for path in paths]
    return build_conversations(format_name, files, fields or DatasetFields(), eval_split=eval_split)


def errors(format_name: str, path: Path, fields: DatasetFields | None = None) -> list[str]:
    with pytest.raises(DatasetError) as caught:
        build(format_name, path, fields=fields)
    return [issue.format() for issue in caught.value.issues]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("format_name", FORMATS)
def test_each_format_in_each_file_type_becomes_the_expected_conversations(format_name: str, suffix: str,
                                                                          tmp_path: Path) -> None:
    rows, expected = records(format_name)
    result = build(format_name, write_records(rows, tmp_path / f"data{suffix}"))
    assert [conversation.messages for conversation in result.train] == expected
    assert result.records_read == len(rows)


def test_a_system_prompt_and_several_turns_are_kept_in_order(tmp_path: Path) -> None:
    result = build("messages", write_records([{"messages": MULTI_TURN}], tmp_path / "d.jsonl"))
    (conversation,) = result.train
    assert conversation.messages[0] == {"role": "system", "content": SYSTEM}
    assert [m["role"] for m in conversation.messages] == ["system", "user", "assistant", "user", "assistant"]
    stats = format_stats(result, 0.0, 0, None)
    assert (stats["format"], stats["samples_with_system_prompt"], stats["multi_turn_samples"]) == ("messages", 1, 1)
    assert stats["turns"] == {"system": 1, "user": 2, "assistant": 2}


def test_field_mapping_reads_files_that_name_the_parts_their_own_way(tmp_path: Path) -> None:
    rows = [{"dialog": [{"speaker": "user", "text": "Hi"}, {"speaker": "assistant", "text": "Hello"}]}]
    path = write_records(rows, tmp_path / "d.jsonl")
    fields = DatasetFields(messages="dialog", role="speaker", content="text")
    assert build("messages", path, fields=fields).train[0].messages == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    alpaca = write_records([{"prompt": "Add 2 and 2", "answer": "4"}], tmp_path / "a.jsonl")
    mapped = build("alpaca", alpaca, fields=DatasetFields(instruction="prompt", output="answer"))
    assert mapped.train[0].messages == [{"role": "user", "content": "Add 2 and 2"},
                                        {"role": "assistant", "content": "4"}]


def test_a_folder_of_files_is_read_in_name_order_and_duplicates_are_dropped(tmp_path: Path) -> None:
    rows, expected = records("messages")
    first = write_records(rows, tmp_path / "a.jsonl")
    second = write_records(rows[:1], tmp_path / "b.parquet")
    result = build("messages", first, second)
    assert [c.messages for c in result.train] == expected
    assert (result.files, result.records_read, result.duplicates_dropped) == (2, 3, 1)


def test_the_eval_split_is_decided_by_each_conversation_so_it_is_stable(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(200)]
    path = write_records(rows, tmp_path / "d.jsonl")
    once, again = build("messages", path, eval_split=0.2), build("messages", path, eval_split=0.2)
    assert 10 < len(once.eval) < 80
    assert [c.id for c in once.eval] == [c.id for c in again.eval]
    fewer = build("messages", write_records(rows[:100], tmp_path / "fewer.jsonl"), eval_split=0.2)
    assert {c.id for c in fewer.eval} == {c.id for c in once.eval} & {c.id for c in fewer.train + fewer.eval}


def test_every_bad_jsonl_record_is_named_by_file_and_line_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([
        json.dumps({"messages": MULTI_TURN}),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}),
        json.dumps({"messages": [{"role": "user", "content": ["parts"]}, {"role": "assistant", "content": "a"}]}),
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}),
        json.dumps({"text": "no messages"}),
        "[1, 2]",
    ]) + "\n", encoding="utf-8")
    reported = errors("messages", path)
    assert [line.split(":")[1] for line in reported] == ["2", "3", "4", "5", "6", "7", "8", "9"]
    assert all("\n    hint: " in line for line in reported)
    assert "bad.jsonl:3: messages[1].role is 'tool', not system, user or assistant" in reported[1]
    assert "must end with an assistant turn" in reported[2]
    assert "is a assistant turn where a user turn belongs" in reported[3]
    assert "messages[0].content must be a string, got list" in reported[4]
    assert "turn 2 (assistant) is blank" in reported[5]
    assert "'messages' must be a non-empty list of turns (missing)" in reported[6]
    assert "a record must be an object, got list" in reported[7]


def test_a_bad_record_in_a_json_array_is_named_by_the_line_it_starts_on(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "q", "output": "a"},\n  {"instruction": "q2"}\n]\n', encoding="utf-8")
    (reported,) = errors("alpaca", path)
    assert reported.startswith("bad.json:3: no 'output'")
    truncated = tmp_path / "cut.json"
    truncated.write_text('[\n  {"instruction": "q", "output": "a"},\n  {"instruction": \n', encoding="utf-8")
    (reported,) = errors("alpaca", truncated)
    assert reported.startswith("cut.json:4:1: not JSON")  # where the syntax broke: the file ends mid-record


def test_a_bad_parquet_row_is_named_by_row_and_column(tmp_path: Path) -> None:
    path = write_records([{"instruction": "q", "output": "a"}, {"instruction": "q2", "output": None}],
                         tmp_path / "bad.parquet")
    (reported,) = errors("alpaca", path)
    assert reported.startswith("bad.parquet: row 2, column output: no 'output'")
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_bytes(b"PAR1 this is not parquet")
    (reported,) = errors("alpaca", not_parquet)
    assert reported.startswith("fake.parquet: cannot read as parquet")


def test_sharegpt_speakers_map_to_roles_and_unknown_speakers_are_refused(tmp_path: Path) -> None:
    rows = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            {"conversations": [{"from": "narrator", "value": "q"}, {"from": "gpt", "value": "a"}]}]
    path = write_records(rows, tmp_path / "s.jsonl")
    (reported,) = errors("sharegpt", path)
    assert reported.startswith("s.jsonl:2: conversations[0].from is 'narrator', not human/user, gpt/assistant")


def test_an_empty_file_is_refused_rather_than_training_on_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    (reported,) = errors("messages", path)
    assert "empty.jsonl: no records" in reported


def test_records_nested_past_the_parser_or_with_huge_integers_are_located_errors(tmp_path: Path) -> None:
    lines = tmp_path / "deep.jsonl"
    lines.write_text(json.dumps({"messages": MULTI_TURN}) + "\n" + "[" * 100_000 + "\n" + "9" * 5000 + "\n",
                     encoding="utf-8")
    reported = errors("messages", lines)
    assert reported[0].startswith("deep.jsonl:2:1: values nest deeper than the JSON parser reads")
    assert reported[1].startswith("deep.jsonl:3:1: an integer has more than")
    array = tmp_path / "deep.json"
    array.write_text("[\n" + "[" * 100_000 + "]" * 100_000 + "\n]", encoding="utf-8")
    (reported_array,) = errors("messages", array)
    assert reported_array.startswith("deep.json:2: values nest deeper than the JSON parser reads")
