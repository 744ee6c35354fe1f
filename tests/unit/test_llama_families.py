"""Family-specific conversion rules, on tiny models with a small real BPE tokenizer (seconds, no llama.cpp run).

Gemma's (1 + w) norm weights are stored +1, its sliding-window layout and rope bases travel as metadata, Phi-3's fused
projections keep their shapes, and the settings llama.cpp cannot express are refused before anything is written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFReader
from safetensors.torch import load_file

from kubetune.llama.convert import convert
from kubetune.llama.errors import ConversionError
from kubetune.llama.tensors import value_head_order
from kubetune.llama.tokenizer_export import SEQUENCE_PRE_TOKENIZERS, pre_tokenizer_name
from tests.fixtures.tiny_models import Family, build_tiny_model, small_bpe_tokenizer_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Family], Path]:
    root = tmp_path_factory.mktemp("families")
    tokenizer_dir = small_bpe_tokenizer_dir(root / "tokenizer")

    def build(family: Family) -> Path:
        tie = family.startswith("gemma")
        return build_tiny_model(family, root / family, tokenizer_dir=tokenizer_dir, tie_embeddings=tie)

    return build


def copy_with_config(model: Path, tmp_path: Path, **changes: Any) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    config = json.loads((copy / "config.json").read_text())
    config.update(changes)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def fields_and_tensors(gguf: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    reader = GGUFReader(gguf)
    return (
        {key: field.contents() for key, field in reader.fields.items() if not key.startswith("tokenizer.")},
        {tensor.name: np.asarray(tensor.data) for tensor in reader.tensors},
    )


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_gemma_norm_weights_are_stored_plus_one_and_its_attention_layout_travels_as_metadata(
    tiny: Callable[[Family], Path], tmp_path: Path, family: Family
) -> None:
    model = tiny(family)
    [gguf] = convert(model, tmp_path, ["f32"])
    fields, tensors = fields_and_tensors(gguf.path)
    weights = {name: tensor.float().numpy() for name, tensor in load_file(model / "model.safetensors").items()}
    pairs = {
        "output_norm.weight": "model.norm.weight",
        "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
        "blk.0.post_attention_norm.weight": "model.layers.0.post_attention_layernorm.weight",
        "blk.1.ffn_norm.weight": "model.layers.1.pre_feedforward_layernorm.weight",
        "blk.1.post_ffw_norm.weight": "model.layers.1.post_feedforward_layernorm.weight",
    }
    if family == "gemma3":
        pairs["blk.0.attn_q_norm.weight"] = "model.layers.0.self_attn.q_norm.weight"
    for gguf_name, hf_name in pairs.items():
        np.testing.assert_allclose(tensors[gguf_name], weights[hf_name] + 1.0, rtol=1e-6, err_msg=gguf_name)
    np.testing.assert_array_equal(tensors["token_embd.weight"], weights["model.embed_tokens.weight"])
    assert "output.weight" not in tensors
    assert fields[f"{family}.attention.sliding_window"] == 16
    assert fields[f"{family}.attention.sliding_window_pattern"] == [True, False]
    if family == "gemma2":
        assert fields["gemma2.attn_logit_softcapping"] == 50.0 and fields["gemma2.final_logit_softcapping"] == 30.0
    else:
        assert fields["gemma3.rope.freq_base"] == 1e6 and fields["gemma3.rope.freq_base_swa"] == 1e4
        assert "gemma3.attn_logit_softcapping" not in fields


def test_phi3_keeps_its_fused_qkv_and_gate_up_projections(tiny: Callable[[Family], Path], tmp_path: Path) -> None:
    model = tiny("phi3")
    [gguf] = convert(model, tmp_path, ["f32"])
    fields, tensors = fields_and_tensors(gguf.path)
    weights = {name: tensor.float().numpy() for name, tensor in load_file(model / "model.safetensors").items()}
    assert fields["general.architecture"] == "phi3"
    np.testing.assert_array_equal(tensors["blk.1.attn_qkv.weight"], weights["model.layers.1.self_attn.qkv_proj.weight"])
    np.testing.assert_array_equal(tensors["blk.1.ffn_up.weight"], weights["model.layers.1.mlp.gate_up_proj.weight"])
    assert tensors["blk.1.attn_qkv.weight"].shape == (64 + 2 * 32, 64)  # 4 query heads, 2 KV heads of 16
    assert tensors["blk.1.ffn_up.weight"].shape == (2 * 128, 64)


@pytest.mark.parametrize(
    ("family", "changes", "message"),
    [
        ("gemma2", {"tie_word_embeddings": False}, "untied embeddings"),
        ("gemma2", {"query_pre_attn_scalar": 256}, "query_pre_attn_scalar 256"),
        ("gemma2", {"attn_logit_softcapping": None}, "without attn_logit_softcapping"),
        ("gemma2", {"layer_types": ["full_attention"]}, "layer_types must be a list of 2"),
        ("gemma3", {"attn_logit_softcapping": 50.0}, "does not soft-cap attention"),
        (
            "gemma3",
            {"rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 8.0}, "full_attention": {}}},
            "sliding-window layers",
        ),
        ("phi3", {"partial_rotary_factor": 0.75}, "partial_rotary_factor 0.75"),
        ("qwen35", {"layer_types": ["full_attention", "linear_attention"]}, "one full-attention layer every n"),
        ("qwen35", {"linear_num_value_heads": 3}, "not a multiple of linear_num_key_heads"),
        ("qwen35", {"linear_value_head_dim": 32}, "one head size"),
        ("phi3", {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}},
         "unsupported rope scaling type 'longrope'"),
    ],
)
def test_what_llama_cpp_cannot_express_is_refused_before_writing(
    tiny: Callable[[Family], Path], tmp_path: Path, family: Family, changes: dict[str, Any], message: str
) -> None:
    model = copy_with_config(tiny(family), tmp_path, **changes)
    if "rope_scaling" in changes:
        config = json.loads((model / "config.json").read_text())
        config.pop("rope_parameters", None)
        (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=message):
        convert(model, tmp_path / "out", ["f16"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("steps", "name"), [(steps, name) for steps, name in SEQUENCE_PRE_TOKENIZERS])
def test_deepseek_pre_tokenizers_are_recognised_and_a_changed_step_is_not(steps: list[dict[str, Any]], name: str) -> None:
    full = [*steps[:-1], {**steps[-1], "trim_offsets": True}]  # as tokenizer.json spells the ByteLevel step
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": full}}) == name
    changed = [*full[:-2], {"type": "Digits", "individual_digits": not full[-2]["individual_digits"]}, full[-1]]
    with pytest.raises(ConversionError, match="unknown pre-tokenizer"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": changed}})


def gemma_style_tokenizer(model: Path, tmp_path: Path) -> Path:
    """`model` with a small tokenizer of Gemma's shape (byte-fallback BPE, spaces as ▁) as its only tokenizer file."""
    from transformers import GemmaTokenizer

    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *(f"<0x{byte:02X}>" for byte in range(256)),
              "▁", "h", "i", "hi", "▁hi"]
    merges = [("h", "i"), ("▁", "hi")]
    copy = tmp_path / "gemma-style"
    shutil.copytree(model, copy)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (copy / name).unlink(missing_ok=True)
    tokenizer = GemmaTokenizer(vocab={piece: i for i, piece in enumerate(pieces)}, merges=merges)  # type: ignore[arg-type]
    tokenizer.save_pretrained(str(copy))
    return copy


