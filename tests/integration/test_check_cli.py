"""`kubetune check`: the evaluate gate by hand on a merged folder or a GGUF, with the run's prompts and types."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.llama.convert import convert
from tests.fixtures.tiny_models import build_tiny_model, small_bpe_tokenizer_dir

REPO = Path(__file__).resolve().parents[2]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("check")
    model = build_tiny_model("llama", root / "llama", tokenizer_dir=small_bpe_tokenizer_dir(root / "tokenizer"))
    (model / "chat_template.jinja").write_text((ROOT / "templates" / "chat_template.jinja").read_text())
    return model


def write_run(path: Path, expectation: str) -> Path:
    path.write_text(f"""apiVersion: kubetune.dev/v1alpha1
kind: FineTuneRun
metadata: {{name: check}}
spec:
  dataset: {{placeholders: {{NAME: Nova}}}}
  export: {{types: [f16]}}
  evaluate:
    prompts:
      - prompt: Who are you?
        {expectation}
    maxTokens: 8
""")
    return path


def kubetune(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubetune.cli", *args], capture_output=True, text=True, timeout=600,
                          check=False, env=env)


def test_a_merged_folder_is_converted_and_gated_with_agreement_figures(tiny_model: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.yaml", 'expectContains: ["${NAME}"]')
    result = kubetune("check", str(tiny_model), "--run", str(run), "--workdir", str(tmp_path / "work"))
    # A random tiny model does not know it is Nova: the gate fails, naming the prompt, the answer and why.
    assert result.returncode == 1
    assert "f16.gguf: 0% prompts, top-1" in result.stdout
    assert "[FAIL] 'Who are you?'" in result.stdout and "answer lacks 'Nova'" in result.stdout
    assert "gate failed:" in result.stderr
    assert sorted(p.name for p in (tmp_path / "work" / "gguf").iterdir()) == ["llama-f16.gguf"]


def test_without_a_workdir_the_merged_model_and_ggufs_are_not_left_behind(tiny_model: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.yaml", 'expectContains: ["${NAME}"]')
    temp = tmp_path / "temp"
    temp.mkdir()
    result = kubetune("check", str(tiny_model), "--run", str(run), env=dict(os.environ, TMPDIR=str(temp)))
    assert "f16.gguf: 0% prompts" in result.stdout, result.stderr
    assert list(temp.iterdir()) == []


def test_a_gguf_that_meets_the_expectations_passes(tiny_model: Path, tmp_path: Path) -> None:
    gguf = convert(tiny_model, tmp_path / "gguf", ["q8_0"])[0].path
    run = write_run(tmp_path / "run.yaml", 'expectNotContains: ["§ never generated §"]')
    result = kubetune("check", str(gguf), "--run", str(run))
    assert result.returncode == 0, result.stderr
    assert "llama-q8_0.gguf: 100% prompts" in result.stdout and "[pass] 'Who are you?'" in result.stdout
    assert "top-1" not in result.stdout  # no merged model to compare a bare GGUF with


def test_an_unknown_target_is_a_clear_error(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run.yaml", 'expectContains: ["x"]')
    result = kubetune("check", str(tmp_path), "--run", str(run))
    assert result.returncode == 2
    assert "neither a .gguf file, an adapter folder" in result.stderr


def test_a_run_with_relative_paths_is_read_as_kubetune_run_reads_it(tmp_path: Path) -> None:
    """examples/local-messages.yaml names its data as `./data/chats.jsonl`: relative to the manifest's folder, as
    `kubetune run` takes it (never the API server's refusal of a relative path)."""
    result = kubetune("check", str(tmp_path), "--run", str(REPO / "examples" / "local-messages.yaml"))
    assert result.returncode == 2
    assert "neither a .gguf file, an adapter folder" in result.stderr and "spec.dataset.uri" not in result.stderr
