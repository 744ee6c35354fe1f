"""Each dataset format and source through `kubetune run --to-stage dataset`, then into training's tokenisation with
the bundled model's real tokenizer: the system prompt is in the rendered text, every turn of a multi-turn
conversation is there, and only the assistant turns carry labels. Bad input ends the stage with exit 2 and a
file:line reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from transformers import PreTrainedTokenizerBase

from kubetune.api.types import BaseModelSpec
from kubetune.jobs.basemodel import default_cache_dir, resolve_base_model
from kubetune.jobs.train_data import IGNORE_INDEX, assistant_spans, default_chat_template, tokenize_conversation
from kubetune.jobs.train_model import load_tokenizer
from kubetune.store import open_store
from tests.fixtures.dataformats import MULTI_TURN, SYSTEM, Message, records, write_records
from tests.fixtures.hub_datasets import COMMIT_A, COMMIT_B, DatasetRepo
from tests.fixtures.hub_datasets import REPO as HUB_REPO
from tests.fixtures.s3 import REGION, S3Server

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.fixtures.hub_datasets"]

BUNDLED_MODEL = "bundled://smollm2-135m-instruct"


def kubetune_run(folder: Path, dataset: dict[str, Any], storage: dict[str, Any] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    spec: dict[str, Any] = {"baseModel": {"uri": BUNDLED_MODEL}, "dataset": dataset}
    if storage:
        spec["storage"] = storage
    manifest = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": "formats"},
                "spec": spec}
    (folder / "run.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    args = ["run", "run.yaml", "--to-stage", "dataset"] + ([] if storage else ["--store", "store"])
    # Offline unless a test's stand-in Hub allowed access (the hub_datasets fixture sets HF_HUB_OFFLINE=0).
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-P", "-m", "kubetune.cli", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def local_outputs(folder: Path) -> tuple[list[list[Message]], dict[str, Any]]:
    (train,) = (folder / "store").rglob("train_data.jsonl")
    return conversations(train.read_text(encoding="utf-8")), json.loads(train.with_name("stats.json").read_text())


def conversations(text: str) -> list[list[Message]]:
    return [json.loads(line)["messages"] for line in text.splitlines()]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    folder = resolve_base_model(BaseModelSpec(uri=BUNDLED_MODEL), store_factory=open_store,
                                cache_dir=default_cache_dir())
    loaded, _ = load_tokenizer(folder, default_chat_template(), [])
    return loaded


def assert_trains_on_assistant_turns_only(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> None:
    text, spans = assistant_spans(tokenizer, messages)
    for message in messages:
        assert message["content"] in text
    sample = tokenize_conversation(tokenizer, messages, max_seq_length=4096)
    learned = tokenizer.decode([t for t in sample.labels if t != IGNORE_INDEX])
    for message in messages:
        if message["role"] == "assistant":
            assert message["content"] in learned
        else:
            assert message["content"] not in learned
    assert len(spans) == sum(message["role"] == "assistant" for message in messages)


@pytest.mark.parametrize(("format_name", "suffix"), [("messages", ".jsonl"), ("sharegpt", ".json"),
                                                     ("alpaca", ".parquet")])
def test_a_local_data_file_of_each_format_builds_conversations_that_train_on_assistant_turns_only(
        format_name: str, suffix: str, tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    rows, expected = records(format_name)
    data = write_records(rows, tmp_path / f"data{suffix}")
    done = kubetune_run(tmp_path, {"uri": str(data), "format": format_name})
    assert done.returncode == 0, done.stderr[-3000:]
    built, stats = local_outputs(tmp_path)
    assert built == expected
    assert stats["format"] == format_name and stats["samples"]["train"] == 2
    assert stats["samples_with_system_prompt"] == 1 and stats["tokens"]["sum"] > 0
    for messages in built:
        assert_trains_on_assistant_turns_only(tokenizer, messages)
    system_turn = tokenizer.apply_chat_template(built[0], tokenize=False)
    assert SYSTEM in system_turn


def test_a_local_folder_of_mixed_files_is_one_dataset_with_an_eval_split(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(40)]
    write_records(rows[:20], tmp_path / "data" / "part-0.jsonl")
    write_records(rows[20:], tmp_path / "data" / "more" / "part-1.parquet")
    (tmp_path / "data" / "README.md").write_text("not data", encoding="utf-8")
    done = kubetune_run(tmp_path, {"uri": str(tmp_path / "data"), "format": "messages", "evalSplit": 0.25,
                                   "tokenStats": False})
    assert done.returncode == 0, done.stderr[-3000:]
    built, stats = local_outputs(tmp_path)
    (evaluation,) = (tmp_path / "store").rglob("eval_data.jsonl")
    held_out = conversations(evaluation.read_text(encoding="utf-8"))
    assert sorted(map(json.dumps, built + held_out)) == sorted(json.dumps(row["messages"]) for row in rows)
    assert held_out and stats["files"] == 2 and stats["samples"]["eval"] == len(held_out)


def test_data_files_in_s3_build_the_same_conversations_as_local_ones(
        s3_bucket: str, s3_server: S3Server, tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    storage = {"uri": f"s3://{s3_bucket}/runs", "endpoint": s3_server.endpoint, "region": REGION, "pathStyle": True}
    bucket = open_store(f"s3://{s3_bucket}", endpoint=s3_server.endpoint, region=REGION, path_style=True)
    rows, expected = records("sharegpt")
    bucket.put_file("data/chats.parquet", write_records(rows, tmp_path / "chats.parquet"))
    done = kubetune_run(tmp_path, {"uri": f"s3://{s3_bucket}/data/chats.parquet", "format": "sharegpt"}, storage)
    assert done.returncode == 0, done.stderr[-3000:]
    (train,) = [o.key for o in bucket.list("runs") if o.key.endswith("train_data.jsonl")]
    built = conversations(bucket.get_bytes(train).decode())
    assert built == expected
    assert_trains_on_assistant_turns_only(tokenizer, built[0])


def test_a_changed_s3_data_file_is_a_new_dataset_key(s3_bucket: str, s3_server: S3Server, tmp_path: Path) -> None:
    storage = {"uri": f"s3://{s3_bucket}/runs", "endpoint": s3_server.endpoint, "region": REGION, "pathStyle": True}
    bucket = open_store(f"s3://{s3_bucket}", endpoint=s3_server.endpoint, region=REGION, path_style=True)
    rows, _ = records("alpaca")
    dataset = {"uri": f"s3://{s3_bucket}/prefix/", "format": "alpaca", "tokenStats": False}
    keys = []
    for count in (1, 2):
        bucket.put_file("prefix/part.jsonl", write_records(rows[:count], tmp_path / "part.jsonl"))
        done = kubetune_run(tmp_path, dataset, storage)
        assert done.returncode == 0, done.stderr[-3000:]
        keys.append({o.key.split("/")[-2] for o in bucket.list("runs") if o.key.endswith("train_data.jsonl")})
    assert len(keys[0]) == 1 and len(keys[1]) == 2


def test_a_bad_record_fails_the_stage_with_exit_2_naming_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"messages": MULTI_TURN}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n", encoding="utf-8")
    done = kubetune_run(tmp_path, {"uri": str(data), "format": "messages", "tokenStats": False})
    assert done.returncode == 2
    assert "dataset exited with 2" in done.stderr
    assert f"{data}:2: the conversation must end with an assistant turn" in done.stderr
    log = (tmp_path / ".kubetune" / "runs" / "default" / "formats" / "dataset.log").read_text(encoding="utf-8")
    assert "Traceback" not in log and "hint: add the answer" in log
    assert not list((tmp_path / "store").rglob("train_data.jsonl"))


def test_a_hub_dataset_is_read_at_its_resolved_commit_downloading_only_the_named_data_file(
        hub_datasets: type[DatasetRepo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        tokenizer: PreTrainedTokenizerBase) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))  # a fresh Hugging Face cache: nothing offline
    rows, expected = records("messages")
    hub_datasets.files = {
        COMMIT_A: {"data/train.jsonl": "".join(json.dumps(row) + "\n" for row in rows).encode(),
                   "data/test.jsonl": b"{}\n", "README.md": b"# chats"},
        COMMIT_B: {"data/train.jsonl": (json.dumps(rows[0]) + "\n").encode()},
    }
    hub_datasets.refs = {"main": COMMIT_A}
    dataset = {"uri": f"hf://datasets/{HUB_REPO}/data/train.jsonl", "format": "messages", "tokenStats": False}
    done = kubetune_run(tmp_path, dataset)
    assert done.returncode == 0, done.stderr[-3000:]
    built, stats = local_outputs(tmp_path)
    assert built == expected and stats["files"] == 1
    assert hub_datasets.downloaded == ["data/train.jsonl"]
    for messages in built:
        assert_trains_on_assistant_turns_only(tokenizer, messages)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline, the branch resolves through the cache's ref: same key
    done = kubetune_run(tmp_path, dataset)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "store").rglob("train_data.jsonl"))) == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub_datasets.refs = {"main": COMMIT_B}  # the branch moves: resolved afresh, a new dataset key
    done = kubetune_run(tmp_path, dataset)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = sorted((tmp_path / "store").rglob("train_data.jsonl"), key=lambda p: p.stat().st_mtime)
    assert len(outputs) == 2 and conversations(outputs[-1].read_text(encoding="utf-8")) == [expected[0]]


def test_a_hub_dataset_revision_that_does_not_exist_fails_with_exit_2_naming_the_uri(
        hub_datasets: type[DatasetRepo], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    hub_datasets.files, hub_datasets.refs = {COMMIT_A: {"train.jsonl": b"{}\n"}}, {"main": COMMIT_A}
    done = kubetune_run(tmp_path, {"uri": f"hf://datasets/{HUB_REPO}@v9", "format": "messages",
                                   "tokenStats": False})
    assert done.returncode != 0
    assert f"spec.dataset.uri: cannot resolve hf://datasets/{HUB_REPO}@v9 revision 'v9' on the Hub" in done.stderr