def test_a_gemma_style_tokenizer_json_becomes_llama_cpps_gemma4_vocabulary_with_byte_tokens(
    tiny: Callable[[Family], Path], tmp_path: Path
) -> None:
    model = gemma_style_tokenizer(tiny("gemma3"), tmp_path)
    [gguf] = convert(model, tmp_path / "out", ["f16"])
    fields = GGUFReader(gguf.path).fields
    assert fields["tokenizer.ggml.model"].contents() == "gemma4"
    types = fields["tokenizer.ggml.token_type"].contents()
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert [types[tokens.index(t)] for t in ("<bos>", "<0x41>", "▁hi")] == [3, 6, 1]  # CONTROL, BYTE, NORMAL
    assert fields["tokenizer.ggml.merges"].contents() == ["h i", "▁ hi"]
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True


def test_a_sentencepiece_style_tokenizer_json_with_a_prefix_space_is_refused(
    tiny: Callable[[Family], Path], tmp_path: Path
) -> None:
    # Llama 2's exported tokenizer.json prepends ▁, which llama.cpp's gemma4 tokenizer would not: without its
    # tokenizer.model, it cannot be converted faithfully.
    model = gemma_style_tokenizer(tiny("gemma3"), tmp_path)
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                                   tokenizer["normalizer"]]}
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ConversionError, match="unsupported tokenizer.json"):
        convert(model, tmp_path / "out", ["f16"])
    assert not (tmp_path / "out").exists()


