"""Bad dataset input through `kubetune run`: the dataset stage ends with exit 2 and one located reason, and the run
fails at once — a config error is never retried (docs/contracts.md, exit codes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BLANK_NAME = """\
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneRun
metadata:
  name: blank
spec:
  dataset:
    placeholders: {NAME: " ", SPEC: an assistant}
    tokenStats: false
"""


def test_a_placeholder_the_schema_accepts_but_the_builder_refuses_fails_the_run_once_with_exit_2(
        tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(BLANK_NAME, encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-P", "-m", "kubetune.cli", "run", "run.yaml", "--store", "store"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr
    error = [line for line in done.stderr.splitlines() if "exited" in line or "failed" in line]
    log_path = tmp_path / ".kubetune/runs/default/blank/dataset.log"
    reason = "1 dataset error(s): spec.dataset.placeholders: placeholder NAME has an empty value"
    assert error == [f"kubetune: dataset exited with 2: {reason} (log: {log_path})"], done.stderr
    assert "Traceback" not in done.stderr
    state = tmp_path / ".kubetune" / "runs" / "default" / "blank"
    stage = json.loads((state / "status.json").read_text(encoding="utf-8"))["status"]["stages"]["dataset"]
    assert (stage["phase"], stage["attempts"]) == ("Failed", 1)
    log = (state / "dataset.log").read_text(encoding="utf-8")
    assert "Traceback" not in log and "hint: give NAME some text" in log
