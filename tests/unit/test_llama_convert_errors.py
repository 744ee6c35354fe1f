"""Bad input fails with a clear ConversionError before anything is written, and no .gguf or partial file remains."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kubetune.llama.convert import convert
from kubetune.llama.errors import ConversionError
from tests.fixtures.tiny_models import build_tiny_model, small_bpe_tokenizer_dir


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-models")
    return build_tiny_model("qwen2", root / "qwen2", tokenizer_dir=small_bpe_tokenizer_dir(root / "tokenizer"))


@pytest.fixture
def model_dir(tiny_qwen2: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_qwen2, copy)
    return copy


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def unsupported_architecture(model: Path) -> None:
    edit_json(model / "config.json", lambda c: c.update(architectures=["GPT2LMHeadModel"], model_type="gpt2"))


def missing_tokenizer_files(model: Path) -> None:
    (model / "tokenizer.json").unlink()


def tokenizer_larger_than_embedding(model: Path) -> None:
    def add_token(tokenizer: dict) -> None:
        rows = json.loads((model / "config.json").read_text())["vocab_size"]
        tokenizer["added_tokens"].append(
            {
                "id": rows,
                "content": "<extra>",
                "special": True,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
            }
        )

    edit_json(model / "tokenizer.json", add_token)


def config_vocab_size_differs_from_embedding(model: Path) -> None:
    edit_json(model / "config.json", lambda c: c.update(vocab_size=c["vocab_size"] + 8))


def unknown_pre_tokenizer(model: Path) -> None:
    edit_json(
        model / "tokenizer.json",
        lambda t: t["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\p{N}{1,7}|\s+"),
    )


def bitsandbytes_quantization_config(model: Path) -> None:
    edit_json(
        model / "config.json",
        lambda c: c.update(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True}),
    )


def uint8_weights(model: Path) -> None:
    weights = load_file(str(model / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    weights[name] = torch.zeros(weights[name].numel() // 2, 1, dtype=torch.uint8)
    save_file(weights, str(model / "model.safetensors"))


def truncated_weights(model: Path) -> None:
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def pytorch_bin_instead_of_safetensors(model: Path) -> None:
    (model / "model.safetensors").rename(model / "pytorch_model.bin")


@pytest.mark.parametrize(
    ("break_model", "message"),
    [
        (unsupported_architecture, "unsupported architecture.*GPT2LMHeadModel"),
        (missing_tokenizer_files, "missing tokenizer files"),
        (tokenizer_larger_than_embedding, "vocabulary size mismatch"),
        (config_vocab_size_differs_from_embedding, "token embedding is .* vocab_size"),
        (unknown_pre_tokenizer, r"unknown pre-tokenizer.*\\\\p\{N\}\{1,7\}"),
        (bitsandbytes_quantization_config, "quantized \\(bitsandbytes\\)"),
        (uint8_weights, "stored as U8"),
        (truncated_weights, "truncated"),
        (pytorch_bin_instead_of_safetensors, "no \\*.safetensors weights.*pytorch_model.bin"),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_bad_input_is_rejected_before_writing(
    model_dir: Path, tmp_path: Path, break_model: Callable[[Path], None], message: str
) -> None:
    break_model(model_dir)
    out_dir = tmp_path / "out"
    with pytest.raises(ConversionError, match=message):
        convert(model_dir, out_dir, ["f16", "q8_0", "q4_k_m"])
    assert not out_dir.exists()


def test_an_unknown_output_type_is_rejected(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="unknown output type 'q9_9'"):
        convert(model_dir, tmp_path / "out", ["f16", "q9_9"])
    assert not (tmp_path / "out").exists()


def test_a_failure_while_writing_leaves_no_gguf_behind(model_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    (out_dir / "model-q8_0.gguf").mkdir(parents=True)  # the q8_0 output cannot be renamed into place
    with pytest.raises(OSError):
        convert(model_dir, out_dir, ["f16", "q8_0"])
    assert [p.name for p in out_dir.rglob("*") if p.is_file()] == []


def test_a_successful_conversion_reports_each_file_with_size_and_sha256(model_dir: Path, tmp_path: Path) -> None:
    import hashlib

    files = convert(model_dir, tmp_path / "out", ["q8_0", "f16", "F16"])
    assert [f.outtype for f in files] == ["q8_0", "f16"]
    for file in files:
        assert file.path.name == f"model-{file.outtype}.gguf"
        assert file.size == file.path.stat().st_size
        assert file.sha256 == hashlib.sha256(file.path.read_bytes()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model-f16.gguf", "model-q8_0.gguf"]