def test_qwen35_linear_attention_becomes_llama_cpps_ssm_tensors_with_its_value_heads_regrouped(
    tiny: Callable[[Family], Path], tmp_path: Path
) -> None:
    model = tiny("qwen35")
    [gguf] = convert(model, tmp_path, ["f32"])
    fields, tensors = fields_and_tensors(gguf.path)
    weights = {name: tensor.float().numpy() for name, tensor in load_file(model / "model.safetensors").items()}
    hf = "model.layers.0.linear_attn."
    tiled = value_head_order(2, 4, 1)  # value heads grouped by key head (v0 v1 | v2 v3) → tiled (v0 v2 v1 v3)
    assert tiled.tolist() == [0, 2, 1, 3]
    np.testing.assert_allclose(tensors["blk.0.ssm_a"], -np.exp(weights[hf + "A_log"][tiled]), rtol=1e-6)
    np.testing.assert_array_equal(tensors["blk.0.ssm_dt.bias"], weights[hf + "dt_bias"][tiled])
    np.testing.assert_array_equal(tensors["blk.0.ssm_beta.weight"], weights[hf + "in_proj_b.weight"][tiled])
    np.testing.assert_array_equal(tensors["blk.0.ssm_out.weight"],
                                  weights[hf + "out_proj.weight"][:, value_head_order(2, 4, 16)])
    conv = weights[hf + "conv1d.weight"][:, 0, :]  # (channels, 1, kernel) → (channels, kernel)
    np.testing.assert_array_equal(tensors["blk.0.ssm_conv1d.weight"][:64], conv[:64])  # q and k channels stay
    np.testing.assert_array_equal(tensors["blk.0.ssm_conv1d.weight"][64:], conv[64:][value_head_order(2, 4, 16)])
    # (1 + w) norms, except the gated norm of the linear attention, which scales by w
    np.testing.assert_allclose(tensors["blk.1.attn_q_norm.weight"],
                               weights["model.layers.1.self_attn.q_norm.weight"] + 1.0, rtol=1e-6)
    np.testing.assert_array_equal(tensors["blk.0.ssm_norm.weight"], weights[hf + "norm.weight"])
    assert tensors["blk.1.attn_q.weight"].shape == (2 * 4 * 16, 64)  # each head's query and output gate
    assert (fields["qwen35.ssm.group_count"], fields["qwen35.ssm.time_step_rank"]) == (2, 4)
    assert (fields["qwen35.ssm.state_size"], fields["qwen35.ssm.inner_size"], fields["qwen35.ssm.conv_kernel"]) == (
        16, 64, 4)
    assert fields["qwen35.full_attention_interval"] == 2
    assert fields["qwen35.rope.dimension_count"] == 8 and fields["qwen35.rope.dimension_sections"] == [2, 1, 1, 0]
