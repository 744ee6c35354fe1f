"""`kubetune run` tells the run's webhooks what the operator would: a real HTTP receiver on loopback, the real CLI in
a subprocess, the URL from the environment (as `KUBETUNE_SECRET_<NAME>_<KEY>`) or a secrets folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.webhook_receiver import Answer, Receiver, always

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

EVENTS = ["RunStarted", "StageSucceeded", "StageFailed", "RunSucceeded", "RunFailed"]


def _write_run(workdir: Path, fmt: str = "json", **dataset: Any) -> Path:
    manifest = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": "told"},
                "spec": {"dataset": {"tokenStats": False, **dataset},
                         "notify": {"webhooks": [{"urlSecret": {"name": "team-hooks", "key": "url"}, "format": fmt,
                                                  "events": EVENTS}]}}}
    path = workdir / "run.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def _kubetune_run(workdir: Path, run_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_SECRET")}
    environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env)
    return subprocess.run([sys.executable, "-P", "-m", "kubetune.cli", "run", str(run_file), "--to-stage", "dataset"],
                          cwd=workdir, env=environ, capture_output=True, text=True, timeout=200, check=False)


def test_kubetune_run_tells_the_webhook_its_start_and_each_stage_it_ran(tmp_path: Path) -> None:
    with Receiver(always(Answer())).serving() as receiver:
        done = _kubetune_run(tmp_path, _write_run(tmp_path), KUBETUNE_SECRET_TEAM_HOOKS_URL=receiver.url)

    assert done.returncode == 0, done.stderr
    assert receiver.events() == ["RunStarted", "StageSucceeded"]  # --to-stage dataset: the run goes on later
    started, dataset = receiver.bodies()
    assert started["run"]["name"] == "told" and started["stage"] is None
    assert dataset["stage"] == "dataset" and dataset["stagePhase"] == "Succeeded"
    assert "train_data.jsonl" in [a["name"] for a in dataset["artifacts"]] and len(dataset["outputDigest"]) == 64
    assert started["id"] != dataset["id"]


def test_a_failing_stage_is_told_as_a_slack_message_with_the_reason_from_a_secrets_folder_url(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets" / "team-hooks"
    secrets.mkdir(parents=True)
    with Receiver(always(Answer())).serving() as receiver:
        (secrets / "url").write_text(receiver.url + "\n")
        run_file = _write_run(tmp_path, "slack", categories=["no_such_category"])
        done = _kubetune_run(tmp_path, run_file, KUBETUNE_SECRETS_DIR=str(tmp_path / "secrets"))

    assert done.returncode == 2  # bad input (no such category): the stage's exit code
    assert receiver.events() == ["RunStarted", "StageFailed", "RunFailed"]
    failed = receiver.bodies("StageFailed")[0]
    assert failed["text"].startswith(":x: FineTuneRun default/told stage dataset failed:")
    assert "no_such_category" in failed["text"]


def test_a_webhook_url_kubetune_run_cannot_find_stops_it_before_anything_runs(tmp_path: Path) -> None:
    done = _kubetune_run(tmp_path, _write_run(tmp_path))

    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "spec.notify.webhooks[0].urlSecret" in line and "KUBETUNE_SECRET_TEAM_HOOKS_URL" in line
    assert not (tmp_path / ".kubetune").exists()
