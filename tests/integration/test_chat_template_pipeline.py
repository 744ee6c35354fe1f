"""A run's chat template goes from `spec.training.chatTemplate` through every stage: `kubetune run` trains a tiny
random Llama for two steps with it, merges, converts to GGUF and gates in llama.cpp. The checkpoint, the merged model
and the GGUF carry the template, the train output records which one was used, and the gate's prompt is the training
prompt, character for character and token for token, for a non-ChatML template (Phi-3's, from the shared vocab files,
on the Llama-3 vocabulary, whose markers the run adds as special tokens).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from kubetune.chat_templates import chatml_template, end_of_turn
from kubetune.jobs.train_data import render, template_variables, tokenize_conversation
from kubetune.llama.checks import chat_prompt_tokens, load
from kubetune.llama.gguf_reader import read_gguf_header
from kubetune.store import open_store, read_manifest
from tests.fixtures.tiny_models import (
    build_tiny_model,
    repo_root,
    small_bpe_tokenizer_dir,
    vocab_gguf_path,
    vocab_tokenizer_dir,
)
from tests.integration.local_run import run_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]
CACHE = repo_root() / ".cache" / "test-models"
QUESTION = [{"role": "user", "content": "Who are you?"}]


def phi3_template() -> str:
    """Phi-3's own chat template, as its GGUF vocabulary file carries it."""
    template = read_gguf_header(vocab_gguf_path("llama-bpe").with_name("ggml-vocab-phi-3.gguf")).string(
        "tokenizer.chat_template")
    assert template is not None and "<|end|>" in template
    return template


def llama3_vocab_model() -> Path:
    """A tiny Llama on the Llama-3 vocabulary; its tokenizer has no chat template of its own."""
    return build_tiny_model("llama", CACHE / "train-tiny-llama-llama-bpe",
                            tokenizer_dir=vocab_tokenizer_dir("llama-bpe", CACHE / "vocab-llama-bpe"))


def small_model_with_own_template() -> Path:
    """A tiny Llama on a 400-token BPE vocabulary whose tokenizer has a ChatML template of its own."""
    return build_tiny_model("llama", CACHE / "stop-tiny-llama", tokenizer_dir=small_bpe_tokenizer_dir(
        CACHE / "stop-tokenizer"))


def small_model_without_template(tmp_path: Path) -> Path:
    """The same model with its template taken out: `base` falls back to ChatML."""
    folder = tmp_path / "no-template"
    shutil.copytree(small_model_with_own_template(), folder)
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def manifest(model_dir: Path, chat_template: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneRun",
        "metadata": {"name": "template"},
        "spec": {
            "baseModel": {"uri": str(model_dir)},
            "dataset": {"uri": "bundled", "categories": ["identity"], "maxSeqLength": 96},
            "training": {"method": "lora", "maxSteps": 2, "batchSize": 2, "device": "cpu", "compile": False,
                         "gradientCheckpointing": False, "evalPrompts": [], "stopSequences": ["</output>"],
                         "chatTemplate": chat_template},
            "export": {"types": ["f16"]},
            "evaluate": {"prompts": [{"prompt": "Who are you?"}], "minTop1Agreement": 0.0},
        },
    }


def stage_output(tmp_path: Path, stage: str) -> tuple[Path, dict[str, Any]]:
    """The published folder of `stage` and its manifest's metadata."""
    store = open_store(str(tmp_path / "store"))
    (folder,) = (tmp_path / "store" / "default" / "template" / stage).iterdir()
    manifest_ = read_manifest(store, f"default/template/{stage}/{folder.name}")
    assert manifest_ is not None, f"{stage} published nothing"
    return folder, dict(manifest_.metadata)


def only(folder: Path, pattern: str) -> Path:
    (found,) = folder.rglob(pattern)
    return found


@pytest.mark.parametrize("case", ["inline-phi3", "file-phi3", "base-own", "base-without-one"])
def test_the_run_template_is_trained_carried_into_every_artifact_and_rendered_alike_by_the_gate(
    tmp_path: Path, case: str
) -> None:
    expected = phi3_template()
    if case == "inline-phi3":  # on the real Llama-3 vocabulary (slower: 128k embedding rows to merge and convert)
        model_dir, source, spec = llama3_vocab_model(), "inline", {"source": "inline", "inline": expected}
    elif case == "file-phi3":
        (tmp_path / "phi3.jinja").write_text(expected, encoding="utf-8")
        model_dir, source, spec = small_model_with_own_template(), "file", {"source": "file",
                                                                            "file": str(tmp_path / "phi3.jinja")}
    elif case == "base-own":
        model_dir, source, spec = small_model_with_own_template(), "base", {"source": "base"}
        expected = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    else:
        model_dir, source, spec = small_model_without_template(tmp_path), "chatml", {}  # base is the default
        expected = chatml_template()
    result = run_manifest(tmp_path, manifest(model_dir, spec))
    assert result.returncode == 0, result.stderr[-3000:]

    _, train = stage_output(tmp_path, "train")
    assert train["chatTemplate"]["source"] == source
    merged, _ = stage_output(tmp_path, "merge")
    assert (only(merged, "chat_template.jinja")).read_text(encoding="utf-8") == expected
    assert json.loads(only(merged, "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"] == expected
    converted, _ = stage_output(tmp_path, "convert")
    gguf = only(converted, "*.gguf")
    assert read_gguf_header(gguf).string("tokenizer.chat_template") == expected
    _, evaluate = stage_output(tmp_path, "evaluate")
    assert evaluate["results"], evaluate

    # The gate's prompt for a question is the training rendering of it, and so are its tokens.
    tokenizer = AutoTokenizer.from_pretrained(str(only(merged, "tokenizer.json").parent))
    marker = end_of_turn(expected, **template_variables(tokenizer))
    assert marker is not None and marker in tokenizer.get_vocab(), "the end-of-turn marker is one token"
    training_prompt = render(tokenizer, QUESTION, generation_prompt=True)
    training_ids = tokenize_conversation(tokenizer, [*QUESTION, {"role": "assistant", "content": "x"}], 4096).input_ids
    llm = load(gguf, n_ctx=256)
    try:
        gate_prompt, gate_ids = chat_prompt_tokens(llm, QUESTION, expected)
    finally:
        llm.close()
    assert gate_prompt == training_prompt
    assert gate_ids == training_ids[: len(gate_ids)]
    if case.endswith("phi3"):
        assert {"<|end|>", "<|user|>", "<|assistant|>"} <= set(train["addedTokens"])
