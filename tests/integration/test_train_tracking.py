"""Tracking of the train stage: a real `mlflow server` gets the hyper-parameters, every logged step's metrics and the
output's artifacts; TensorBoard event files in the output hold the same values; a tracking server that is down never
fails training."""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kubetune.api.tracking import MlflowSpec
from kubetune.api.types import FineTuneRunSpec
from kubetune.jobs import train as train_stage
from kubetune.jobs.runtime import EXIT_OK, run_job
from kubetune.jobs.tracking import MlflowTracking
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.store import LINEAGE_NAME, open_store, publish, read_manifest
from tests.fixtures.mlflow_server import MlflowServer, running_mlflow_server
from tests.fixtures.s3server import free_port
from tests.fixtures.tiny_models import build_tiny_model, repo_root, vocab_tokenizer_dir
from tests.integration.train_job import DATASET, TRAIN

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]  # the server starts in 20-40 s on 2 busy cores

CACHE = repo_root() / ".cache" / "test-models"
STEPS = 4


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


def conversations(numbers: range) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                            {"role": "assistant", "content": "Always forty two."}]}) + "\n"
                   for i in numbers)


def run_train_stage(tmp: Path, monkeypatch: pytest.MonkeyPatch, tracking: dict[str, Any]) -> int:
    """The whole train stage in this process, on a tiny model, with a train and an eval split."""
    model_dir = build_tiny_model("qwen2", CACHE / "train-tiny-qwen2-qwen2",
                                 tokenizer_dir=vocab_tokenizer_dir("qwen2", CACHE / "vocab-qwen2"))
    monkeypatch.setenv("KUBETUNE_WORKDIR", str(tmp / "work"))
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp / "cache"))
    dataset = tmp / "dataset"
    dataset.mkdir()
    (dataset / "train_data.jsonl").write_text(conversations(range(8)), encoding="utf-8")
    (dataset / "eval_data.jsonl").write_text(conversations(range(100, 104)), encoding="utf-8")
    publish(open_store(str(tmp / "store")), DATASET.prefix, dataset, stage="dataset", input_key=DATASET.key)
    spec = FineTuneRunSpec.model_validate({
        "baseModel": {"uri": f"file://{model_dir}"},
        "training": {"method": "lora", "maxSteps": STEPS, "batchSize": 4, "learningRate": 1e-2, "loggingSteps": 1,
                     "device": "cpu", "gradientCheckpointing": False, "checkpoint": {"everySteps": 2, "keep": 1},
                     "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "dataset": {"maxSeqLength": 32},
        "tracking": tracking,
    })
    run = RunConfig(name="tracked", namespace="default", spec=spec, store=StoreConfig(uri=str(tmp / "store")),
                    stages={"dataset": DATASET, "train": TRAIN}, uid="uid-tracked")
    (tmp / "run.json").write_text(run.dumps(), encoding="utf-8")
    return run_job("train", tmp / "run.json", train_stage.run)


def rest(server: MlflowServer, path: str, **query: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}") as answer:
        return dict(json.loads(answer.read()))


def history(server: MlflowServer, run_id: str, key: str) -> list[tuple[int, float]]:
    metrics = rest(server, "metrics/get-history", run_id=run_id, metric_key=key).get("metrics", [])
    return sorted((int(m["step"]), float(m["value"])) for m in metrics)


def train_output(tmp: Path) -> tuple[dict[str, Any], Any]:
    store = open_store(str(tmp / "store"))
    manifest = read_manifest(store, TRAIN.prefix)
    assert manifest is not None
    return json.loads(store.get_bytes(f"{TRAIN.prefix}/trainer_state.json")), manifest


def test_a_tracked_train_stage_logs_params_metrics_per_step_and_artifacts_to_a_real_mlflow_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_server: MlflowServer,
) -> None:
    tracking = {"mlflow": {"trackingUri": mlflow_server.url, "experiment": "kubetune-tests", "runName": "tiny"}}
    assert run_train_stage(tmp_path, monkeypatch, tracking) == EXIT_OK
    state, _ = train_output(tmp_path)

    experiment = rest(mlflow_server, "experiments/get-by-name", experiment_name="kubetune-tests")["experiment"]
    with urllib.request.urlopen(urllib.request.Request(
            f"{mlflow_server.url}/api/2.0/mlflow/runs/search", method="POST",
            data=json.dumps({"experiment_ids": [experiment["experiment_id"]]}).encode(),
            headers={"Content-Type": "application/json"})) as answer:
        runs = json.loads(answer.read())["runs"]
    assert len(runs) == 1
    info, data = runs[0]["info"], runs[0]["data"]
    assert info["run_name"] == "tiny" and info["status"] == "FINISHED"
    tags = {t["key"]: t["value"] for t in data["tags"]}
    assert tags["kubetune.run"] == "default/tracked" and tags["kubetune.stageKey"] == TRAIN.key
    params = {p["key"]: p["value"] for p in data["params"]}
    assert params["training.lora.r"] == "8" and float(params["training.learningRate"]) == 1e-2
    assert params["training.maxSteps"] == str(STEPS) and params["dataset.maxSeqLength"] == "32"

    run_id = info["run_id"]
    assert history(mlflow_server, run_id, "loss") == [(row["step"], row["loss"]) for row in state["metrics"]]
    assert [step for step, _ in history(mlflow_server, run_id, "loss")] == list(range(1, STEPS + 1))
    assert history(mlflow_server, run_id, "learningRate") == [(row["step"], row["learning_rate"])
                                                              for row in state["metrics"]]
    assert history(mlflow_server, run_id, "evalLoss") == [(row["step"], row["eval_loss"])
                                                          for row in state["eval_losses"]]
    assert [step for step, _ in history(mlflow_server, run_id, "tokensPerSecond")] == list(range(1, STEPS + 1))

    store = open_store(str(tmp_path / "store"))
    artifacts = info["artifact_uri"].removeprefix("mlflow-artifacts:").strip("/")
    for name in (LINEAGE_NAME, "loss.png", "metrics.csv"):
        with urllib.request.urlopen(f"{mlflow_server.url}/api/2.0/mlflow-artifacts/artifacts/{artifacts}/{name}") as a:
            assert a.read() == store.get_bytes(f"{TRAIN.prefix}/{name}"), name


