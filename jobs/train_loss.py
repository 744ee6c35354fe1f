"""Causal-LM losses for the train loop: the summed next-token cross-entropy over labelled tokens (the loop divides by
the labelled tokens of the whole optimizer step, so gradient accumulation equals one big batch).

`chunked_causal_lm_loss_sum` never materialises a batch's logits. The decoder runs to its last hidden states, only
the positions that have a label are kept, and the output head plus cross-entropy run over chunks of those rows,
in the head's dtype with fp32 softmax. The head is frozen, so the only gradient is the one for the hidden states: it
is computed in the same pass (softmax minus one-hot, times the head), which makes backward free and the peak one
chunk of logits instead of batch × vocab in fp32 plus its gradient — the stock path's largest allocation by far.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel

from kubetune.jobs.train_data import IGNORE_INDEX, Batch

LossFunction = Callable[[torch.nn.Module, Batch], torch.Tensor]

CHUNK_LOGITS = 2**26  # logits per chunk: 256 MiB in fp32
# Families whose causal-LM head is a plain `lm_head(hidden)`: no logit scaling or soft-capping to reproduce.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def causal_lm_loss_sum(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Summed next-token cross-entropy over labelled tokens through the model's own head (fp32 logits)."""
    # No KV cache: with one, transformers would not derive the packed-sample mask from position_ids.
    logits = model(**batch.model_inputs(), use_cache=False).logits
    shifted = logits[:, :-1, :].float()
    targets = batch.labels[:, 1:]
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")


class ChunkedHeadCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i · headᵀ, target_i) for a frozen head, chunk by chunk; the hidden-state gradient is computed
    in forward (when needed) and only scaled in backward."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor,
                chunk_rows: int) -> torch.Tensor:
        wants_grad = bool(ctx.needs_input_grad[0])
        softmax_dtype = torch.promote_types(head.dtype, torch.float32)  # at least fp32, as the stock loss
        total = torch.zeros((), dtype=softmax_dtype, device=hidden.device)
        grad = torch.empty_like(hidden) if wants_grad else None
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = torch.matmul(hidden[rows].to(head.dtype), head.t()).to(softmax_dtype)
            target = targets[rows, None]
            norm = torch.logsumexp(logits, dim=-1, keepdim=True)
            total += (norm - logits.gather(1, target)).sum()
            if grad is not None:
                probabilities = logits.sub_(norm).exp_()
                probabilities.scatter_add_(1, target, torch.full_like(target, -1.0, dtype=probabilities.dtype))
                grad[rows] = torch.matmul(probabilities.to(head.dtype), head).to(grad.dtype)
        ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None


def plain_head_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.Tensor] | None:
    """(decoder, frozen head weight) when the model's logits are exactly `hidden @ headᵀ`; None otherwise (trained
    head rows, a bias, a family with logit scaling), in which case the full-logits loss is the right one."""
    base: Any = model.get_base_model() if isinstance(model, PeftModel) else model
    if getattr(getattr(base, "config", None), "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    return base.get_decoder(), head.weight


def chunk_rows(vocab_size: int, chunk_logits: int = CHUNK_LOGITS) -> int:
    return max(1, chunk_logits // vocab_size)


def chunked_causal_lm_loss_sum(model: torch.nn.Module, batch: Batch, chunk_logits: int = CHUNK_LOGITS) -> torch.Tensor:
    """The same sum as `causal_lm_loss_sum`, computed without a batch × vocab logits tensor (`chunk_logits` logits
    at a time: smaller chunks lower the peak a little, at some speed)."""
    parts = plain_head_parts(model)
    if parts is None:
        return causal_lm_loss_sum(model, batch)
    decoder, head = parts
    hidden = decoder(**batch.model_inputs(), use_cache=False).last_hidden_state[:, :-1]
    targets = batch.labels[:, 1:]
    labelled = targets != IGNORE_INDEX
    loss = ChunkedHeadCrossEntropy.apply(hidden[labelled], head, targets[labelled], chunk_rows(head.shape[0], chunk_logits))
    assert isinstance(loss, torch.Tensor)
    return loss
