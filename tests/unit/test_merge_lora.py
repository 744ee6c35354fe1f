"""The streaming LoRA merge gives what peft's merge_and_unload gives, on tiny random Llama models (seconds).

The same comparison on SmolLM2 and on a tiny Qwen2 with a real tokenizer and added special tokens lives in
tests/integration/test_merge_stage.py (slow).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from kubetune.jobs.lora_merge import MergeResult, merge_adapter
from tests.fixtures.lora_adapters import make_lora_adapter, peft_merged_model

VOCAB = 256


def tiny_llama(out_dir: Path, *, tied: bool, hidden: int = 32, layers: int = 2) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        initializer_range=0.2,
    )
    model: Any = LlamaForCausalLM(config)
    model.to(torch.bfloat16).save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="module")
def untied_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("untied") / "base", tied=False)


@pytest.fixture(scope="module")
def tied_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tied") / "base", tied=True)


def merged_tensors(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(folder / shard), framework="pt") as handle:
            names = handle.keys()  # safe_open is not iterable
            tensors.update({name: handle.get_tensor(name) for name in names})
    assert set(tensors) == set(index["weight_map"])
    return tensors


def assert_matches_peft(ours: Path, reference: Any, dtype: torch.dtype = torch.bfloat16) -> None:
    """Same tensors and shapes as peft's merged model (within 1e-2), and a reload gives the same logits."""
    from transformers import AutoModelForCausalLM

    expected = {name: tensor for name, tensor in reference.state_dict().items()}
    got = merged_tensors(ours)
    config = json.loads((ours / "config.json").read_text())
    if config["tie_word_embeddings"]:
        expected.pop("lm_head.weight")
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == dtype, name
        assert got[name].shape == tensor.shape, name
        assert (got[name].float() - tensor.float()).abs().max().item() <= 1e-2, name

    reloaded = AutoModelForCausalLM.from_pretrained(str(ours), dtype=torch.float32)
    reference = reference.to(torch.float32)
    ids = torch.arange(0, reloaded.config.vocab_size, 7).reshape(1, -1)[:, :48]
    with torch.no_grad():
        ours_logits, ref_logits = reloaded(ids).logits, reference(ids).logits
    assert torch.allclose(ours_logits, ref_logits, atol=5e-2, rtol=0)
    assert torch.equal(ours_logits.argmax(-1), ref_logits.argmax(-1))


def merge(base: Path, adapter: Path, out: Path, **kwargs: Any) -> MergeResult:
    return merge_adapter(base, adapter, out, **kwargs)


ADAPTER_CASES: dict[str, tuple[bool, dict[str, Any], bool]] = {
    # name: (tied base, make_lora_adapter arguments, merged model ties its embeddings)
    "all-linear LoRA on an untied base": (False, {}, False),
    "all-linear LoRA on a tied base stays tied": (True, {}, True),
    "rsLoRA scale alpha/sqrt(r)": (False, {"use_rslora": True, "r": 4, "alpha": 8}, False),
    "some target modules only": (False, {"target_modules": ["q_proj", "v_proj"]}, False),
    "modules_to_save embed and lm_head on an untied base": (
        False,
        {"modules_to_save": ["embed_tokens", "lm_head"]},
        False,
    ),
    "modules_to_save both on a tied base: trained apart, so untied": (
        True,
        {"modules_to_save": ["embed_tokens", "lm_head"]},
        False,
    ),
    "modules_to_save embed only on a tied base: lm_head keeps the base rows, untied": (
        True,
        {"modules_to_save": ["embed_tokens"]},
        False,
    ),
    "modules_to_save grown for new tokens": (
        False,
        {"modules_to_save": ["embed_tokens", "lm_head"], "resize_to": VOCAB + 8},
        False,
    ),
    "embeddings peft saved whole because training resized them": (False, {"resize_to": VOCAB + 8}, False),
    "resized embeddings of a tied base": (True, {"resize_to": VOCAB + 8}, True),
    "trainable token rows on a tied base stay tied": (True, {"trainable_token_indices": [3, 5, 250]}, True),
    "trainable token rows for new tokens": (
        False,
        {"trainable_token_indices": list(range(VOCAB, VOCAB + 4)), "resize_to": VOCAB + 4},
        False,
    ),
    "trainable token rows for new tokens on a tied base": (
        True,
        {"trainable_token_indices": list(range(VOCAB, VOCAB + 4)), "resize_to": VOCAB + 4},
        True,
    ),
    "only the new token rows, saved without the embedding layers as the train stage saves them": (
        True,
        {"trainable_token_indices": list(range(VOCAB, VOCAB + 4)), "resize_to": VOCAB + 4,
         "save_embedding_layers": False},
        True,
    ),
}


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_merged_weights_equal_peft_merge_and_unload(
    case: str, untied_base: Path, tied_base: Path, tmp_path: Path
) -> None:
    tied_input, adapter_args, tied_output = ADAPTER_CASES[case]
    base = tied_base if tied_input else untied_base
    adapter = make_lora_adapter(base, tmp_path / "adapter", **adapter_args)

    result = merge(base, adapter, tmp_path / "merged")

    vocab = adapter_args.get("resize_to", VOCAB)
    assert result.tied_embeddings is tied_output
    assert result.vocab_size == vocab
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["vocab_size"] == vocab and config["tie_word_embeddings"] is tied_output
    assert_matches_peft(tmp_path / "merged", peft_merged_model(base, adapter, vocab_size=vocab))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_merge_writes_the_requested_dtype(dtype: torch.dtype, untied_base: Path, tmp_path: Path) -> None:
    adapter = make_lora_adapter(untied_base, tmp_path / "adapter")
    name = str(dtype).removeprefix("torch.")

    result = merge(untied_base, adapter, tmp_path / "merged", dtype=name)

    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert result.dtype == name and config["dtype"] == name and config["torch_dtype"] == name
    assert_matches_peft(tmp_path / "merged", peft_merged_model(untied_base, adapter, dtype), dtype)


