"""The loop's plan (steps, extra epochs) and the model inputs it builds (packed attention stays inside a sample)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from kubetune.jobs.train_data import IGNORE_INDEX, PackedBatcher, Sample
from kubetune.jobs.train_loop import planned_steps
from tests.fixtures.tiny_models import Family, VocabName, build_tiny_model, repo_root, vocab_tokenizer_dir

CACHE = repo_root() / ".cache" / "test-models"


@pytest.mark.parametrize(
    "batches, accumulation, epochs, extra, max_steps, expected",
    [
        (10, 1, 1.0, 0.0, None, 10),
        (10, 2, 1.0, 0.0, None, 5),
        (10, 3, 1.0, 0.0, None, 4),  # a partial accumulation window still makes a step
        (10, 1, 2.5, 0.0, None, 25),
        (10, 1, 1.0, 1.0, None, 20),  # extra epochs extend the epoch-based plan
        (10, 1, 1.0, 0.0, 7, 7),  # max_steps wins over epochs
        (10, 2, 1.0, 2.0, 7, 17),  # extra epochs add whole epochs of steps on top of a max_steps run
        (1, 1, 0.1, 0.0, None, 1),
    ],
)
def test_planned_steps(
    batches: int, accumulation: int, epochs: float, extra: float, max_steps: int | None, expected: int
) -> None:
    assert planned_steps(batches, accumulation, epochs=epochs, extra_epochs=extra, max_steps=max_steps) == expected


@pytest.mark.parametrize("family, vocab", [("qwen2", "qwen2"), ("llama", "llama-bpe")])
def test_packed_samples_see_only_themselves(family: Family, vocab: VocabName) -> None:
    folder = build_tiny_model(family, CACHE / f"train-tiny-{family}-{vocab}",
                              tokenizer_dir=vocab_tokenizer_dir(vocab, CACHE / f"vocab-{vocab}"))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="sdpa")
    generator = torch.Generator().manual_seed(0)
    samples = [Sample(torch.randint(0, 1000, (n,), generator=generator).tolist(), [IGNORE_INDEX] * n) for n in (9, 5, 12)]
    batch = PackedBatcher(batch_size=1, max_seq_length=32, pad_token_id=0).collate([samples])
    with torch.no_grad():
        packed = model(**batch.model_inputs(), use_cache=False).logits[0]
        offset = 0
        for sample in samples:
            alone = model(input_ids=torch.tensor([sample.input_ids])).logits[0]
            torch.testing.assert_close(packed[offset : offset + len(sample.input_ids)], alone, atol=1e-4, rtol=1e-4)
            offset += len(sample.input_ids)
