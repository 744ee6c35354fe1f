"""The train stage refuses a base model folder it cannot use before any training step, with exit 2 and one line
naming `spec.baseModel.uri`: an architecture the convert stage cannot turn into a GGUF (it failed after training),
and a folder without a tokenizer transformers can load (exit 1, retried three times)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.property.cli_inputs import kubetune, manifest, write_sources

TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
              "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 2, "num_hidden_layers": 1,
              "vocab_size": 32, "rms_norm_eps": 1e-5, "max_position_embeddings": 64}
GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 2,
        "vocab_size": 32}


def run_to_train(root: Path, config: dict[str, Any]) -> tuple[int, list[str]]:
    with contextlib.chdir(root):
        write_sources(root)  # a dataset tree (token statistics off) and a model folder without tokenizer files
        (root / "model" / "config.json").write_text(json.dumps(config), encoding="utf-8")
        (root / "run.yaml").write_text(manifest("tree"), encoding="utf-8")
        return kubetune("run", "run.yaml", "--store", "store", "--to-stage", "train")


@pytest.mark.parametrize("config, why", [
    (GPT2, "spec.baseModel.uri: unsupported architecture ['GPT2LMHeadModel']; supported: LlamaForCausalLM"),
    (TINY_LLAMA, "spec.baseModel.uri: {root}/model: no tokenizer transformers can load: "),
], ids=["architecture-the-converter-lacks", "no-tokenizer"])
def test_a_base_model_the_run_cannot_use_is_refused_before_training(tmp_path: Path, config: dict[str, Any],
                                                                      why: str) -> None:
    code, err = run_to_train(tmp_path, config)
    assert code == 2, err
    assert err[-1].startswith(f"kubetune: train exited with 2: {why.format(root=tmp_path)}"), err
    log = (tmp_path / ".kubetune" / "runs" / "default" / "hostile" / "train.log").read_text(encoding="utf-8")
    assert "Traceback" not in log and "step 1/" not in log
    assert not list((tmp_path / "store").rglob("checkpoint-*"))  # nothing trained, nothing to resume
