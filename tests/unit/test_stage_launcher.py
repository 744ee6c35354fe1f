"""`kubetune run` starts the torch stages forked from a stage server that imported them once: a forked stage is the
process a fresh `python -P -m kubetune.jobs STAGE --run FILE` would be (exit code, log, environment, signals), and
where forking is not sound the stages start afresh."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.api.types import STAGES
from kubetune.api.validate import load_runs
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.stage_launcher import (
    STAGE_MODULES,
    ForkedStage,
    StageLauncher,
    StageProcess,
    StageServer,
    fork_safe_host,
    stage_command,
)
from kubetune.stages import StageRef
from tests.fixtures.tiny_models import repo_root

EXAMPLE = repo_root() / "examples" / "local-identity.yaml"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the stage server forks on Linux only")


def stage_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment `kubetune run` gives a stage: its scratch folder in the test's (a stopped stage leaves it)."""
    return dict(os.environ, KUBETUNE_WORKDIR=str(tmp_path / "work"), PYTHONUNBUFFERED="1", **extra)


def fresh(stage: str, run_json: Path, log_path: Path, env: dict[str, str]) -> int:
    with log_path.open("wb") as log:
        return subprocess.run(stage_command(stage, run_json), stdout=log, stderr=log, env=env, check=False).returncode


def forked(server: StageServer, stage: str, run_json: Path, log_path: Path, env: dict[str, str]) -> int:
    log_path.write_bytes(b"")
    process = server.start([stage, "--run", str(run_json)], [], env, log_path)
    assert process is not None
    return process.wait(timeout=120)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[StageServer]:
    started = StageServer(["kubetune.jobs.convert"], stage_env(tmp_path), tmp_path / "server.log")
    yield started
    started.close()


def test_a_forked_stage_ends_and_logs_as_a_fresh_process_would(tmp_path: Path, server: StageServer) -> None:
    (tmp_path / "unusable.json").write_text("{}", encoding="utf-8")
    for run_json in (tmp_path / "missing.json", tmp_path / "unusable.json"):
        env = stage_env(tmp_path)
        expected = fresh("convert", run_json, tmp_path / "fresh.log", env)
        code = forked(server, "convert", run_json, tmp_path / "forked.log", env)
        assert (code, (tmp_path / "forked.log").read_text()) == (expected, (tmp_path / "fresh.log").read_text())
        assert code == 2 and (tmp_path / "forked.log").read_text().startswith("kubetune-job: failed: ")


def test_one_server_forks_stage_after_stage_each_with_its_own_environment(tmp_path: Path, server: StageServer) -> None:
    # The config error names the file it read: each forked stage ran with its own argv and log.
    for name in ("first", "second"):
        code = forked(server, "convert", tmp_path / f"{name}.json", tmp_path / f"{name}.log", stage_env(tmp_path))
        assert code == 2
        assert f"{name}.json" in (tmp_path / f"{name}.log").read_text()


