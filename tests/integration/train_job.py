"""The train job as a process (`python -m kubetune.jobs train --run run.json`), for the tests that signal it: its
stage references, how it is started, and what it reports in progress.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kubetune.stages import StageRef
from kubetune.store import Store

DATASET = StageRef("d" * 64, "default/demo/dataset/dddddddddddddddd")
TRAIN = StageRef("e" * 64, "default/demo/train/eeeeeeeeeeeeeeee")


def start_job(tmp: Path, run_json: Path, **env: str) -> subprocess.Popen[str]:
    """The train job with its scratch and cache under `tmp`, offline, plus `env`; stdout and stderr together."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "KUBETUNE_WORKDIR": str(tmp / "work"),
                   "KUBETUNE_CACHE": str(tmp / "cache"), **env}
    return subprocess.Popen([sys.executable, "-m", "kubetune.jobs", "train", "--run", str(run_json)],
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def progress(store: Store) -> dict[str, Any]:
    """The train stage's progress.json; empty before the job wrote one."""
    try:
        return dict(json.loads(store.get_bytes(f"{TRAIN.prefix}/progress.json")))
    except FileNotFoundError:
        return {}
