"""SIGTERM mid-run: the train job saves a checkpoint and exits 143; rerunning it continues from that step."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from kubetune.api.types import FineTuneRunSpec
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.store import open_store, publish, read_manifest
from tests.fixtures.tiny_models import build_tiny_model, repo_root, vocab_tokenizer_dir
from tests.integration.train_job import DATASET, TRAIN, progress, start_job

CACHE = repo_root() / ".cache" / "test-models"
STEPS = 60


def write_dataset(path: Path, count: int) -> None:
    records = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                             {"role": "assistant", "content": f"Answer {i}: I am Nova."}]} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def write_run(tmp: Path, model_dir: Path) -> Path:
    spec = FineTuneRunSpec.model_validate({
        "baseModel": {"uri": f"file://{model_dir}"},
        "training": {"method": "lora", "maxSteps": STEPS, "batchSize": 2, "learningRate": 1e-3, "device": "cpu",
                     "checkpoint": {"everySteps": 1000, "keep": 2}, "evalPrompts": ["Who are you?"],
                     "maxNewTokens": 4},
        "dataset": {"maxSeqLength": 64},
    })
    run = RunConfig(name="demo", namespace="default", spec=spec, store=StoreConfig(uri=f"file://{tmp / 'store'}"),
                    stages={"dataset": DATASET, "train": TRAIN})
    path = tmp / "run.json"
    path.write_text(run.dumps(), encoding="utf-8")
    return path


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_a_rerun_continues(tmp_path: Path) -> None:
    model_dir = build_tiny_model("qwen2", CACHE / "train-tiny-qwen2-qwen2",
                                 tokenizer_dir=vocab_tokenizer_dir("qwen2", CACHE / "vocab-qwen2"))
    store = open_store(str(tmp_path / "store"))
    (tmp_path / "dataset").mkdir()
    write_dataset(tmp_path / "dataset" / "train_data.jsonl", count=16)
    publish(store, DATASET.prefix, tmp_path / "dataset", stage="dataset", input_key=DATASET.key)
    run_json = write_run(tmp_path, model_dir)

    job = start_job(tmp_path, run_json)
    # Watch the job's own log, not progress.json (written at most every few seconds): on an idle machine a tiny
    # model runs all its steps within that interval.
    assert job.stdout is not None
    seen = []
    for line in job.stdout:
        seen.append(line)
        if f"step 2/{STEPS}" in line:
            break
    else:
        raise AssertionError("the job never logged step 2:\n" + "".join(seen))
    job.send_signal(signal.SIGTERM)
    output = "".join(seen) + job.communicate(timeout=120)[0]
    assert job.returncode == 143, output

    stopped = progress(store)
    assert stopped["phase"] == "Stopped"
    saved = str(stopped["lastCheckpoint"])
    saved_step = int(saved.removeprefix("checkpoint-"))
    assert 2 <= saved_step < STEPS
    manifest = read_manifest(store, f"{TRAIN.prefix}/checkpoints/{saved}")
    assert manifest is not None and manifest.metadata["step"] == saved_step
    assert read_manifest(store, TRAIN.prefix) is None  # a stopped run publishes no output

    rerun = start_job(tmp_path, run_json)
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output
    assert f"resuming from {saved} at step {saved_step}" in output
    final = read_manifest(store, TRAIN.prefix)
    assert final is not None and final.metadata["steps"] == STEPS
    state = json.loads(store.get_bytes(f"{TRAIN.prefix}/trainer_state.json"))
    assert [row["step"] for row in state["metrics"]] == list(range(1, STEPS + 1))
