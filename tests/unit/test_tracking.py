"""spec.tracking: validated like the rest, never part of a stage key, its credentials reach only the train Job; what
the train stage forwards from its progress records; TensorBoard event files the real tensorboard reader accepts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kubetune.api.types import STAGES
from kubetune.api.validate import InvalidManifest, parse_run, validate_spec
from kubetune.jobs.tracking import hyper_parameters, progress_metrics, trainer_state_scalars
from kubetune.jobs.tracking_tensorboard import crc32c, write_scalar_events
from kubetune.operator.jobspec import build
from kubetune.operator.settings import OperatorSettings
from kubetune.planner import CreateJob, job_name
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.stages import StageRef, stage_ref
from tests.fixtures.sources import example_sources

MLFLOW = {"trackingUri": "https://mlflow.example.com/team", "experiment": "nova",
          "credentialsSecret": {"name": "mlflow-login"}}
UPSTREAM = {stage: f"{stage}-digest" for stage in STAGES}


def errors_of(spec: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidManifest) as raised:
        validate_spec(spec)
    return {e.path: e.message for e in raised.value.errors}


def test_tracking_is_off_by_default_and_mlflow_gets_the_kubetune_experiment() -> None:
    spec = validate_spec({})
    assert spec.tracking.mlflow is None and spec.tracking.tensorboard is False
    mlflow = validate_spec({"tracking": {"mlflow": {"trackingUri": "http://mlflow:5000"}}}).tracking.mlflow
    assert mlflow is not None and mlflow.experiment == "kubetune" and mlflow.run_name is None


@pytest.mark.parametrize("uri", ["s3://bucket/mlflow", "file:///tmp/mlruns", "databricks", "http://", "http://a b"])
def test_a_tracking_uri_other_than_http_or_https_is_refused_at_its_field(uri: str) -> None:
    assert "spec.tracking.mlflow.trackingUri" in errors_of({"tracking": {"mlflow": {"trackingUri": uri}}})


def test_an_unknown_tracking_field_and_a_bad_secret_name_are_refused() -> None:
    assert "spec.tracking.wandb" in errors_of({"tracking": {"wandb": True}})
    bad_secret = {"tracking": {"mlflow": {"trackingUri": "http://m:5000", "credentialsSecret": {"name": "Bad_Name"}}}}
    assert "spec.tracking.mlflow.credentialsSecret.name" in errors_of(bad_secret)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("tracking", [{"mlflow": MLFLOW}, {"tensorboard": True}, {"mlflow": MLFLOW, "tensorboard": True}])
def test_tracking_settings_change_no_stage_key(stage: str, tracking: dict[str, Any]) -> None:
    # They change where metrics go, not what is learned: turning them on never trains (or merges, ...) again.
    def key(spec: dict[str, Any]) -> str:
        return stage_ref("ns", "run", validate_spec(spec), stage, UPSTREAM, example_sources()).key

    assert key({"tracking": tracking}) == key({})


def train_job(spec: dict[str, Any], stage: str = "train") -> tuple[dict[str, Any], dict[str, Any]]:
    run = dataclasses.replace(parse_run({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun",
                                         "metadata": {"name": "demo", "namespace": "team"}, "spec": spec}), uid="u")
    ref = StageRef("f" * 64, f"team/demo/{stage}/{'f' * 16}")
    upstream = {name: StageRef(str(i) * 64, f"team/demo/{name}/{str(i) * 16}") for i, name in enumerate(STAGES)}
    action = CreateJob(stage, ref, 1, job_name("demo", stage, ref.key, 1))
    config_map, job = build(run, action, OperatorSettings(store_uri="s3://artifacts/runs"), upstream)
    return config_map, job


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    [container] = job["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("valueFrom", e.get("value")) for e in container["env"]}


def test_mlflow_credentials_reach_the_train_job_as_optional_secret_keys_and_never_the_config_map() -> None:
    config_map, job = train_job({"tracking": {"mlflow": MLFLOW}})
    variables = env_of(job)
    assert variables["MLFLOW_TRACKING_TOKEN"] == {
        "secretKeyRef": {"name": "mlflow-login", "key": "token", "optional": True}}
    assert variables["MLFLOW_TRACKING_USERNAME"] == {
        "secretKeyRef": {"name": "mlflow-login", "key": "username", "optional": True}}
    assert variables["MLFLOW_TRACKING_PASSWORD"] == {
        "secretKeyRef": {"name": "mlflow-login", "key": "password", "optional": True}}
    assert "MLFLOW_TRACKING" not in config_map["data"]["run.json"]


def test_other_stages_and_a_server_without_credentials_get_no_mlflow_variables() -> None:
    _, merge = train_job({"tracking": {"mlflow": MLFLOW}}, stage="merge")
    _, anonymous = train_job({"tracking": {"mlflow": {"trackingUri": "http://mlflow:5000"}}})
    for job in (merge, anonymous):
        assert not [name for name in env_of(job) if name.startswith("MLFLOW_")]


def test_every_numeric_field_of_a_progress_record_with_a_step_becomes_a_metric_at_that_step() -> None:
    record = {"step": 7, "totalSteps": 10, "epoch": 0.7, "loss": 1.25, "learningRate": 2e-4, "tokensPerSecond": 812.5,
              "etaSeconds": 30, "evalLoss": 1.5, "lastCheckpoint": "checkpoint-00000006", "someFlag": True}
    metrics = progress_metrics(record, timestamp_ms=1000)
    assert {(m.key, m.value, m.step, m.timestamp_ms) for m in metrics} == {
        ("epoch", 0.7, 7, 1000), ("loss", 1.25, 7, 1000), ("learningRate", 2e-4, 7, 1000),
        ("tokensPerSecond", 812.5, 7, 1000), ("evalLoss", 1.5, 7, 1000)}
    assert progress_metrics({"message": "100 samples", "totalSteps": 10}, timestamp_ms=1) == []


def test_hyper_parameters_are_the_training_fields_flattened_with_the_resolved_base_model() -> None:
    spec = validate_spec({"training": {"lora": {"r": 4}, "evalPrompts": ["Who are you?", "Hi"]}})
    run = RunConfig("demo", "team", spec, StoreConfig("/tmp/unused"), {}, sources=example_sources())
    params = hyper_parameters(run)
    assert params["training.lora.r"] == "4" and params["training.method"] == spec.training.method
    assert params["training.evalPrompts"] == "Who are you?, Hi"
    assert params["baseModel.digest"] == example_sources().base_model.digest
    assert params["dataset.maxSeqLength"] == str(spec.dataset.max_seq_length)


def test_crc32c_is_the_castagnoli_checksum() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(b"") == 0


def test_event_files_read_back_by_tensorboard_hold_each_step_and_the_eval_loss_of_the_base_model(
    tmp_path: Path,
) -> None:
    metrics = [{"step": 1, "epoch": 0.5, "loss": 2.5, "learning_rate": 1e-3, "tokens_per_second": 100.25},
               {"step": 2, "epoch": 1.0, "loss": 1.75, "learning_rate": 5e-4, "tokens_per_second": 99.5}]
    eval_losses = [{"step": 0, "epoch": 0.0, "eval_loss": 3.0}, {"step": 2, "epoch": 1.0, "eval_loss": 2.0}]
    write_scalar_events(tmp_path / "tb", trainer_state_scalars(metrics, eval_losses), wall_time=1_700_000_000.5)
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    scalars = {tag: [(e.step, e.value, e.wall_time) for e in accumulator.Scalars(tag)]
               for tag in accumulator.Tags()["scalars"]}
    assert scalars["loss"] == [(1, 2.5, 1_700_000_000.5), (2, 1.75, 1_700_000_000.5)]
    assert [(step, value) for step, value, _ in scalars["evalLoss"]] == [(0, 3.0), (2, 2.0)]
    assert [(step, value) for step, value, _ in scalars["learningRate"]] == [(1, pytest.approx(1e-3)),
                                                                              (2, pytest.approx(5e-4))]
    assert [step for step, _, _ in scalars["epoch"]] == [1, 2]  # the base model's eval at step 0 has no epoch value
