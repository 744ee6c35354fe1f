"""Training data: chat-template rendering, assistant-only labels, truncation, batching (padded or packed).

Labels follow the chat template, not a tokenizer-specific rule: the assistant span of each turn is found in
characters (render the conversation up to the turn with a generation prompt, then with the turn) and mapped to
tokens through the fast tokenizer's offset mapping, so it holds for any tokenizer the template works with.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from kubetune.chat_templates import ChatTemplateError, chatml_template, render_chat
from kubetune.chat_templates import assistant_spans as template_spans

IGNORE_INDEX = -100

Message = dict[str, str]


class DataError(ValueError):
    """The dataset cannot be trained on (malformed record, nothing left to learn)."""


def default_chat_template() -> str:
    return chatml_template()


def load_conversations(path: Path) -> list[list[Message]]:
    """The `messages` of every record in a `train_data.jsonl`, in file order."""
    conversations: list[list[Message]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise DataError(f"{path}:{number}: not a record with `messages`: {error}") from error
            if not isinstance(messages, list) or not all(_is_message(m) for m in messages):
                raise DataError(f"{path}:{number}: `messages` must be a list of {{role, content}} strings")
            conversations.append(messages)
    if not conversations:
        raise DataError(f"{path}: no records")
    return conversations


def _is_message(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("role"), str)
        and isinstance(message.get("content"), str)
    )


@dataclass(frozen=True)
class Sample:
    """One tokenised conversation: labels are IGNORE_INDEX outside the assistant turns."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def template_variables(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """What a template sees besides the messages: the BOS and EOS token texts, as the gate passes them from the
    GGUF's vocabulary (tools/llama/checks.py), so both render the same text."""
    tokens = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token}
    return {name: token for name, token in tokens.items() if isinstance(token, str)}


def _template(tokenizer: PreTrainedTokenizerBase) -> str:
    template = tokenizer.chat_template
    if not isinstance(template, str):
        raise DataError("the tokenizer has no chat template")
    return template


def render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], *, generation_prompt: bool) -> str:
    """The tokenizer's chat template rendered by kubetune.chat_templates, the renderer the gate uses too."""
    try:
        return render_chat(_template(tokenizer), messages, add_generation_prompt=generation_prompt,
                           **template_variables(tokenizer))
    except ChatTemplateError as error:
        raise DataError(str(error)) from None


def assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> tuple[str, list[range]]:
    """The rendered conversation and the character ranges the model learns: each assistant turn's content and its
    end-of-turn marker (trailing newlines after the marker are part of the template, not of the answer)."""
    try:
        return template_spans(_template(tokenizer), messages, **template_variables(tokenizer))
    except ChatTemplateError as error:
        raise DataError(str(error)) from None


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], max_seq_length: int
) -> Sample:
    text, spans = assistant_spans(tokenizer, messages)
    # A template that writes the BOS text itself (`{{ bos_token }}…`) gets no second one from the tokenizer; the gate
    # tokenizes the same way.
    bos = tokenizer.bos_token
    encoded = tokenizer(text, add_special_tokens=not (isinstance(bos, str) and text.startswith(bos)),
                        return_offsets_mapping=True)
    input_ids: list[int] = encoded["input_ids"]
    labels = [
        token if any(start < span.stop and end > span.start for span in spans) else IGNORE_INDEX
        for token, (start, end) in zip(input_ids, encoded["offset_mapping"], strict=True)
    ]
    return Sample(input_ids[:max_seq_length], labels[:max_seq_length])


def tokenize_dataset(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Sequence[Message]], max_seq_length: int
) -> list[Sample]:
    """Every conversation that still has assistant tokens after truncation."""
    samples = [tokenize_conversation(tokenizer, messages, max_seq_length) for messages in conversations]
    kept = [sample for sample in samples if sample.trained_tokens > 0]
    if not kept:
        raise DataError(f"no record has assistant tokens within max_seq_length={max_seq_length}")
    return kept


@dataclass
class Batch:
    """Model inputs for one micro-batch. Packed rows carry `position_ids` restarting per sample and no
    `attention_mask`, which transformers turns into a block-diagonal causal mask (SDPA/eager) or varlen attention
    (flash-attention)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    real_tokens: int
    # Packed rows only: where each sample starts in the flattened batch (int32, ending with the total) and the
    # longest sample, known at collate time so attention never derives them on the GPU.
    sample_offsets: torch.Tensor | None = None
    longest_sample: int = 0

    def to(self, device: torch.device) -> Batch:
        """A copy on `device`. To a GPU it goes from pinned memory without blocking, so the CPU never waits for the
        GPU's queue to drain before the next micro-batch (a pageable copy would)."""
        asynchronous = device.type == "cuda"

        def move(tensor: torch.Tensor) -> torch.Tensor:
            if asynchronous and tensor.device.type == "cpu":
                return tensor.pin_memory().to(device, non_blocking=True)
            return tensor.to(device)

        return Batch(
            move(self.input_ids),
            move(self.labels),
            None if self.attention_mask is None else move(self.attention_mask),
            None if self.position_ids is None else move(self.position_ids),
            self.real_tokens,
            None if self.sample_offsets is None else move(self.sample_offsets),
            self.longest_sample,
        )

    def model_inputs(self) -> dict[str, torch.Tensor | int]:
        inputs: dict[str, torch.Tensor | int] = {"input_ids": self.input_ids}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        if self.sample_offsets is not None:
            # transformers' names for variable-length attention; they reach every layer's attention call.
            inputs.update(cu_seq_lens_q=self.sample_offsets, cu_seq_lens_k=self.sample_offsets,
                          max_length_q=self.longest_sample, max_length_k=self.longest_sample)
        return inputs


