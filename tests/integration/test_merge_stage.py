"""The merge stage on real models: SmolLM2 and a tiny Qwen2 with a real tokenizer and added special tokens give what
peft's merge_and_unload gives, and `python -m kubetune.jobs merge` publishes the merged folder from the train output.

That the merged model gives the trained identity answer is shown end to end, after real training
(tests/e2e), since only a trained adapter knows that answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api.types import FineTuneRunSpec
from kubetune.jobs.basemodel import resolve_base_model
from kubetune.jobs.lora_merge import merge_adapter
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.stages import StageRef
from kubetune.store import open_store, publish, read_manifest
from tests.fixtures.lora_adapters import make_lora_adapter, peft_merged_model
from tests.fixtures.tiny_models import build_tiny_model, vocab_tokenizer_dir
from tests.unit.test_merge_lora import assert_matches_peft

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ADDED_TOKENS = ["<|kubetune_think|>", "<|kubetune_output|>", "<|kubetune_end|>"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_base_model(
        FineTuneRunSpec().base_model, store_factory=open_store, cache_dir=tmp_path_factory.mktemp("kubetune-cache")
    )


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qwen2")
    return build_tiny_model("qwen2", root / "model", tokenizer_dir=vocab_tokenizer_dir("qwen2", root / "tokenizer"))


def test_smollm2_merge_equals_peft_merge_and_unload(smollm2: Path, tmp_path: Path) -> None:
    adapter = make_lora_adapter(smollm2, tmp_path / "adapter", r=8, alpha=16)

    result = merge_adapter(smollm2, adapter, tmp_path / "merged")

    assert result.tied_embeddings and result.vocab_size == 49152 and result.lora_modules == 30 * 7
    assert_matches_peft(tmp_path / "merged", peft_merged_model(smollm2, adapter))


def test_qwen2_with_added_special_tokens_equals_peft_and_keeps_the_tokens(tiny_qwen2: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    adapter = make_lora_adapter(tiny_qwen2, tmp_path / "adapter", added_tokens=ADDED_TOKENS,
                                modules_to_save=["embed_tokens", "lm_head"])
    base_vocab = json.loads((tiny_qwen2 / "config.json").read_text())["vocab_size"]
    trained_tokenizer: Any = AutoTokenizer.from_pretrained(str(adapter))

    result = merge_adapter(tiny_qwen2, adapter, tmp_path / "merged", dtype="bfloat16")

    assert result.vocab_size == len(trained_tokenizer) > base_vocab
    assert_matches_peft(tmp_path / "merged", peft_merged_model(tiny_qwen2, adapter))
    merged_tokenizer: Any = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    text = "".join(ADDED_TOKENS)
    assert merged_tokenizer(text)["input_ids"] == trained_tokenizer(text)["input_ids"]
    added_ids = merged_tokenizer.convert_tokens_to_ids(ADDED_TOKENS)
    assert merged_tokenizer(text, add_special_tokens=False)["input_ids"] == added_ids  # one id each
    assert all(i < result.vocab_size for i in added_ids)
    assert (tmp_path / "merged" / "chat_template.jinja").read_text() == (tiny_qwen2 / "chat_template.jinja").read_text()


# --- the job ------------------------------------------------------------------------------------------------------

TRAIN_KEY, MERGE_KEY = "a" * 64, "b" * 64


def job_setup(tmp_path: Path, base: Path, adapter: Path, merge: dict[str, object]) -> tuple[Path, RunConfig]:
    """A store holding a published train output (adapter/ and a checkpoint) and the run config of its merge job."""
    store_root = tmp_path / "store"
    store = open_store(str(store_root))
    train_prefix = "default/demo/train/aaaaaaaaaaaaaaaa"
    train_out = tmp_path / "train-out"
    (train_out / "adapter").mkdir(parents=True)
    for file in adapter.iterdir():
        (train_out / "adapter" / file.name).write_bytes(file.read_bytes())
    (train_out / "metrics.csv").write_text("step,loss\n1,2.0\n")
    checkpoint = tmp_path / "checkpoint"  # the adapter files beside the training state, as the train stage saves
    checkpoint.mkdir()
    for file in adapter.iterdir():
        (checkpoint / file.name).write_bytes(file.read_bytes())
    (checkpoint / "trainer_state.json").write_text("{}")
    publish(store, f"{train_prefix}/checkpoints/checkpoint-00000002", checkpoint, stage="train", input_key=TRAIN_KEY)
    publish(store, train_prefix, train_out, stage="train", input_key=TRAIN_KEY)
    spec = FineTuneRunSpec.model_validate({"baseModel": {"uri": str(base)}, "merge": merge})
    run = RunConfig(
        name="demo",
        namespace="default",
        spec=spec,
        store=StoreConfig(uri=str(store_root)),
        stages={
            "dataset": StageRef("c" * 64, "default/demo/dataset/cccccccccccccccc"),
            "train": StageRef(TRAIN_KEY, train_prefix),
            "merge": StageRef(MERGE_KEY, "default/demo/merge/bbbbbbbbbbbbbbbb"),
        },
    )
    run_path = tmp_path / "run.json"
    run_path.write_text(run.dumps())
    return run_path, run


def run_merge_job(run_path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {"KUBETUNE_WORKDIR": str(tmp_path / "work"), "KUBETUNE_CACHE": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "kubetune.jobs", "merge", "--run", str(run_path)],
                          check=False, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("checkpoint", [None, "checkpoint-00000002"])
def test_merge_job_publishes_the_merged_model_with_a_manifest(
    checkpoint: str | None, tiny_qwen2: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    adapter = make_lora_adapter(tiny_qwen2, tmp_path / "adapter", added_tokens=ADDED_TOKENS,
                                modules_to_save=["embed_tokens", "lm_head"])
    run_path, run = job_setup(tmp_path, tiny_qwen2, adapter, {"dtype": "float16", "checkpoint": checkpoint})

    done = run_merge_job(run_path, tmp_path)

    assert done.returncode == 0, done.stderr[-3000:]
    store = open_store(run.store.uri)
    prefix = run.stages["merge"].prefix
    manifest = read_manifest(store, prefix)
    assert manifest is not None and manifest.input_key == MERGE_KEY
    assert manifest.metadata["dtype"] == "float16" and manifest.metadata["adapter"] == (checkpoint or "final")
    assert manifest.metadata["tiedEmbeddings"] is False and manifest.metadata["shards"] == 1
    paths = {f.path for f in manifest.files}
    assert {"config.json", "model.safetensors.index.json", "model-00001-of-00001.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "generation_config.json"} <= paths
    progress = json.loads(store.get_bytes(f"{prefix}/progress.json"))
    assert progress["phase"] == "Succeeded" and progress["stage"] == "merge"

    local = tmp_path / "published"
    store.get_dir(prefix, local)
    model: Any = AutoModelForCausalLM.from_pretrained(str(local))
    assert model.dtype == torch.float16
    assert model.get_input_embeddings().weight.shape[0] == manifest.metadata["vocabSize"]


def test_merge_job_with_an_adapter_for_another_base_exits_2_and_publishes_nothing(
    tiny_qwen2: Path, smollm2: Path, tmp_path: Path
) -> None:
    adapter = make_lora_adapter(tiny_qwen2, tmp_path / "adapter", r=4)
    run_path, run = job_setup(tmp_path, smollm2, adapter, {})

    done = run_merge_job(run_path, tmp_path)

    assert done.returncode == 2, done.stderr[-3000:]
    last_line = done.stderr.strip().splitlines()[-1]
    assert "kubetune-job: failed:" in last_line and "adapter made for another base" in last_line
    assert read_manifest(open_store(run.store.uri), run.stages["merge"].prefix) is None


def test_merge_job_for_a_checkpoint_that_was_never_saved_exits_2(tiny_qwen2: Path, tmp_path: Path) -> None:
    adapter = make_lora_adapter(tiny_qwen2, tmp_path / "adapter", r=4)
    run_path, run = job_setup(tmp_path, tiny_qwen2, adapter, {"checkpoint": "checkpoint-00000099"})

    done = run_merge_job(run_path, tmp_path)

    assert done.returncode == 2
    assert "spec.merge.checkpoint: no complete checkpoint 'checkpoint-00000099'" in done.stderr.splitlines()[-1]
    assert read_manifest(open_store(run.store.uri), run.stages["merge"].prefix) is None