def test_tensorboard_event_files_in_the_train_output_hold_the_values_of_the_progress_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run_train_stage(tmp_path, monkeypatch, {"tensorboard": True}) == EXIT_OK
    state, manifest = train_output(tmp_path)
    events = [f.path for f in manifest.files if f.path.startswith("tensorboard/events.out.tfevents.")]
    assert len(events) == 1
    local = tmp_path / "fetched" / events[0]
    local.parent.mkdir(parents=True)
    local.write_bytes(open_store(str(tmp_path / "store")).get_bytes(f"{TRAIN.prefix}/{events[0]}"))

    accumulator = EventAccumulator(str(local.parent))
    accumulator.Reload()
    scalars = {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
    for tag, field in (("loss", "loss"), ("learningRate", "learning_rate"), ("tokensPerSecond", "tokens_per_second"),
                       ("epoch", "epoch")):
        assert scalars[tag] == [(row["step"], pytest.approx(row[field], rel=1e-6)) for row in state["metrics"]], tag
    assert scalars["evalLoss"] == [(row["step"], pytest.approx(row["eval_loss"], rel=1e-6))
                                   for row in state["eval_losses"]]


def test_a_tracking_server_that_is_down_leaves_training_successful_with_one_warning_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with caplog.at_level(logging.INFO, logger="kubetune.jobs.tracking"):
        assert run_train_stage(tmp_path, monkeypatch, {"mlflow": {"trackingUri": nobody}}) == EXIT_OK
    _, manifest = train_output(tmp_path)
    assert "adapter/adapter_model.safetensors" in {f.path for f in manifest.files}
    warnings = [r for r in caplog.records if r.name == "kubetune.jobs.tracking" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and nobody in warnings[0].getMessage(), [r.getMessage() for r in warnings]
    summaries = [r.getMessage() for r in caplog.records if r.name == "kubetune.jobs.tracking"
                 and r.levelno == logging.INFO]
    assert len(summaries) == 1 and "training was not affected" in summaries[0]


def test_a_resumed_train_stage_logs_on_to_the_mlflow_run_of_its_key(mlflow_server: MlflowServer) -> None:
    spec = MlflowSpec.model_validate({"trackingUri": mlflow_server.url, "experiment": "kubetune-resume"})
    run = RunConfig(name="resumed", namespace="default", spec=FineTuneRunSpec(), store=StoreConfig(uri="/unused"),
                    stages={}, uid="uid-resumed")
    first = MlflowTracking(spec, run, TRAIN.key)
    first.record({"step": 1, "loss": 2.0})
    first.end("KILLED", None)  # stopped by a signal: a later attempt resumes
    second = MlflowTracking(spec, run, TRAIN.key)
    second.record({"step": 2, "loss": 1.5})
    second.end("FINISHED", None)
    other_key = MlflowTracking(spec, run, "9" * 64)
    other_key.end("FINISHED", None)

    assert first.mlflow_run is not None and second.mlflow_run is not None and other_key.mlflow_run is not None
    assert second.mlflow_run.run_id == first.mlflow_run.run_id != other_key.mlflow_run.run_id
    assert first.failed == second.failed == other_key.failed == 0
    info = rest(mlflow_server, "runs/get", run_id=first.mlflow_run.run_id)["run"]["info"]
    assert info["status"] == "FINISHED" and info["run_name"] == "resumed"
    assert history(mlflow_server, first.mlflow_run.run_id, "loss") == [(1, 2.0), (2, 1.5)]