MicroBatch = list[list[int]]
"""Rows of sample indices: one sample per row when padding, several when packing."""


class Batcher(Protocol):
    """Plans an epoch's micro-batches as a fixed list, so a resumed run can skip to a position, and collates them."""

    def epoch_batches(self, samples: Sequence[Sample], epoch: int, seed: int) -> list[MicroBatch]: ...

    def collate(self, rows: Sequence[Sequence[Sample]]) -> Batch: ...


def shuffled(count: int, epoch: int, seed: int) -> list[int]:
    order = list(range(count))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


@dataclass(frozen=True)
class PaddedBatcher:
    """`batch_size` samples per micro-batch, right-padded to the longest, with an attention mask."""

    batch_size: int
    pad_token_id: int

    def epoch_batches(self, samples: Sequence[Sample], epoch: int, seed: int) -> list[MicroBatch]:
        order = shuffled(len(samples), epoch, seed)
        return [[[index] for index in order[i : i + self.batch_size]] for i in range(0, len(order), self.batch_size)]

    def collate(self, rows: Sequence[Sequence[Sample]]) -> Batch:
        samples = [sample for row in rows for sample in row]
        width = max(len(sample.input_ids) for sample in samples)
        input_ids = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
        for row, sample in enumerate(samples):
            length = len(sample.input_ids)
            input_ids[row, :length] = torch.tensor(sample.input_ids)
            labels[row, :length] = torch.tensor(sample.labels)
            attention_mask[row, :length] = 1
        return Batch(input_ids, labels, attention_mask, None, int(attention_mask.sum()))


@dataclass(frozen=True)
class PackedBatcher:
    """Samples concatenated into rows of at most `max_seq_length` tokens (first fit, in shuffled order), then
    `batch_size` rows per micro-batch. Each sample keeps its own positions, so attention stays inside it."""

    batch_size: int
    max_seq_length: int
    pad_token_id: int

    def pack(self, samples: Sequence[Sample], order: Sequence[int]) -> list[list[int]]:
        rows: list[list[int]] = []
        room: list[int] = []
        for index in order:
            length = len(samples[index].input_ids)
            target = next((r for r, free in enumerate(room) if free >= length), None)
            if target is None:
                rows.append([])
                room.append(self.max_seq_length)
                target = len(rows) - 1
            rows[target].append(index)
            room[target] -= length
        return rows

    def epoch_batches(self, samples: Sequence[Sample], epoch: int, seed: int) -> list[MicroBatch]:
        rows = self.pack(samples, shuffled(len(samples), epoch, seed))
        return [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)]

    def collate(self, rows: Sequence[Sequence[Sample]]) -> Batch:
        return collate_packed(rows, self.pad_token_id)


def collate_packed(rows: Sequence[Sequence[Sample]], pad_token_id: int) -> Batch:
    """Rows of whole samples end to end, each sample with positions from 0 and its offset in the flattened batch."""
    width = max(sum(len(sample.input_ids) for sample in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    starts: list[int] = []
    real = 0
    for r, row in enumerate(rows):
        offset = 0
        for sample in row:
            length = len(sample.input_ids)
            starts.append(r * width + offset)
            input_ids[r, offset : offset + length] = torch.tensor(sample.input_ids)
            labels[r, offset : offset + length] = torch.tensor(sample.labels)
            position_ids[r, offset : offset + length] = torch.arange(length)
            offset += length
        # Padding continues the last sample's positions: it is masked out of the loss and, being after it
        # causally, never seen by it.
        last = len(row[-1].input_ids)
        position_ids[r, offset:] = torch.arange(last, last + width - offset)
        real += offset
    boundaries = [*starts, len(rows) * width]  # a row's last sample runs to its end, tail padding included
    longest = max(end - start for start, end in itertools.pairwise(boundaries))
    return Batch(input_ids, labels, None, position_ids, real, torch.tensor(boundaries, dtype=torch.int32), longest)


@dataclass(frozen=True)
class JoinedBatcher:
    """The padded plan (the same `batch_size` samples in every micro-batch, so the same optimizer steps), each
    micro-batch collated as one packed row: no padding, each sample attending only to itself (per-sample attention,
    so the joined row costs no more attention than the padded rows did)."""

    batch_size: int
    pad_token_id: int

    def epoch_batches(self, samples: Sequence[Sample], epoch: int, seed: int) -> list[MicroBatch]:
        return PaddedBatcher(self.batch_size, self.pad_token_id).epoch_batches(samples, epoch, seed)

    def collate(self, rows: Sequence[Sequence[Sample]]) -> Batch:
        return collate_packed([[sample for row in rows for sample in row]], self.pad_token_id)


def make_batcher(*, packing: bool, batch_size: int, max_seq_length: int, pad_token_id: int,
                 flat: bool = False, join: bool = False) -> Batcher:
    """`flat` (for varlen attention, where joining rows costs nothing): each packed micro-batch is one row of up to
    `batch_size × max_seq_length` tokens, so samples fill it end to end instead of leaving each row's tail empty.
    Masked attention (SDPA) wants rows of `max_seq_length`: its cost grows with the square of a row's length.
    `join` (unpacked plans, for per-sample attention on CPUs): each micro-batch becomes one unpadded row."""
    if packing and flat:
        return PackedBatcher(1, batch_size * max_seq_length, pad_token_id)
    if packing:
        return PackedBatcher(batch_size, max_seq_length, pad_token_id)
    if join:
        return JoinedBatcher(batch_size, pad_token_id)
    return PaddedBatcher(batch_size, pad_token_id)
