"""Bad merge inputs fail with a clear error naming the tensor or file, and leave nothing behind."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kubetune.jobs.lora_merge import merge_adapter
from kubetune.jobs.lora_plan import MergeError
from tests.fixtures.lora_adapters import make_lora_adapter
from tests.unit.test_merge_lora import VOCAB, merged_tensors, tiny_llama

ADAPTER_WEIGHTS = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A base, an adapter made for it, and a base of another shape (hidden 48, 3 layers)."""
    root = tmp_path_factory.mktemp("merge-inputs")
    base = tiny_llama(root / "base", tied=False)
    other = tiny_llama(root / "other", tied=False, hidden=48, layers=3)
    adapter = make_lora_adapter(base, root / "adapter", r=8, alpha=16)
    return base, adapter, other


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def rewrite_adapter_tensors(adapter: Path, change: Callable[[dict[str, torch.Tensor]], object]) -> None:
    with safe_open(str(adapter / ADAPTER_WEIGHTS), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
    change(tensors)
    save_file(tensors, str(adapter / ADAPTER_WEIGHTS))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:40] = b"#" * 32
    path.write_bytes(bytes(data))


Breakage = Callable[[Path, Path, Path], tuple[Path, Path]]  # (base, adapter, other base) -> (base, adapter) to merge


def breaking_adapter(action: Callable[[Path], object]) -> Breakage:
    def breakage(base: Path, adapter: Path, other: Path) -> tuple[Path, Path]:
        action(adapter)
        return base, adapter

    return breakage


def breaking_base(action: Callable[[Path], object]) -> Breakage:
    def breakage(base: Path, adapter: Path, other: Path) -> tuple[Path, Path]:
        action(base)
        return base, adapter

    return breakage


def lm_head_of_width_48(adapter: Path) -> None:
    edit_json(adapter / "adapter_config.json", modules_to_save=["lm_head"])
    rewrite_adapter_tensors(adapter, lambda t: t.update({"base_model.model.lm_head.weight": torch.zeros(VOCAB, 48)}))


