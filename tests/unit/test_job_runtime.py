"""The job runtime: run config in, progress and a published output out, exit codes by outcome."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kubetune.api.validate import validate_spec
from kubetune.jobs.runtime import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED,
    ConfigError,
    JobContext,
    Stopped,
    run_job,
)
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.stages import stage_ref
from kubetune.store import manifest_digest, open_store, read_manifest
from tests.fixtures.sources import example_sources


def write_run(tmp_path: Path, spec: dict | None = None) -> Path:
    parsed = validate_spec(spec or {})
    dataset = stage_ref("default", "demo", parsed, "dataset", {}, example_sources())
    config = RunConfig("demo", "default", parsed, StoreConfig(str(tmp_path / "store")), {"dataset": dataset})
    path = tmp_path / "run.json"
    path.write_text(config.dumps())
    return path


def test_run_config_round_trips_through_json(tmp_path: Path) -> None:
    path = write_run(tmp_path, {"training": {"lora": {"r": 8}}})
    config = RunConfig.load(path)
    assert config.spec.training.lora.r == 8
    assert RunConfig.from_json(json.loads(path.read_text())).dumps() == path.read_text()


def test_a_successful_stage_publishes_its_output_with_the_input_key(tmp_path: Path) -> None:
    def body(ctx: JobContext) -> None:
        out = ctx.workdir / "out"
        out.mkdir()
        (out / "train_data.jsonl").write_text('{"id": 1}\n')
        ctx.progress(samples=1)
        ctx.publish(out, {"samples": 1})

    assert run_job("dataset", write_run(tmp_path), body) == EXIT_OK
    config = RunConfig.load(tmp_path / "run.json")
    store = open_store(config.store.uri)
    manifest = read_manifest(store, config.stages["dataset"].prefix)
    assert manifest is not None and manifest.input_key == config.stages["dataset"].key
    assert [f.path for f in manifest.files] == ["lineage.json", "train_data.jsonl"]
    assert manifest.metadata == {"samples": 1}
    progress = json.loads(store.get_bytes(config.stages["dataset"].prefix + "/progress.json"))
    assert progress["phase"] == "Succeeded" and progress["samples"] == 1
    assert len(manifest_digest(manifest)) == 64


@pytest.mark.parametrize(
    ("error", "code", "phase"),
    [
        (ConfigError("topics/a.json:3:1: bad"), EXIT_CONFIG, "Failed"),
        (RuntimeError("disk full"), EXIT_FAILED, "Failed"),
    ],
)
def test_failures_map_to_exit_codes_and_leave_a_reason(tmp_path: Path, error: Exception, code: int, phase: str) -> None:
    def body(ctx: JobContext) -> None:
        raise error

    assert run_job("dataset", write_run(tmp_path), body) == code
    config = RunConfig.load(tmp_path / "run.json")
    store = open_store(config.store.uri)
    progress = json.loads(store.get_bytes(config.stages["dataset"].prefix + "/progress.json"))
    assert progress["phase"] == phase and str(error) in progress["message"]
    assert read_manifest(store, config.stages["dataset"].prefix) is None


@pytest.mark.parametrize("outcome", ["succeeds", "fails"])
def test_a_scratch_dir_the_job_made_itself_is_removed_when_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    """Run by hand (no KUBETUNE_WORKDIR), a stage's merged models and checkpoints must not pile up in /tmp."""
    monkeypatch.delenv("KUBETUNE_WORKDIR", raising=False)
    seen: list[Path] = []

    def body(ctx: JobContext) -> None:
        seen.append(ctx.workdir)
        (ctx.workdir / "model.safetensors").write_bytes(b"\0" * 1024)
        if outcome == "fails":
            raise RuntimeError("out of memory")

    run_job("dataset", write_run(tmp_path), body)
    assert seen and not seen[0].exists()


def test_a_given_workdir_is_left_to_its_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod's emptyDir or `kubetune run`'s state dir: the caller decides what to keep."""
    def body(ctx: JobContext) -> None:
        (ctx.workdir / "kept").write_text("x")

    monkeypatch.setenv("KUBETUNE_WORKDIR", str(tmp_path / "work"))
    assert run_job("dataset", write_run(tmp_path), body) == EXIT_OK
    assert (tmp_path / "work" / "dataset" / "kept").read_text() == "x"


def test_only_rank_0_of_launched_ranks_writes_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second rank's start and stop reports would replace rank 0's step and last checkpoint."""
    def stop(ctx: JobContext) -> None:
        ctx.progress(step=3, lastCheckpoint="checkpoint-00000003", force=True)
        raise Stopped("stopped at step 3")

    run_path = write_run(tmp_path)
    monkeypatch.setenv("RANK", "0")
    assert run_job("dataset", run_path, stop) == EXIT_STOPPED
    monkeypatch.setenv("RANK", "1")
    assert run_job("dataset", run_path, lambda ctx: ctx.progress("Running", force=True, step=1)) == EXIT_OK
    config = RunConfig.load(run_path)
    progress = json.loads(open_store(config.store.uri).get_bytes(config.stages["dataset"].prefix + "/progress.json"))
    assert progress["phase"] == "Stopped" and progress["step"] == 3
    assert progress["lastCheckpoint"] == "checkpoint-00000003"


def test_an_unreadable_run_config_is_a_config_error(tmp_path: Path) -> None:
    assert run_job("dataset", tmp_path / "missing.json", lambda ctx: None) == EXIT_CONFIG


@pytest.mark.parametrize("kind", ["a folder", "a named pipe", "not JSON", "a JSON list", "a spec the API refuses"])
def test_a_run_config_that_cannot_be_used_is_one_line_and_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = tmp_path / "run.json"
    if kind == "a folder":
        path.mkdir()
    elif kind == "a named pipe":
        os.mkfifo(path)  # reading it would block forever
    else:
        document = {"not JSON": "{", "a JSON list": "[]"}.get(kind)
        if document is None:
            data = json.loads(write_run(tmp_path).read_text())
            data["spec"] = {"training": {"epochs": "many"}}
            document = json.dumps(data)
        path.write_text(document)
    assert run_job("dataset", path, lambda ctx: None) == EXIT_CONFIG
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("kubetune-job: failed: ") and str(path) in line


def test_sigterm_asks_the_stage_to_stop_and_it_exits_143(tmp_path: Path) -> None:
    run_path = write_run(tmp_path)
    program = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from kubetune.jobs.runtime import JobContext, Stopped, run_job
        def body(ctx: JobContext) -> None:
            print("ready", flush=True)
            while not ctx.stop.wait(0.05):
                pass
            ctx.progress("Stopping", force=True, lastCheckpoint="checkpoint-00000003")
            raise Stopped("saved checkpoint-00000003")
        sys.exit(run_job("dataset", Path({str(run_path)!r}), body))
    """)
    process = subprocess.Popen(
        [sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, KUBETUNE_WORKDIR=str(tmp_path / "work")),
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == EXIT_STOPPED, stderr
    assert "saved checkpoint-00000003" in stderr
