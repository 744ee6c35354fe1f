"""The training attention keeps packed samples apart and leaves every other input to SDPA's semantics."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PretrainedConfig, Qwen2Config

from kubetune.jobs.train_attention import VARLEN_ATTENTION, cumulative_lengths, sample_ids, training_attention
from kubetune.jobs.train_data import IGNORE_INDEX, PackedBatcher, PaddedBatcher, Sample

SHAPE: dict[str, Any] = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.mark.parametrize(
    "position_ids, ids, offsets, longest",
    [
        ([[0, 1, 2, 3]], [[1, 1, 1, 1]], [0, 4], 4),
        ([[0, 1, 0, 1, 2, 0]], [[1, 1, 2, 2, 2, 3]], [0, 2, 5, 6], 3),
        ([[0, 1, 2, 3], [0, 0, 1, 2]], [[1, 1, 1, 1], [1, 2, 2, 2]], [0, 4, 5, 8], 4),  # every row starts a sample
        ([[0, 1, 2, 3], [4, 5, 0, 1]], [[1, 1, 1, 1], [1, 1, 2, 2]], [0, 4, 6, 8], 4),  # even a continuing position
        ([[0, 1, 2, 0, 1, 2, 3, 4]], [[1, 1, 1, 2, 2, 2, 2, 2]], [0, 3, 8], 5),  # tail padding joins the last sample
    ],
)
def test_sample_boundaries_follow_restarting_positions(
    position_ids: list[list[int]], ids: list[list[int]], offsets: list[int], longest: int
) -> None:
    positions = torch.tensor(position_ids)
    assert sample_ids(positions).tolist() == ids
    boundaries, found_longest = cumulative_lengths(positions)
    assert boundaries.dtype == torch.int32 and boundaries.tolist() == offsets and found_longest == longest


def test_cpu_training_attends_packed_rows_sample_by_sample() -> None:
    assert training_attention(torch.device("cpu")) == VARLEN_ATTENTION


def samples() -> list[Sample]:
    generator = torch.Generator().manual_seed(0)
    return [Sample(torch.randint(0, 300, (n,), generator=generator).tolist(), [IGNORE_INDEX] * n) for n in (9, 5, 12)]


def models(config: PretrainedConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A model with our attention and the same weights under transformers' SDPA."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=VARLEN_ATTENTION).eval()
    reference = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    reference.load_state_dict(model.state_dict())
    return model, reference


def assert_each_sample_as_alone(packed: torch.Tensor, reference: torch.nn.Module) -> None:
    """`packed` (one row's logits over `samples()` end to end) equals each sample's logits run alone."""
    offset = 0
    for sample in samples():
        alone = reference(input_ids=torch.tensor([sample.input_ids])).logits[0]
        torch.testing.assert_close(packed[offset : offset + len(sample.input_ids)], alone, atol=1e-4, rtol=1e-4)
        offset += len(sample.input_ids)


@pytest.mark.parametrize(
    "config",
    [Qwen2Config(**SHAPE), LlamaConfig(**SHAPE), MistralConfig(**SHAPE, sliding_window=4)],
    ids=["qwen2", "llama", "mistral-sliding-window-4"],  # the window applies within each sample, as alone
)
def test_packed_rows_see_only_their_own_sample_and_padded_rows_match_sdpa(
    config: Qwen2Config | LlamaConfig | MistralConfig,
) -> None:
    model, reference = models(config)
    packed_batch = PackedBatcher(batch_size=1, max_seq_length=32, pad_token_id=0).collate([samples()])
    padded_batch = PaddedBatcher(batch_size=3, pad_token_id=0).collate([[sample] for sample in samples()])
    with torch.no_grad():
        packed = model(**packed_batch.model_inputs(), use_cache=False).logits[0]
        assert_each_sample_as_alone(packed, reference)
        padded = model(**padded_batch.model_inputs(), use_cache=False).logits
        expected = reference(**padded_batch.model_inputs(), use_cache=False).logits
        mask = padded_batch.attention_mask.bool()
        torch.testing.assert_close(padded[mask], expected[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("lengths, rows", [((9, 5, 12), 1), ((9, 5, 12, 3, 7), 2), ((16, 16), 2), ((4,), 1)])
def test_the_packed_batcher_hands_attention_the_same_sample_offsets_it_would_derive(
    lengths: tuple[int, ...], rows: int
) -> None:
    batcher = PackedBatcher(batch_size=rows, max_seq_length=16, pad_token_id=0)
    data = [Sample([1] * n, [IGNORE_INDEX] * n) for n in lengths]
    batch = batcher.collate([[data[i] for i in row] for row in batcher.pack(data, range(len(data)))][:rows])
    assert batch.position_ids is not None and batch.sample_offsets is not None
    derived, longest = cumulative_lengths(batch.position_ids)
    assert batch.sample_offsets.dtype == torch.int32
    assert batch.sample_offsets.tolist() == derived.tolist() and batch.longest_sample == longest
    inputs = batch.model_inputs()
    assert inputs["cu_seq_lens_q"] is inputs["cu_seq_lens_k"] is batch.sample_offsets
    assert inputs["max_length_q"] == inputs["max_length_k"] == longest


def test_every_row_of_a_multi_row_packed_batch_is_attended_sample_by_sample() -> None:
    model, reference = models(LlamaConfig(**SHAPE))
    first, second, third = samples()
    batch = PackedBatcher(batch_size=2, max_seq_length=16, pad_token_id=0).collate([[first, second], [third]])
    with torch.no_grad():
        packed = model(**batch.model_inputs(), use_cache=False).logits
        for row, offset, sample in ((0, 0, first), (0, 9, second), (1, 0, third)):
            alone = reference(input_ids=torch.tensor([sample.input_ids])).logits[0]
            torch.testing.assert_close(packed[row, offset : offset + len(sample.input_ids)], alone, atol=1e-4,
                                       rtol=1e-4)


def test_the_mask_path_of_compiled_layers_keeps_samples_apart_and_applies_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, reference = models(MistralConfig(**SHAPE, sliding_window=4))
    batch = PackedBatcher(batch_size=1, max_seq_length=32, pad_token_id=0).collate([samples()])
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # what a compiled layer takes on any device
    with torch.no_grad():
        packed = model(**batch.model_inputs(), use_cache=False).logits[0]
        assert_each_sample_as_alone(packed, reference)
