"""`kubetune run` on a manifest body in a subprocess, offline, with the store in the test's folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def run_manifest(tmp_path: Path, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(body), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-P", "-m", "kubetune.cli", "run", str(run_file), "--store",
                           str(tmp_path / "store")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=800, check=False)
