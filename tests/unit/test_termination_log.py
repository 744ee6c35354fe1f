"""A failed job's reason reaches the pod's termination message, and only a pod's: run locally or by hand (even as
root), a job never writes the host's /dev/termination-log."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.validate import parse_run, validate_spec
from kubetune.jobs.runtime import EXIT_CONFIG, EXIT_FAILED, TERMINATION_LOG_ENV, JobContext, run_job
from kubetune.operator.jobspec import build
from kubetune.operator.settings import OperatorSettings
from kubetune.planner import CreateJob, job_name
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.stages import StageRef


def write_run(tmp_path: Path) -> Path:
    dataset = StageRef("d" * 64, "default/demo/dataset/" + "d" * 16)
    config = RunConfig("demo", "default", validate_spec({}), StoreConfig(str(tmp_path / "store")), {"dataset": dataset})
    path = tmp_path / "run.json"
    path.write_text(config.dumps())
    return path


def fail(ctx: JobContext) -> None:
    raise RuntimeError("out of memory")


opened: list[str] = []
_recording = False


def _record_opens(event: str, args: tuple[Any, ...]) -> None:
    if _recording and event == "open" and args and isinstance(args[0], (str, Path)):
        opened.append(str(args[0]))


sys.addaudithook(_record_opens)  # audit hooks cannot be removed: this one records only inside `recording_opens`


@pytest.fixture
def recording_opens() -> Any:
    global _recording
    opened.clear()
    _recording = True
    yield opened
    _recording = False


def test_the_job_builder_tells_the_job_where_the_termination_message_goes() -> None:
    run = parse_run({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": "demo"},
                     "spec": {}})
    ref = StageRef("f" * 64, "default/demo/dataset/" + "f" * 16)
    action = CreateJob("dataset", ref, 1, job_name(run.name, "dataset", ref.key, 1))
    _, job = build(run, action, OperatorSettings(store_uri="s3://artifacts/runs"), {})
    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {var["name"]: var.get("value") for var in container["env"]}
    assert env[TERMINATION_LOG_ENV] == container["terminationMessagePath"] == "/dev/termination-log"


def test_in_a_pod_a_failed_stage_writes_its_reason_to_the_termination_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(log))
    assert run_job("dataset", write_run(tmp_path), fail) == EXIT_FAILED
    assert log.read_text() == "RuntimeError: out of memory"


@pytest.mark.parametrize("outcome", ["the stage fails", "the run config is unreadable"])
def test_without_the_pod_variable_no_termination_log_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recording_opens: list[str], outcome: str
) -> None:
    monkeypatch.delenv(TERMINATION_LOG_ENV, raising=False)
    if outcome == "the stage fails":
        assert run_job("dataset", write_run(tmp_path), fail) == EXIT_FAILED
    else:
        assert run_job("dataset", tmp_path / "missing.json", fail) == EXIT_CONFIG
    assert recording_opens, "the audit hook saw no file opened at all"
    assert not [path for path in recording_opens if "termination" in path]