@pytest.fixture
def stalled_store() -> Iterator[str]:
    """An S3 endpoint that accepts connections and never answers: a stage reading from it runs until stopped."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def blocking_run_config(tmp_path: Path, endpoint: str) -> Path:
    run = RunConfig(name="stalled", namespace="default", uid="0", spec=load_runs(EXAMPLE)[0].spec,
                    store=StoreConfig(uri="s3://bucket/runs", endpoint=endpoint), sources=None,
                    stages={stage: StageRef(stage * 8, f"default/stalled/{stage}/{stage}") for stage in STAGES})
    path = tmp_path / "run.json"
    path.write_text(run.dumps(), encoding="utf-8")
    return path


def test_a_signal_to_a_forked_stage_ends_it_as_it_ends_a_fresh_one(tmp_path: Path, server: StageServer,
                                                                   stalled_store: str) -> None:
    run_json = blocking_run_config(tmp_path, stalled_store)
    env = stage_env(tmp_path, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    codes = []
    for start in ("fresh", "forked"):
        log_path = tmp_path / f"{start}.log"
        if start == "fresh":
            process: StageProcess = subprocess.Popen(stage_command("convert", run_json), stdout=log_path.open("wb"),
                                                     stderr=subprocess.STDOUT, env=env)
        else:
            forked_stage = server.start(["convert", "--run", str(run_json)], [], env, log_path)
            assert forked_stage is not None
            process = forked_stage
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=3)
        assert process.poll() is None
        process.send_signal(signal.SIGKILL)
        codes.append(process.wait(timeout=60))
    assert codes == [-signal.SIGKILL, -signal.SIGKILL]
    process.send_signal(signal.SIGTERM)  # ended: nothing to signal, no error


def test_a_server_whose_imports_start_a_thread_refuses_and_stages_start_afresh(tmp_path: Path) -> None:
    (tmp_path / "starts_a_thread.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    env = stage_env(tmp_path, PYTHONPATH=str(tmp_path))
    launcher = StageLauncher(tmp_path, preload=True)
    launcher.warm_up(["train"], env)
    assert launcher.server is not None
    launcher.server.close()  # replaced by one importing the thread-starting module
    launcher.server = StageServer(["starts_a_thread"], env, tmp_path / "stage-server.log")
    try:
        process = launcher.start("convert", tmp_path / "missing.json", env, tmp_path / "stage.log")
        assert isinstance(process, subprocess.Popen)  # started afresh
        assert process.wait(timeout=120) == 2
        assert launcher.server is None
        assert "started threads" in (tmp_path / "stage-server.log").read_text()
    finally:
        launcher.close()


def test_the_servers_log_is_the_runs_own_and_each_server_writes_it_afresh(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    run_folder = tmp_path / ".kubetune" / "runs" / "default" / "demo"  # beside the run's stage logs
    run_folder.mkdir(parents=True)
    server_log = run_folder / "stage-server.log"
    server_log.write_text("a warning of the run before\n", encoding="utf-8")
    (tmp_path / "warns_on_import.py").write_text("import sys\nprint('a warning of this import', file=sys.stderr)\n")
    monkeypatch.setitem(STAGE_MODULES, "train", ("warns_on_import",))
    launcher = StageLauncher(run_folder, preload=True)
    launcher.warm_up(["train"], stage_env(tmp_path, PYTHONPATH=str(tmp_path)))
    assert launcher.server is not None
    launcher.close()
    assert server_log.read_text(encoding="utf-8") == "a warning of this import\n"


def test_without_preloading_every_stage_starts_afresh(tmp_path: Path) -> None:
    launcher = StageLauncher(tmp_path, preload=False)
    launcher.warm_up(["dataset", "train", "merge"], stage_env(tmp_path))
    assert launcher.server is None
    process = launcher.start("merge", tmp_path / "missing.json", stage_env(tmp_path), tmp_path / "stage.log")
    assert isinstance(process, subprocess.Popen) and process.wait(timeout=120) == 2


@pytest.mark.parametrize("preload", [True, False])
def test_a_stage_writes_its_log_afresh_whether_forked_or_started_afresh(tmp_path: Path, preload: bool) -> None:
    log_path = tmp_path / "convert.log"
    log_path.write_text("the attempt before\n", encoding="utf-8")
    launcher = StageLauncher(tmp_path, preload=preload)
    launcher.warm_up(["convert"], stage_env(tmp_path))
    try:
        process = launcher.start("convert", tmp_path / "missing.json", stage_env(tmp_path), log_path)
        assert isinstance(process, ForkedStage if preload else subprocess.Popen)
        assert process.wait(timeout=120) == 2
    finally:
        launcher.close()
    assert log_path.read_text(encoding="utf-8").startswith("kubetune-job: failed: ")


def test_the_server_preloads_only_torch_stages_and_only_on_hosts_without_gpus(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    assert set(STAGE_MODULES) == {"train", "merge", "convert", "evaluate"}  # dataset and publish start light
    launcher = StageLauncher(tmp_path, preload=True)
    launcher.warm_up(["dataset"], stage_env(tmp_path))
    assert launcher.server is None  # nothing heavy to come
    monkeypatch.setattr("kubetune.stage_launcher.glob", lambda pattern: ["/dev/nvidia0"] if "nvidia" in pattern else [])
    assert not fork_safe_host()
