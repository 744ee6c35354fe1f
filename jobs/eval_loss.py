"""Held-out loss: the mean token loss over the assistant tokens of the dataset's eval split.

The train stage measures it on the base model once before training (step 0) and at every checkpoint (the last one
is the end of training), with the training loss function and masking, in eval mode, without gradients, over the
same micro-batches the training batcher builds. The evaluate stage gates on the figures (`evaluate.maxEvalLoss`,
`evaluate.maxEvalLossRatio`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from kubetune.jobs.distributed import SINGLE, Ranks
from kubetune.jobs.train_data import Batch, Batcher, DataError, load_conversations, tokenize_dataset
from kubetune.jobs.train_loop import labelled_tokens
from kubetune.jobs.train_loss import LossFunction, chunked_causal_lm_loss_sum

EVAL_DATASET_FILE = "eval_data.jsonl"
# The first conversations of the eval split that are measured: enough for a stable mean, cheap on a CPU.
MAX_EVAL_SAMPLES = 256


@dataclass(frozen=True)
class EvalSet:
    """The eval split's micro-batches (on the CPU) and how many labelled tokens they hold together."""

    batches: tuple[Batch, ...]
    samples: int
    tokens: int


def load_eval_set(
    path: Path, tokenizer: PreTrainedTokenizerBase, batcher: Batcher, *, max_seq_length: int, seed: int
) -> EvalSet | None:
    """The first `MAX_EVAL_SAMPLES` conversations of `path`, batched; None when there is no eval split."""
    if not path.is_file() or not path.read_bytes().strip():
        return None
    try:
        samples = tokenize_dataset(tokenizer, load_conversations(path)[:MAX_EVAL_SAMPLES], max_seq_length)
    except DataError as error:
        raise DataError(f"{path.name}: {error}") from error
    plan = batcher.epoch_batches(samples, 0, seed)
    batches = tuple(batcher.collate([[samples[i] for i in row] for row in micro_batch]) for micro_batch in plan)
    return EvalSet(batches, len(samples), sum(labelled_tokens(batch) for batch in batches))


def eval_loss(
    model: torch.nn.Module,
    eval_set: EvalSet,
    device: torch.device,
    *,
    autocast_dtype: torch.dtype | None = None,
    loss_function: LossFunction = chunked_causal_lm_loss_sum,
    ranks: Ranks = SINGLE,
) -> float:
    """Mean loss per labelled token. With several ranks each takes every world_size-th micro-batch and the sums
    are added over the ranks (every rank must call this), so all get the same figure."""
    was_training = model.training
    model.eval()  # no dropout: the same weights always give the same figure
    total = torch.zeros((), dtype=torch.float64, device=device)
    autocast: Any = nullcontext() if autocast_dtype is None else torch.autocast(device.type, dtype=autocast_dtype)
    try:
        with torch.no_grad(), autocast:
            for batch in eval_set.batches[ranks.rank::ranks.world_size]:
                total += loss_function(model, batch.to(device)).double()
    finally:
        model.train(was_training)
    return ranks.sum(float(total))[0] / max(1, eval_set.tokens)


def eval_loss_figures(records: Sequence[dict[str, float]], samples: int) -> dict[str, Any]:
    """What the evaluate stage gates on (in the train output's manifest): the base model's eval loss (step 0), the
    final one, and how many conversations were measured (0: no eval split)."""
    base = next((r["eval_loss"] for r in records if r["step"] == 0), None)
    trained = [r for r in records if r["step"] > 0]
    return {"baseEvalLoss": base, "finalEvalLoss": trained[-1]["eval_loss"] if trained else None,
            "evalSamples": samples}


def eval_loss_summary(records: Sequence[dict[str, float]], samples: int) -> dict[str, Any]:
    """metrics.json: the figures and every eval loss measured."""
    return {**eval_loss_figures(records, samples),
            "evalLosses": [{"step": int(r["step"]), "evalLoss": r["eval_loss"]} for r in records]}
