"""`kubetune run` on the manifests `kubetune validate` accepts: whatever sources, base model and store a valid
manifest names (local paths that are not there, s3:// prefixes without credentials, hf:// models offline, endpoints
for a local store), the run resolves them or ends in one line and exit 2 — never a traceback. The runs are suspended,
so none gets past resolving its sources; `--store` keeps every store inside the test's folder (a manifest's own
storage.uri may name any absolute path)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given

from tests.property.cli_inputs import RUNNING, kubetune
from tests.property.test_manifest_hostile import valid_manifests


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """One folder for every example: its .kubetune/digests.json keeps the bundled model's sha256 between them."""
    env = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent/kubetune-aws-config",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/kubetune-aws-credentials", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="kubetune-hostile-") as folder, mock.patch.dict(os.environ, env), \
            contextlib.chdir(folder):
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            os.environ.pop(name, None)
        yield Path(folder)


@given(doc=valid_manifests)
def test_a_valid_manifest_runs_to_its_suspension_or_ends_in_one_line(doc: dict[str, Any], workdir: Path) -> None:
    doc["spec"]["suspend"] = True
    (workdir / "run.json").write_text(json.dumps(doc), encoding="utf-8")
    code, err = kubetune("run", "run.json", "--store", str(workdir / "store"))
    lines = [line for line in err if not line.startswith(RUNNING)]
    if code == 0:
        assert lines == [f"kubetune: {doc['metadata']['name']} is suspended (spec.suspend: true); nothing to do."]
    else:
        assert code == 2 and len(lines) == 1 and lines[0].startswith("kubetune: "), err