def test_merge_splits_output_into_shards_with_an_index_and_reports_progress(untied_base: Path, tmp_path: Path) -> None:
    adapter = make_lora_adapter(untied_base, tmp_path / "adapter")
    progress: list[tuple[int, int]] = []

    result = merge(
        untied_base, adapter, tmp_path / "merged", max_shard_bytes=20_000, on_shard=lambda *p: progress.append(p)
    )

    assert len(result.shards) > 2
    assert sorted(p.name for p in (tmp_path / "merged").glob("*.safetensors")) == list(result.shards)
    assert progress == [(i, len(result.shards)) for i in range(1, len(result.shards) + 1)]
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())
    assert (
        index["metadata"]["total_size"]
        == result.total_bytes
        == sum(t.numel() * t.element_size() for t in merged_tensors(tmp_path / "merged").values())
    )
    assert_matches_peft(tmp_path / "merged", peft_merged_model(untied_base, adapter))


def test_merge_reads_a_sharded_base_and_drops_its_quantization_config(untied_base: Path, tmp_path: Path) -> None:
    first = merge(untied_base, make_lora_adapter(untied_base, tmp_path / "a1", seed=1), tmp_path / "sharded",
                  max_shard_bytes=30_000)
    adapter = make_lora_adapter(tmp_path / "sharded", tmp_path / "a2", seed=2)
    reference = peft_merged_model(tmp_path / "sharded", adapter)
    # As a base saved from a quantized training model would describe itself; the merged weights are plain bf16.
    config_path = tmp_path / "sharded" / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    config_path.write_text(json.dumps(config))

    second = merge(tmp_path / "sharded", adapter, tmp_path / "merged")

    assert len(first.shards) > 1 and len(second.shards) == 1
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    assert_matches_peft(tmp_path / "merged", reference)


def write_files(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


TOKENIZER_CASES: dict[str, tuple[dict[str, str], dict[str, str], dict[str, str]]] = {
    # name: (files in the base, files in the adapter, expected origin of each merged file)
    "base tokenizer when the adapter has none": (
        {
            "tokenizer_config.json": "{}",
            "special_tokens_map.json": "{}",
            "chat_template.jinja": "base",
            "generation_config.json": "{}",
        },
        {},
        {
            "tokenizer_config.json": "base",
            "special_tokens_map.json": "base",
            "chat_template.jinja": "base",
            "generation_config.json": "base",
        },
    ),
    "the adapter's tokenizer files as a set, never mixed with the base's": (
        {"tokenizer_config.json": "{}", "vocab.json": "{}", "merges.txt": "", "chat_template.jinja": "base"},
        {"tokenizer_config.json": "{}", "added_tokens.json": "{}", "chat_template.jinja": "adapter"},
        {"tokenizer_config.json": "adapter", "added_tokens.json": "adapter", "chat_template.jinja": "adapter"},
    ),
    "template from the base when training left it alone": (
        {"tokenizer_config.json": "{}", "chat_template.jinja": "base", "generation_config.json": "{}"},
        {"tokenizer_config.json": "{}"},
        {"tokenizer_config.json": "adapter", "chat_template.jinja": "base", "generation_config.json": "base"},
    ),
}


@pytest.mark.parametrize("case", list(TOKENIZER_CASES))
def test_tokenizer_template_and_generation_files_are_carried_over(case: str, untied_base: Path, tmp_path: Path) -> None:
    base_files, adapter_files, expected = TOKENIZER_CASES[case]
    base = tmp_path / "base"
    base.mkdir()
    for name in ("config.json", "model.safetensors"):
        (base / name).write_bytes((untied_base / name).read_bytes())
    adapter = make_lora_adapter(untied_base, tmp_path / "adapter")
    # Mark each file with where it came from (JSON files get a key, others their text).
    marked: Callable[[str, str, str], str] = lambda name, text, origin: (
        json.dumps({"origin": origin}) if name.endswith(".json") else origin
    )
    write_files(base, {name: marked(name, text, "base") for name, text in base_files.items()})
    write_files(adapter, {name: marked(name, text, "adapter") for name, text in adapter_files.items()})

    merge(base, adapter, tmp_path / "merged")

    out = tmp_path / "merged"
    extra = {p.name for p in out.iterdir()} - {"config.json", "model.safetensors.index.json"}
    extra = {name for name in extra if not name.endswith(".safetensors")}
    assert extra == set(expected)
    for name, origin in expected.items():
        assert marked(name, "", origin) == (out / name).read_text(), name


def test_a_stop_request_abandons_the_merge_without_leaving_output(untied_base: Path, tmp_path: Path) -> None:
    from kubetune.jobs.lora_merge import MergeStopped

    adapter = make_lora_adapter(untied_base, tmp_path / "adapter")
    calls: list[None] = []

    def stop_after_five_tensors() -> bool:
        calls.append(None)
        return len(calls) > 5

    with pytest.raises(MergeStopped):
        merge(untied_base, adapter, tmp_path / "out" / "merged", should_stop=stop_after_five_tensors)

    assert list((tmp_path / "out").iterdir()) == []