BAD_INPUTS: dict[str, tuple[Breakage, str]] = {
    "adapter made for a base of another width": (
        lambda base, adapter, other: (other, adapter),
        r"LoRA for model\.layers\.0\.\S+\.weight .* does not fit its shape .*another base"),
    "adapter targets a layer the base lacks": (
        lambda base, adapter, other: (base, make_lora_adapter(other, adapter.parent / "deep", r=4)),
        r"model\.layers\.2\.\S+\.weight, which the base model does not have"),
    "no adapter_config.json": (
        breaking_adapter(lambda a: (a / "adapter_config.json").unlink()), r"missing adapter_config\.json"),
    "no adapter weights": (
        breaking_adapter(lambda a: (a / ADAPTER_WEIGHTS).unlink()), r"missing adapter_model\.safetensors"),
    "no base config.json": (
        breaking_base(lambda b: (b / "config.json").unlink()), r"base model: missing config\.json"),
    "no base weights": (
        breaking_base(lambda b: (b / "model.safetensors").unlink()),
        r"no model\.safetensors or model\.safetensors\.index\.json"),
    "index naming a shard that is not there": (
        breaking_base(lambda b: (b / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))),
        r"missing weights file .*model-00002-of-00002\.safetensors"),
    "r in adapter_config.json differs from the weights": (
        breaking_adapter(lambda a: edit_json(a / "adapter_config.json", r=4)),
        r"rank of model\.layers\.0\.\S+ is inconsistent.*r=4"),
    "rank_pattern differs from the weights": (
        breaking_adapter(lambda a: edit_json(a / "adapter_config.json", rank_pattern={"q_proj": 2})),
        r"rank of model\.layers\.0\.self_attn\.q_proj is inconsistent.*r=2"),
    "zero lora_alpha": (
        breaking_adapter(lambda a: edit_json(a / "adapter_config.json", lora_alpha=0)),
        r"lora_alpha \(0\) must be positive"),
    "lora_B missing for a module": (
        breaking_adapter(lambda a: rewrite_adapter_tensors(
            a, lambda t: t.pop("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"))),
        r"model\.layers\.1\.mlp\.up_proj has no lora_B\.weight"),
    "a tensor that is neither LoRA nor modules_to_save": (
        breaking_adapter(lambda a: rewrite_adapter_tensors(
            a, lambda t: t.update({"base_model.model.model.norm.weight": torch.ones(32)}))),
        r"base_model\.model\.model\.norm\.weight is neither a LoRA weight nor"),
    "modules_to_save tensor of another width": (
        breaking_adapter(lm_head_of_width_48),
        r"lm_head\.weight has shape \[256, 48\], but lm_head\.weight is \[256, 32\]"),
    "DoRA adapter": (breaking_adapter(lambda a: edit_json(a / "adapter_config.json", use_dora=True)), r"use_dora is set"),
    "not a LoRA adapter": (
        breaking_adapter(lambda a: edit_json(a / "adapter_config.json", peft_type="IA3")), r"peft_type is 'IA3'"),
    "truncated adapter weights": (
        breaking_adapter(lambda a: truncate(a / ADAPTER_WEIGHTS)),
        r"adapter: .*adapter_model\.safetensors is not a valid safetensors file"),
    "garbled base header": (
        breaking_base(lambda b: garble_header(b / "model.safetensors")),
        r"base model: .*model\.safetensors is not a valid safetensors file"),
    "truncated base weights": (
        breaking_base(lambda b: truncate(b / "model.safetensors")),
        r"base model: .*model\.safetensors is not a valid safetensors file"),
    "adapter_config.json that is not JSON": (
        breaking_adapter(lambda a: (a / "adapter_config.json").write_text("{r: 8")),
        r"adapter_config\.json is not valid JSON"),
    "tokenizer with more tokens than the embeddings": (
        breaking_adapter(lambda a: (a / "tokenizer.json").write_text(json.dumps(
            {"model": {"vocab": {"a": 0, "b": 1}}, "added_tokens": [{"id": VOCAB + 3, "content": "<new>"}]}))),
        r"token ids up to 259 but the merged model has 256 embedding rows"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_clearly_and_writes_nothing(
    case: str, inputs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    for name, folder in zip(("base", "adapter", "other"), inputs, strict=True):
        shutil.copytree(folder, tmp_path / name)
    breakage, message = BAD_INPUTS[case]
    base, adapter = breakage(tmp_path / "base", tmp_path / "adapter", tmp_path / "other")
    out_parent = tmp_path / "out"

    with pytest.raises(MergeError, match=message):
        merge_adapter(base, adapter, out_parent / "merged")

    assert not out_parent.exists() or list(out_parent.iterdir()) == []


def test_an_existing_output_folder_is_never_overwritten(inputs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, adapter, _ = inputs
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "keep").write_text("x")

    with pytest.raises(FileExistsError):
        merge_adapter(base, adapter, tmp_path / "merged")

    assert [p.name for p in (tmp_path / "merged").iterdir()] == ["keep"]


def test_new_token_rows_the_adapter_does_not_hold_start_from_the_mean_embedding(
    inputs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    base, _, _ = inputs
    adapter = make_lora_adapter(base, tmp_path / "adapter", trainable_token_indices=[VOCAB, VOCAB + 1],
                                resize_to=VOCAB + 2)
    # As an adapter saved with save_embedding_layers=False: only the trained rows, not the resized layers.
    rewrite_adapter_tensors(adapter, lambda t: [t.pop(k) for k in list(t) if k.endswith("base_layer.weight")
                                                or k == "base_model.model.lm_head.weight"])

    merge_adapter(base, adapter, tmp_path / "merged")

    merged, original = merged_tensors(tmp_path / "merged"), merged_tensors_of_base(base)
    assert merged["lm_head.weight"].shape == (VOCAB + 2, 32)
    expected = original["lm_head.weight"].float().mean(dim=0)
    for row in (VOCAB, VOCAB + 1):
        assert torch.allclose(merged["lm_head.weight"][row].float(), expected, atol=1e-2)
    assert torch.equal(merged["lm_head.weight"][:VOCAB], original["lm_head.weight"])


def merged_tensors_of_base(base: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(base / "model.safetensors"), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
