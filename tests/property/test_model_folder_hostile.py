"""`kubetune check FOLDER --run RUN.yaml` on folders that are not models: no config.json, one that is not JSON or
not an object, any value in any field, an architecture the converter does not map, weights that are no safetensors.
Whatever the folder holds, the command ends in one line naming the folder (or a file in it) and exit 2: the
converter's "unsupported architecture None" or "config.json lacks 'num_attention_heads'" did not say which folder
was meant.

`kubetune run` reads a local base model's config.json before any stage: one that is not a JSON object (not UTF-8,
a BOM, bad syntax, nesting or integers past the parser, another type) is one line naming the file and exit 2; the
train stage failed on it with transformers' bare JSON error (exit 1, retried)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.property.cli_inputs import kubetune, manifest, write_sources
from tests.property.test_dataset_hostile import scratch

TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
              "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 2, "num_hidden_layers": 1,
              "vocab_size": 32, "rms_norm_eps": 1e-5, "max_position_embeddings": 64}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)


@st.composite
def config_files(draw: st.DrawFn) -> bytes | None:
    """config.json's bytes (None: no such file)."""
    kind = draw(st.sampled_from(["missing", "bytes", "value", "field", "architecture"]))
    if kind == "missing":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=60) | st.sampled_from([b"", b"{", b"\xef\xbb\xbf{}", b"[" * 5000 + b"]" * 5000]))
    if kind == "value":
        return json.dumps(draw(json_values)).encode()
    config: dict[str, Any] = dict(TINY_LLAMA)
    if kind == "architecture":
        config["architectures"] = draw(st.sampled_from([["GPT2LMHeadModel"], ["Gemma4ForCausalLM"], [], "llama",
                                                        ["LlamaForCausalLM", "MistralForCausalLM"], [None]]))
    else:
        config[draw(st.sampled_from(sorted(TINY_LLAMA)))] = draw(json_values)
    return json.dumps(config).encode()


weights = st.one_of(st.none(), st.binary(max_size=40), st.just(b"\xff" * 8 + b"{}"),
                    st.just((2).to_bytes(8, "little") + b"{}"), st.just((12).to_bytes(8, "little") + b'{"a": [1, 2]}'))


@given(config=config_files(), weight_bytes=weights)
def test_a_folder_that_is_not_a_model_is_one_line_naming_it(config: bytes | None, weight_bytes: bytes | None) -> None:
    with scratch() as root:
        model = root / "not-a-model"
        model.mkdir()
        if config is not None:
            (model / "config.json").write_bytes(config)
        if weight_bytes is not None:
            (model / "model.safetensors").write_bytes(weight_bytes)
        run = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": "hostile"},
               "spec": {"baseModel": {"uri": str(model)}}}
        (root / "run.json").write_text(json.dumps(run), encoding="utf-8")
        code, err = kubetune("check", str(model), "--run", str(root / "run.json"), "--workdir", str(root / "work"))
    assert code == 2 and len(err) == 1 and err[0].startswith("kubetune: "), err
    assert str(model) in err[0] or config is None and "neither" in err[0], err


def test_a_config_without_an_architecture_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}", encoding="utf-8")
    run = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun", "metadata": {"name": "hostile"}, "spec": {}}
    (tmp_path / "run.json").write_text(json.dumps(run), encoding="utf-8")
    code, err = kubetune("check", str(tmp_path / "model"), "--run", str(tmp_path / "run.json"))
    assert (code, err) == (2, [f"kubetune: {tmp_path / 'model'}: unsupported architecture None; supported: "
                               + err[0].split("supported: ", 1)[1]]), err


config_bytes = st.one_of(st.binary(max_size=60), json_values.map(lambda value: json.dumps(value).encode()),
                         st.sampled_from([b"{", b"\xef\xbb\xbf{}", b"[" * 5000 + b"]" * 5000, b"{}", b'{"a": 1}',
                                          b'{"a": ' + b"9" * 5000 + b"}", b'{"a": "\\ud800"}']))


@given(config_bytes)
def test_kubetune_run_refuses_a_model_config_no_stage_can_parse_before_any_stage(config: bytes) -> None:
    with scratch() as root, contextlib.chdir(root):
        write_sources(root)
        (root / "model" / "config.json").write_bytes(config)
        doc = json.loads(manifest("tree"))
        doc["spec"]["suspend"] = True  # sources resolved, then nothing runs
        (root / "run.yaml").write_text(json.dumps(doc), encoding="utf-8")
        code, err = kubetune("run", "run.yaml", "--store", "store")
    try:
        parsed: Any = json.loads(config.decode("utf-8"))
    except (ValueError, RecursionError):
        parsed = None
    lines = [line for line in err if not line.startswith("kubetune: running ")]
    if isinstance(parsed, dict) and not config.startswith(b"\xef\xbb\xbf"):
        assert code == 0 and len(lines) == 1 and "is suspended" in lines[0], err
    else:  # it failed the train stage with transformers' bare JSON error, exit 1 and retries
        assert code == 2 and lines == [lines[0]], err
        assert lines[0].startswith(f"kubetune: default/hostile: spec.baseModel.uri: {root}/model/config.json: "), err
