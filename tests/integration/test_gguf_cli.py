"""The `python -m kubetune.llama` CLI, chat-template handling and chat generation on a tiny model (seconds)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFReader

from kubetune.llama.checks import generate_chat, load, render_chat
from kubetune.llama.convert import convert
from tests.fixtures.tiny_models import build_tiny_model, small_bpe_tokenizer_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    return build_tiny_model("llama", root / "llama", tokenizer_dir=small_bpe_tokenizer_dir(root / "tokenizer"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubetune.llama", *args], capture_output=True, text=True, check=False)


def test_convert_writes_each_outtype_and_inspect_shows_metadata_and_tensors(tiny_llama: Path, tmp_path: Path) -> None:
    result = run_cli(
        "convert", str(tiny_llama), "--outtype", "q8_0", "--outtype", "Q4_K_M", "-o", str(tmp_path), "--quiet"
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(kind, Path(path).name) for kind, _, _, path in lines] == [
        ("q8_0", "llama-q8_0.gguf"),
        ("q4_k_m", "llama-q4_k_m.gguf"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama-q4_k_m.gguf", "llama-q8_0.gguf"]

    shown = run_cli("inspect", str(tmp_path / "llama-q8_0.gguf"))
    assert shown.returncode == 0, shown.stderr
    assert "general.architecture" in shown.stdout and "llama" in shown.stdout
    assert "tokenizer.ggml.pre" in shown.stdout and "qwen2" in shown.stdout
    assert any(line.split()[:2] == ["blk.0.attn_q.weight", "Q8_0"] for line in shown.stdout.splitlines())


def test_convert_reports_bad_input_with_exit_code_2(tiny_llama: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    (broken / "tokenizer.json").unlink()
    result = run_cli("convert", str(broken), "--outtype", "f16", "-o", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "missing tokenizer files" in result.stderr


def test_chat_template_jinja_file_wins_over_tokenizer_config(tiny_llama: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    config_path = model / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "chat_template": "{{ 'config' }}"}))
    (model / "chat_template.jinja").unlink()
    [from_config] = convert(model, tmp_path / "config", ["f16"])
    (model / "chat_template.jinja").write_text("{{ 'jinja file' }}")
    [from_file] = convert(model, tmp_path / "file", ["f16"])
    assert GGUFReader(from_config.path).fields["tokenizer.chat_template"].contents() == "{{ 'config' }}"
    assert GGUFReader(from_file.path).fields["tokenizer.chat_template"].contents() == "{{ 'jinja file' }}"


def test_generate_chat_renders_our_template_and_stops_at_the_stop_sequence(tiny_llama: Path, tmp_path: Path) -> None:
    [gguf] = convert(tiny_llama, tmp_path, ["f16"])
    template = (tiny_llama / "chat_template.jinja").read_text()
    messages = [{"role": "user", "content": "who are you"}]
    assert render_chat(template, messages) == "<|im_start|>user\nwho are you<|im_end|>\n<|im_start|>assistant\n"
    llm = load(gguf.path, n_ctx=128)
    try:
        free = generate_chat(llm, messages, template, max_tokens=12)
        # A stop sequence from inside the text (llama-cpp-python does not check one that ends at max_tokens).
        stop = free[len(free) // 3 : len(free) // 3 + 2]
        stopped = generate_chat(llm, messages, template, stop=[stop], max_tokens=12) if stop else free
    finally:
        llm.close()
    assert free  # a random model still produces text
    assert stopped == free[: free.index(stop)]
