"""A stage's imports print nothing: whatever a library says while it loads lands in every stage's log and in
`kubetune run`'s output (the stage server imports the next stage's modules while the one before it runs).

bitsandbytes, on a CPU with AVX512-BF16, warns that it cannot fetch an optional kernel from the Hugging Face hub
(`kernels-community`); we never fetch code from a hub at run time, so the package silences that logger."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kubetune.api.types import STAGES


@pytest.mark.parametrize("module", [*(f"kubetune.jobs.{stage}" for stage in STAGES), "kubetune.jobs.stage_server"])
def test_importing_a_stage_prints_nothing(module: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-P", "-c", f"import {module}"], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
