"""Shared test setup: offline model hubs, fixture plugins."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# Nothing may come from a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch.compile's cache (the compiled-layer tests, and the stages they start, inherit it): torch would keep it in
# /tmp/torchinductor_<user> for good, hundreds of MB per suite run; here it lives for the session only.
_INDUCTOR_CACHE = None if "TORCHINDUCTOR_CACHE_DIR" in os.environ else tempfile.mkdtemp(prefix="kubetune-inductor-")
if _INDUCTOR_CACHE is not None:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.moto", "tests.fixtures.kube", "tests.fixtures.sources"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _INDUCTOR_CACHE is not None:
        shutil.rmtree(_INDUCTOR_CACHE, ignore_errors=True)
