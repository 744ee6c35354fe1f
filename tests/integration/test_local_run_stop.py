"""`kubetune run` stopped by a signal: the running stage saves its state and exits with it, never left running
orphaned (a SIGTERM from `kill`, `timeout` or a CI cancel reaches only kubetune, not its stage process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.stage_launcher import fork_safe_host
from tests.fixtures.tiny_models import build_tiny_model, repo_root, small_bpe_tokenizer_dir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
CACHE = repo_root() / ".cache" / "test-models"
EXIT_STOPPED = 130  # kubetune run stopped by a signal; the same command resumes


def manifest(model_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneRun",
        "metadata": {"name": "stop"},
        "spec": {
            "baseModel": {"uri": str(model_dir)},
            "dataset": {"uri": "bundled", "categories": ["identity"], "maxSeqLength": 64},
            "training": {"method": "lora", "maxSteps": 100_000, "batchSize": 2, "device": "cpu", "compile": False,
                         "gradientCheckpointing": False, "loggingSteps": 1, "evalPrompts": [],
                         "checkpoint": {"everySteps": 100_000}},
        },
    }


def train_progress(workdir: Path) -> dict[str, Any]:
    for path in (workdir / ".kubetune" / "store" / "default" / "stop" / "train").glob("*/progress.json"):
        try:
            return dict(json.loads(path.read_text()))
        except ValueError:
            pass  # caught mid-write
    return {}


def processes_in(folder: Path) -> list[str]:
    """Processes working in `folder`: the stage's (started afresh or forked from the stage server) and the server."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cwd").resolve() == folder.resolve():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return found


def test_sigterm_to_kubetune_run_stops_the_stage_with_a_checkpoint_and_leaves_no_process(tmp_path: Path) -> None:
    model_dir = build_tiny_model("llama", CACHE / "stop-tiny-llama", tokenizer_dir=small_bpe_tokenizer_dir(
        CACHE / "stop-tokenizer"))
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(manifest(model_dir)), encoding="utf-8")
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cli = subprocess.Popen([sys.executable, "-P", "-m", "kubetune.cli", "run", str(run_file)], cwd=workdir, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while train_progress(workdir).get("step", 0) < 2:
            assert cli.poll() is None, cli.stderr.read() if cli.stderr else ""
            assert time.monotonic() < deadline, "training never reached step 2"
            time.sleep(0.5)
        cli.send_signal(signal.SIGTERM)
        _, stderr = cli.communicate(timeout=300)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == EXIT_STOPPED, stderr[-2000:]
    assert processes_in(workdir) == []
    progress = train_progress(workdir)
    assert progress["phase"] == "Stopped" and progress["lastCheckpoint"], progress
    # The run's logs are together in its own folder: each stage's and, where stages fork from it, the stage server's.
    run_folder = workdir / ".kubetune" / "runs" / "default" / "stop"
    server_log = {"stage-server.log"} if fork_safe_host() else set()
    assert {path.name for path in run_folder.glob("*.log")} == {"dataset.log", "train.log", *server_log}
