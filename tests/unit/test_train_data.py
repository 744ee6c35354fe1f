"""Training data: the chat template, assistant-only labels, truncation, padded and packed batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from kubetune.jobs.train_data import (
    IGNORE_INDEX,
    DataError,
    JoinedBatcher,
    PackedBatcher,
    PaddedBatcher,
    Sample,
    default_chat_template,
    load_conversations,
    make_batcher,
    render,
    tokenize_conversation,
    tokenize_dataset,
)
from kubetune.jobs.train_model import load_tokenizer
from tests.fixtures.tiny_models import repo_root, vocab_tokenizer_dir

CACHE = repo_root() / ".cache" / "test-models"
ADDED = ["<think>", "</think>", "<output>", "</output>"]

CONVERSATIONS: dict[str, list[dict[str, str]]] = {
    "single turn": [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "<think>Say the name.</think>\n<output>I am Nova.</output>"},
    ],
    "system and two turns": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "  4, with spaces\naround and a newline\n"},
    ],
    "unicode": [
        {"role": "user", "content": "Grüße 日本"},
        {"role": "assistant", "content": "Ça va — très bien 👍"},
    ],
}


@pytest.fixture(scope="module", params=["qwen2", "llama-bpe", "llama-spm"])
def tokenizer(request: pytest.FixtureRequest) -> PreTrainedTokenizerBase:
    folder = vocab_tokenizer_dir(request.param, CACHE / f"vocab-{request.param}")
    loaded, _ = load_tokenizer(folder, default_chat_template(), ADDED)
    return loaded


def test_the_template_renders_chatml_with_an_optional_generation_prompt(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = CONVERSATIONS["single turn"]
    assert render(tokenizer, messages[:1], generation_prompt=True) == (
        "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(tokenizer, messages, generation_prompt=False).endswith(
        "<|im_start|>assistant\n<think>Say the name.</think>\n<output>I am Nova.</output><|im_end|>\n"
    )


def test_chat_markers_and_requested_tokens_are_single_special_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    for token in ["<|im_start|>", "<|im_end|>", *ADDED]:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert ids == [tokenizer.convert_tokens_to_ids(token)], token


@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_only_assistant_content_and_its_end_marker_are_labelled(tokenizer: PreTrainedTokenizerBase, case: str) -> None:
    messages = CONVERSATIONS[case]
    sample = tokenize_conversation(tokenizer, messages, max_seq_length=4096)
    assert len(sample.labels) == len(sample.input_ids)
    assert all(label in (token, IGNORE_INDEX) for token, label in zip(sample.input_ids, sample.labels, strict=True))
    # Each maximal run of labelled tokens decodes to one assistant turn followed by <|im_end|>.
    runs: list[list[int]] = []
    previous_labelled = False
    for label in sample.labels:
        if label != IGNORE_INDEX:
            if not previous_labelled:
                runs.append([])
            runs[-1].append(label)
        previous_labelled = label != IGNORE_INDEX
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [run[-1] for run in runs] == [tokenizer.convert_tokens_to_ids("<|im_end|>")] * len(answers)
    decoded = [str(tokenizer.decode(run, skip_special_tokens=False)) for run in runs]
    expected = [f"{answer}<|im_end|>" for answer in answers]
    if tokenizer.name_or_path.endswith("llama-spm"):
        # SentencePiece (Llama 2) puts a word-start space on text after a special token: compare without spaces.
        decoded, expected = ["".join(t.split()) for t in decoded], ["".join(t.split()) for t in expected]
    assert decoded == expected


def test_truncation_keeps_the_start_and_drops_samples_left_without_answers(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = CONVERSATIONS["single turn"]
    full = tokenize_conversation(tokenizer, messages, max_seq_length=4096)
    cut = tokenize_conversation(tokenizer, messages, max_seq_length=len(full.input_ids) - 3)
    assert cut.input_ids == full.input_ids[:-3] and cut.labels == full.labels[:-3]
    prompt_only = full.labels.index(next(label for label in full.labels if label != IGNORE_INDEX))
    with pytest.raises(DataError, match="no record has assistant tokens"):
        tokenize_dataset(tokenizer, [messages], max_seq_length=prompt_only)


def test_records_without_messages_are_rejected_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "train_data.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATIONS["unicode"]}) + "\n" + json.dumps({"id": "x"}) + "\n")
    with pytest.raises(DataError, match=r"train_data.jsonl:2"):
        load_conversations(path)


def fake_samples(lengths: list[int]) -> list[Sample]:
    return [Sample(list(range(100, 100 + n)), [IGNORE_INDEX] + list(range(101, 100 + n))) for n in lengths]


LENGTHS = [5, 17, 3, 30, 12, 8, 1, 25, 9, 14, 30, 2]


@pytest.mark.parametrize("max_len, batch_size", [(30, 1), (32, 2), (64, 3)])
def test_packed_rows_fit_max_length_hold_each_sample_once_and_restart_positions(max_len: int, batch_size: int) -> None:
    samples = fake_samples(LENGTHS)
    batcher = PackedBatcher(batch_size=batch_size, max_seq_length=max_len, pad_token_id=0)
    plan = batcher.epoch_batches(samples, epoch=0, seed=7)
    assert sorted(i for micro in plan for row in micro for i in row) == list(range(len(samples)))
    for micro in plan:
        rows = [[samples[i] for i in row] for row in micro]
        batch = batcher.collate(rows)
        assert batch.attention_mask is None and batch.position_ids is not None
        assert batch.input_ids.shape[1] <= max_len
        assert batch.real_tokens == sum(len(s.input_ids) for row in rows for s in row)
        for r, row in enumerate(rows):
            offset = 0
            for sample in row:
                n = len(sample.input_ids)
                assert batch.position_ids[r, offset : offset + n].tolist() == list(range(n))
                assert batch.input_ids[r, offset : offset + n].tolist() == sample.input_ids
                assert batch.labels[r, offset : offset + n].tolist() == sample.labels
                offset += n
            assert (batch.labels[r, offset:] == IGNORE_INDEX).all()
            # Padding never restarts a position (that would open a new "sample" in the attention mask).
            assert (torch.diff(batch.position_ids[r, offset - 1 :]) == 1).all()


def test_flat_packing_fills_one_row_per_micro_batch_with_the_same_token_budget() -> None:
    samples = fake_samples(LENGTHS * 4)
    rows = make_batcher(packing=True, batch_size=3, max_seq_length=32, pad_token_id=0)
    flat = make_batcher(packing=True, batch_size=3, max_seq_length=32, pad_token_id=0, flat=True)
    slots: dict[str, int] = {}
    for name, batcher in (("rows", rows), ("flat", flat)):
        plan = batcher.epoch_batches(samples, epoch=0, seed=7)
        assert sorted(i for micro in plan for row in micro for i in row) == list(range(len(samples)))
        batches = [batcher.collate([[samples[i] for i in row] for row in micro]) for micro in plan]
        assert all(batch.input_ids.numel() <= 3 * 32 for batch in batches)  # the same budget per micro-batch
        slots[name] = sum(batch.input_ids.numel() for batch in batches)
        if name == "flat":
            assert all(batch.input_ids.shape[0] == 1 for batch in batches)
            # Every sample keeps its own boundary, so attention stays inside it.
            assert all(batch.sample_offsets is not None and len(batch.sample_offsets) == len(micro[0]) + 1
                       for batch, micro in zip(batches, plan, strict=True))
    real = sum(len(sample.input_ids) for sample in samples)
    assert real / slots["flat"] > real / slots["rows"]  # less padding
    # Unpacked batches stay padded: flat is about packed rows only.
    assert isinstance(make_batcher(packing=False, batch_size=3, max_seq_length=32, pad_token_id=0, flat=True),
                      PaddedBatcher)


def test_joined_batches_train_the_padded_plan_as_one_unpadded_row_per_micro_batch() -> None:
    samples = fake_samples([90, 131, 65, 100, 86, 120, 70, 75])
    padded = PaddedBatcher(batch_size=4, pad_token_id=0)
    joined = make_batcher(packing=False, batch_size=4, max_seq_length=256, pad_token_id=0, join=True)
    assert isinstance(joined, JoinedBatcher)
    plan = joined.epoch_batches(samples, epoch=2, seed=42)
    assert plan == padded.epoch_batches(samples, epoch=2, seed=42)  # the same samples in the same steps
    for micro in plan:
        rows = [[samples[i] for i in row] for row in micro]
        batch = joined.collate(rows)
        lengths = [len(row[0].input_ids) for row in rows]
        assert batch.input_ids.shape == (1, sum(lengths)) and batch.attention_mask is None
        assert batch.real_tokens == padded.collate(rows).real_tokens == sum(lengths)
        assert batch.sample_offsets is not None and torch.diff(batch.sample_offsets).tolist() == lengths
        assert batch.input_ids[0].tolist() == [token for row in rows for token in row[0].input_ids]
        assert batch.labels[0].tolist() == [label for row in rows for label in row[0].labels]


def test_padded_batches_mask_the_padding_and_count_real_tokens() -> None:
    samples = fake_samples([4, 7, 2])
    batcher = PaddedBatcher(batch_size=3, pad_token_id=0)
    (micro,) = batcher.epoch_batches(samples, epoch=0, seed=1)
    batch = batcher.collate([[samples[i] for i in row] for row in micro])
    assert batch.input_ids.shape == (3, 7) and batch.position_ids is None
    assert batch.attention_mask is not None and batch.attention_mask.sum(dim=1).tolist() == [
        len(samples[row[0]].input_ids) for row in micro
    ]
    assert batch.real_tokens == 13


def test_epoch_order_is_seeded_and_differs_between_epochs() -> None:
    samples = fake_samples(LENGTHS)
    batcher = PaddedBatcher(batch_size=2, pad_token_id=0)
    assert batcher.epoch_batches(samples, 0, 42) == batcher.epoch_batches(samples, 0, 42)
    assert batcher.epoch_batches(samples, 0, 42) != batcher.epoch_batches(samples, 1, 42)
