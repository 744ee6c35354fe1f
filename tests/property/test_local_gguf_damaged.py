"""A finished run of every stage (a tiny random Llama, two LoRA steps, an f16 GGUF) whose published GGUF or convert
manifest was damaged: `kubetune ask` is one line naming the file, exit 2, and llama.cpp never sees it (it was handed
a truncated or changed GGUF, or whatever a symlink in the store led to); `kubetune run` again builds the convert
output afresh, after which `ask` answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune.store import LocalStore, read_manifest
from kubetune.store.verify import output_problem
from tests.fixtures.tiny_models import build_tiny_model, repo_root, small_bpe_tokenizer_dir
from tests.integration.local_run import run_manifest
from tests.property.cli_inputs import kubetune
from tests.property.scratch_files import overwrite

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
CACHE = repo_root() / ".cache" / "test-models"
ASK = ("ask", "run.yaml", "Who are you?", "--store", "store", "--max-tokens", "4")
SECRET = b"GGUF a file outside the store"


def tiny_manifest() -> dict[str, Any]:
    model = build_tiny_model("llama", CACHE / "stop-tiny-llama",
                             tokenizer_dir=small_bpe_tokenizer_dir(CACHE / "stop-tokenizer"))
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": "tiny"},
            "spec": {"baseModel": {"uri": str(model)},
                     "dataset": {"uri": "bundled", "categories": ["identity"], "maxSeqLength": 64,
                                 "tokenStats": False},
                     "training": {"method": "lora", "maxSteps": 2, "batchSize": 2, "device": "cpu", "compile": False,
                                  "gradientCheckpointing": False, "evalPrompts": [], "stopSequences": ["</output>"],
                                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
                     "export": {"types": ["f16"]},
                     "evaluate": {"prompts": [{"prompt": "Who are you?"}], "maxTokens": 4, "minPassRate": 0}}}


@dataclass(frozen=True)
class Converted:
    root: Path
    body: dict[str, Any]
    prefix: str  # the convert output's store folder
    gguf: str  # its GGUF's name

    @contextlib.contextmanager
    def copy(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="kubetune-gguf-damaged-") as scratch:
            root = Path(scratch, "run")
            shutil.copytree(self.root, root, symlinks=True)
            (Path(scratch) / "secret.gguf").write_bytes(SECRET)
            with contextlib.chdir(root):
                yield root
            assert (Path(scratch) / "secret.gguf").read_bytes() == SECRET


@pytest.fixture(scope="module")
def converted() -> Iterator[Converted]:
    with tempfile.TemporaryDirectory(prefix="kubetune-finished-") as folder:
        root, body = Path(folder), tiny_manifest()
        done = run_manifest(root, body)
        assert done.returncode == 0, done.stderr[-3000:]
        [output] = (root / "store" / "default" / "tiny" / "convert").iterdir()
        [gguf] = output.glob("*.gguf")
        (root / "run.yaml").write_text(json.dumps(body), encoding="utf-8")
        with contextlib.chdir(root):
            assert kubetune(*ASK)[0] == 0  # the whole run answers (and the imports ask makes are made)
        yield Converted(root, body, f"default/tiny/convert/{output.name}", gguf.name)


def _replace(path: Path, make: Callable[[Path], object]) -> None:
    path.unlink()
    make(path)


def _flip_last_byte(path: Path) -> None:
    data = path.read_bytes()
    overwrite(path, data[:-1] + bytes([data[-1] ^ 1]))


DAMAGE: dict[str, Callable[[Path], object]] = {
    "deleted": lambda path: path.unlink(),
    "cut short": lambda path: os.truncate(path, path.stat().st_size // 2),
    "one byte changed": lambda path: _flip_last_byte(path),
    "a link out": lambda path: _replace(path, lambda p: p.symlink_to(p.parents[6] / "secret.gguf")),
    "a link to /dev/zero": lambda path: _replace(path, lambda p: p.symlink_to("/dev/zero")),
    "a folder": lambda path: _replace(path, os.mkdir),
    "a pipe": lambda path: _replace(path, os.mkfifo),
}


@settings(max_examples=12)
@given(kind=st.sampled_from(sorted(DAMAGE)), which=st.sampled_from(["gguf", "manifest.json"]))
def test_ask_on_a_damaged_gguf_or_manifest_is_one_line_naming_it(converted: Converted, kind: str, which: str) -> None:
    with converted.copy() as root:
        name = converted.gguf if which == "gguf" else "manifest.json"
        DAMAGE[kind](root / "store" / converted.prefix / name)
        code, err = kubetune(*ASK)
        assert code == 2 and len(err) == 1 and err[0].startswith("kubetune: "), (kind, which, err)
        assert name in err[0] or "convert output of tiny is missing" in err[0], (kind, which, err)
        assert "outside the store" not in err[0]


def test_kubetune_run_builds_a_damaged_gguf_again_and_ask_answers(converted: Converted) -> None:
    with converted.copy() as root:
        DAMAGE["one byte changed"](root / "store" / converted.prefix / converted.gguf)
        again = run_manifest(root, converted.body)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"{converted.gguf}: its bytes changed since they were published" in again.stderr
        assert "building the convert stage's output again" in again.stderr
        status = json.loads((root / ".kubetune/runs/default/tiny/status.json").read_text(encoding="utf-8"))
        phases = {stage: view["phase"] for stage, view in status["status"]["stages"].items()}
        assert phases["convert"] == "Succeeded" and phases["train"] == "Cached", phases
        store = LocalStore(root / "store")
        manifest = read_manifest(store, converted.prefix)
        assert manifest is not None and output_problem(store, converted.prefix, manifest) is None
        code, err = kubetune(*ASK)
        assert code == 0, err
