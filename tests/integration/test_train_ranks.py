"""Training as several ranks on CPU (gloo): the real train code in 2 processes, rank-0-only checkpoints, and resume
from a checkpoint with another number of ranks, in-process (`train()`) and through the job's own launcher."""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kubetune.api.types import FineTuneRunSpec
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.store import Store, open_store, publish, read_manifest
from tests.fixtures.tiny_models import build_tiny_model, repo_root, vocab_tokenizer_dir
from tests.integration.train_job import DATASET, TRAIN, progress, start_job
from tests.integration.train_ranks_harness import PREFIX, RankJob, rank_dir, run_ranks

CACHE = repo_root() / ".cache" / "test-models"
RECORDS = 12  # batch 2: six micro-batches per epoch


def tiny_model() -> Path:
    return build_tiny_model("qwen2", CACHE / "train-tiny-qwen2-qwen2",
                            tokenizer_dir=vocab_tokenizer_dir("qwen2", CACHE / "vocab-qwen2"))


def write_dataset(path: Path, count: int = RECORDS) -> Path:
    records = [{"messages": [{"role": "user", "content": f"Question number {i}?"},
                             {"role": "assistant", "content": f"<output>Answer {i}: I am Nova.</output>"}]}
               for i in range(count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def training(**overrides: Any) -> dict[str, Any]:
    # No dropout: a rank draws its masks from its own stream, one process from one stream, and the runs compared
    # below must differ only in how the same micro-batches are spread over ranks.
    fields: dict[str, Any] = {"method": "lora", "maxSteps": 4, "batchSize": 2, "learningRate": 1e-2,
                              "loggingSteps": 1, "device": "cpu", "checkpoint": {"everySteps": 2, "keep": 3},
                              "addedSpecialTokens": ["<output>", "</output>"],
                              "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    fields.update(overrides)
    return fields


def job(tmp: Path, spec: dict[str, Any], *, store: Path | None = None, stop_at: int | None = None,
        eval_records: int = 0) -> RankJob:
    eval_path = write_dataset(tmp / "eval_data.jsonl", eval_records) if eval_records else None
    return RankJob(tiny_model(), write_dataset(tmp / "data.jsonl"), store or tmp / "store", spec, tmp / "out",
                   stop_at, eval_path)


def losses(result: dict[str, Any]) -> list[float]:
    return [row["loss"] for row in result["metrics"]]


def adapter(job: RankJob) -> dict[str, torch.Tensor]:
    return load_file(str(rank_dir(job, 0) / "outputs" / "adapter" / "adapter_model.safetensors"))


def checkpoint_names(store: Store) -> list[str]:
    return sorted({info.key.split("/")[5] for info in store.list(f"{PREFIX}/checkpoints")})


def assert_every_checkpoint_complete_and_written_once(store: Store, world_size: int) -> None:
    """Each checkpoint holds exactly the files its manifest lists (no leftovers of a second writer, no partial
    upload) and records how many ranks trained up to it."""
    for name in checkpoint_names(store):
        prefix = f"{PREFIX}/checkpoints/{name}"
        manifest = read_manifest(store, prefix)
        assert manifest is not None, f"{name} is partial"
        stored = {info.key.removeprefix(prefix + "/") for info in store.list(prefix)}
        assert stored == {f.path for f in manifest.files} | {"manifest.json"}, name
        assert json.loads(store.get_bytes(f"{prefix}/ranks.json")) == {"worldSize": world_size}


@pytest.mark.slow
def test_two_gloo_ranks_train_exactly_like_one_process_over_their_combined_micro_batches(tmp_path: Path) -> None:
    ranked = job(tmp_path / "ranks", training(gradientAccumulation=1), eval_records=5)
    single = job(tmp_path / "single", training(gradientAccumulation=2), eval_records=5)
    rank0, rank1 = run_ranks(ranked, world_size=2)
    [alone] = run_ranks(single, world_size=1)

    # Both ranks report the same, global, step; rank 1's store refused every write, and none was attempted.
    for result in (rank0, rank1):
        assert (result["outcome"], result["step"], result["lastCheckpoint"]) == ("finished", 4, "checkpoint-00000004")
        assert losses(result) == pytest.approx(losses(alone), rel=1e-5)
    assert losses(alone)[-1] < losses(alone)[0]
    assert rank0["epoch"] == alone["epoch"] == pytest.approx(8 / 6)  # 4 steps x 2 micro-batches of 6 per epoch
    # Held-out loss: the ranks share the eval batches (3 of them: 2 and 1) and add their sums, so each reports the
    # base model's and every checkpoint's figure of the one-process run.
    assert [row["step"] for row in alone["evalLosses"]] == [0, 2, 4]
    for result in (rank0, rank1):
        assert [row["eval_loss"] for row in result["evalLosses"]] == pytest.approx(
            [row["eval_loss"] for row in alone["evalLosses"]], rel=1e-5)
    # Gradients were summed over the ranks: rank 0 ends with the weights of the one-process run.
    for name, weight in adapter(single).items():
        torch.testing.assert_close(adapter(ranked)[name], weight, rtol=1e-4, atol=1e-6)
    assert not (rank_dir(ranked, 1) / "outputs").exists()

    store = open_store(str(ranked.store_root))
    assert checkpoint_names(store) == ["checkpoint-00000002", "checkpoint-00000004"]
    assert_every_checkpoint_complete_and_written_once(store, world_size=2)


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)], ids=["2 ranks -> 1", "1 rank -> 2"])
def test_a_checkpoint_resumes_with_another_rank_count_and_the_curve_continues_unchanged(
    tmp_path: Path, before: int, after: int
) -> None:
    # The same two micro-batches per step either way: one each on two ranks, or both accumulated on one.
    def spec(world_size: int) -> dict[str, Any]:
        return training(gradientAccumulation=2 // world_size)

    stopped = run_ranks(job(tmp_path / "first", spec(before), stop_at=2), before)
    assert {(r["outcome"], r["step"], r["lastCheckpoint"]) for r in stopped} == {("stopped", 2, "checkpoint-00000002")}
    store = open_store(str(tmp_path / "first" / "store"))
    assert_every_checkpoint_complete_and_written_once(store, world_size=before)

    resumed = run_ranks(job(tmp_path / "second", spec(after), store=tmp_path / "first" / "store"), after)
    [straight] = run_ranks(job(tmp_path / "straight", spec(1)), 1)
    for result in resumed:
        assert (result["outcome"], result["step"]) == ("finished", 4)
        assert [row["step"] for row in result["metrics"]] == [1, 2, 3, 4]  # steps 1-2 from the checkpoint
        assert losses(result)[:2] == losses(stopped[0])
        assert losses(result) == pytest.approx(losses(straight), rel=1e-5)
    assert checkpoint_names(store) == ["checkpoint-00000002", "checkpoint-00000004"]
    last = f"{PREFIX}/checkpoints/checkpoint-00000004/ranks.json"
    assert json.loads(store.get_bytes(last)) == {"worldSize": after}


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after", "total"), [(2, 1, 2 + 8), (1, 2, 2 + 5)], ids=["2 -> 1", "1 -> 2"])
def test_an_epoch_plan_resumed_with_another_rank_count_finishes_its_epochs_from_the_data_position(
    tmp_path: Path, before: int, after: int, total: int
) -> None:
    spec = training(maxSteps=None, epochs=2, checkpoint={"everySteps": 100, "keep": 2})
    # 12 micro-batches in 2 epochs; the first run consumes 2 x `before` of them in its 2 steps.
    stopped = run_ranks(job(tmp_path / "first", spec, stop_at=2), before)
    assert stopped[0]["totalSteps"] == 12 // before
    resumed = run_ranks(job(tmp_path / "second", spec, store=tmp_path / "first" / "store"), after)
    for result in resumed:
        assert (result["outcome"], result["step"], result["totalSteps"]) == ("finished", total, total)
        assert result["epoch"] == pytest.approx(2.0)
        assert [row["step"] for row in result["metrics"]] == list(range(1, total + 1))
        assert losses(result)[:2] == losses(stopped[0])


# --- through the job's own launcher: `python -m kubetune.jobs train` with NPROC_PER_NODE -----------------------



def write_run(tmp: Path, *, steps: int, with_dataset_file: bool = True) -> tuple[Path, Store]:
    store = open_store(str(tmp / "store"))
    dataset = tmp / "dataset"
    dataset.mkdir()
    write_dataset(dataset / ("train_data.jsonl" if with_dataset_file else "other.jsonl"), count=16)
    publish(store, DATASET.prefix, dataset, stage="dataset", input_key=DATASET.key)
    spec = FineTuneRunSpec.model_validate({
        "baseModel": {"uri": f"file://{tiny_model()}"},
        "training": training(maxSteps=steps, learningRate=1e-3, checkpoint={"everySteps": 1000, "keep": 2}),
        "dataset": {"maxSeqLength": 64},
    })
    run = RunConfig(name="demo", namespace="default", spec=spec, store=StoreConfig(uri=f"file://{tmp / 'store'}"),
                    stages={"dataset": DATASET, "train": TRAIN})
    path = tmp / "run.json"
    path.write_text(run.dumps(), encoding="utf-8")
    return path, store


@pytest.mark.slow
def test_the_job_launches_two_ranks_stops_on_sigterm_with_a_checkpoint_and_one_rank_finishes_it(tmp_path: Path) -> None:
    steps = 40
    run_json, store = write_run(tmp_path, steps=steps)
    job_process = start_job(tmp_path, run_json, NPROC_PER_NODE="2")
    deadline = time.monotonic() + 300
    while int(progress(store).get("step", 0)) < 2:
        assert job_process.poll() is None, job_process.communicate()[0]
        assert time.monotonic() < deadline, "the ranks never reported step 2"
        time.sleep(0.2)
    job_process.send_signal(signal.SIGTERM)  # to the launcher only, as the kubelet does
    output = job_process.communicate(timeout=300)[0]
    assert job_process.returncode == 143, output
    assert "launching 2 rank(s) on node 0 of 1 (world size 2)" in output

    stopped = progress(store)
    assert stopped["phase"] == "Stopped"
    saved = str(stopped["lastCheckpoint"])
    saved_step = int(saved.removeprefix("checkpoint-"))
    assert 2 <= saved_step < steps
    prefix = f"{TRAIN.prefix}/checkpoints/{saved}"
    assert read_manifest(store, prefix) is not None
    assert json.loads(store.get_bytes(f"{prefix}/ranks.json")) == {"worldSize": 2}
    assert read_manifest(store, TRAIN.prefix) is None  # a stopped run publishes no output

    shutil.rmtree(tmp_path / "work")  # a new pod: nothing local survives
    rerun = start_job(tmp_path, run_json, NPROC_PER_NODE="1")
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output
    assert "launching" not in output and f"resuming from {saved} at step {saved_step}" in output
    final = read_manifest(store, TRAIN.prefix)
    assert final is not None and final.metadata["steps"] == steps
    state = json.loads(store.get_bytes(f"{TRAIN.prefix}/trainer_state.json"))
    assert [row["step"] for row in state["metrics"]] == list(range(1, steps + 1))
    assert progress(store)["phase"] == "Succeeded"


@pytest.mark.slow
def test_a_ranks_configuration_error_ends_the_launched_job_with_exit_2_and_the_ranks_reason(tmp_path: Path) -> None:
    run_json, store = write_run(tmp_path, steps=2, with_dataset_file=False)
    elastic_dirs_before = torchelastic_dirs()
    job_process = start_job(tmp_path, run_json, NPROC_PER_NODE="2")
    output = job_process.communicate(timeout=300)[0]
    assert job_process.returncode == 2, output
    last_line = output.strip().splitlines()[-1]
    assert last_line.startswith("kubetune-job: failed: rank "), last_line
    assert "exited with code 2: the dataset output has no train_data.jsonl" in last_line
    assert progress(store)["exitCode"] == 2
    # The ranks' error files, which carried that reason, are in the stage's scratch; none is left in the temp dir.
    assert list((tmp_path / "work" / "train" / "torchelastic").glob("*/attempt_0/*/error.json"))
    assert torchelastic_dirs() - elastic_dirs_before == set()


def torchelastic_dirs() -> set[Path]:
    """The folders torch's elastic launcher makes in the real temp dir when it is given no log dir."""
    return set(Path(tempfile.gettempdir()).glob("torchelastic_*"))
