"""Shared test setup: offline model hubs, fixture plugins."""

from __future__ import annotations

import os

# Nothing may come from a model hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.moto", "tests.fixtures.kube", "tests.fixtures.sources"]
