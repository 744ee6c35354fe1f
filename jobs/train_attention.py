"""Sample-isolated attention for packed rows: FlashAttention's variable-length kernel on CUDA, registered as a
transformers attention implementation (`VARLEN_ATTENTION`).

Packed rows carry `position_ids` that restart at 0 for every sample and no attention mask; the packed batcher also
passes the sample offsets (`cu_seq_lens_q`, `max_length_q`), which keeps the layers free of GPU waits and lets them
compile into one graph. For SDPA, transformers
turns that into a dense block-diagonal mask, which sends SDPA to its memory-efficient kernel over every
(query, key) block of the row, the blocks across samples included. The varlen kernel gets the sample boundaries
instead (cumulative lengths), so each sample attends only to itself and the work is Σ n²/2 rather than rows × width².

On CPUs (no varlen kernel) a packed row is attended sample by sample with SDPA's causal kernel. Anything else keeps
transformers' SDPA semantics: a padding mask, KV-cache decoding and chunked prefill go to its SDPA path unchanged;
where the varlen kernel cannot run (fp32, dropout, odd head sizes, a sliding-window layer: the kernel takes no
window) the block-diagonal mask is built here from the same boundaries, with the layer's window, so a packed row
never leaks across samples whatever runs it.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

VARLEN_ATTENTION = "kubetune_varlen"
MAX_FLASH_HEAD_DIM = 256

VarlenKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, float | None], torch.Tensor]


def _load_varlen_kernel() -> VarlenKernel | None:
    """torch's `varlen_attn` (PyTorch ≥ 2.9), adapted to the causal, GQA call we need; None where it is missing.
    Its keyword arguments moved between releases (`is_causal` became `window_size=(-1, 0)`; `enable_gqa` appeared),
    so they are read off its signature rather than assumed."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    options: dict[str, Any] = {}
    if "is_causal" in parameters:
        options["is_causal"] = True
    elif "window_size" in parameters:
        options["window_size"] = (-1, 0)
    else:
        return None
    if "enable_gqa" in parameters:
        options["enable_gqa"] = True

    def kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, starts: torch.Tensor, longest: int,
               scale: float | None) -> torch.Tensor:
        output = varlen_attn(query, key, value, starts, starts, longest, longest, scale=scale, **options)
        assert isinstance(output, torch.Tensor)
        return output

    return kernel


_VARLEN_KERNEL = _load_varlen_kernel()


def varlen_available(device: torch.device) -> bool:
    return device.type == "cuda" and _VARLEN_KERNEL is not None


def sample_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """Where a sample starts in each row: at the row start and wherever the position does not continue the
    previous one (the packed batcher restarts positions at 0 per sample; its tail padding continues the last)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def sample_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Per token, the index of its sample within the row."""
    return sample_starts(position_ids).cumsum(dim=-1)


def cumulative_lengths(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The varlen kernel's view of a (rows, width) batch flattened to one stream: int32 offsets where each sample
    starts, plus the total, and the longest sample."""
    offsets = torch.nonzero(sample_starts(position_ids).flatten()).flatten()
    total = torch.tensor([position_ids.numel()], device=offsets.device, dtype=offsets.dtype)
    boundaries = torch.cat([offsets, total]).to(torch.int32)
    return boundaries, int(torch.diff(boundaries).max())


class _BoundaryCache:
    """For callers that pass packed `position_ids` without the batcher's sample offsets: every layer (and its
    checkpointed recompute) gets the same `position_ids` tensor, so derive the boundaries once per forward pass
    instead of once per layer (each derivation waits on the GPU)."""

    def __init__(self) -> None:
        self._key: torch.Tensor | None = None
        self._value: tuple[torch.Tensor, int] | None = None

    def get(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        if self._key is not position_ids or self._value is None:
            self._key, self._value = position_ids, cumulative_lengths(position_ids)
        return self._value


_BOUNDARIES = _BoundaryCache()


def _block_causal_mask(position_ids: torch.Tensor, window: int | None = None) -> torch.Tensor:
    ids = sample_ids(position_ids)
    causal = _sliding_causal_mask(position_ids.shape[-1], window, position_ids.device)[0]
    return (ids[:, :, None] == ids[:, None, :])[:, None] & causal


def _can_run_varlen(query: torch.Tensor, dropout: float) -> bool:
    head_dim = query.shape[-1]
    return (
        varlen_available(query.device)
        and query.dtype in (torch.float16, torch.bfloat16)
        and dropout == 0.0
        and head_dim <= MAX_FLASH_HEAD_DIM
        and head_dim % 8 == 0
    )


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: (batch, heads, length, head_dim) in, (batch, length, heads, head_dim) out."""
    position_ids: torch.Tensor | None = kwargs.pop("position_ids", None)
    offsets: torch.Tensor | None = kwargs.pop("cu_seq_lens_q", None)
    longest_sample: int | None = kwargs.pop("max_length_q", None)
    for unused in ("cu_seq_lens_k", "max_length_k"):  # self-attention: the same as the query's
        kwargs.pop(unused, None)
    batch, heads, length, head_dim = query.shape
    if attention_mask is not None or position_ids is None or key.shape[2] != length:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    position_ids = position_ids.expand(batch, -1)
    window: int | None = kwargs.pop("sliding_window", None)
    # Compiled layers (CUDA's path; a CPU compiles only in tests) keep one graph through the mask path below.
    if query.device.type == "cpu" and not torch.compiler.is_compiling():
        boundaries = offsets if offsets is not None else cumulative_lengths(position_ids)[0]
        return _per_sample_attention(module, query, key, value, boundaries, window, dropout, scaling, **kwargs)
    if window or not _can_run_varlen(query, dropout):
        return sdpa_attention_forward(module, query, key, value, _block_causal_mask(position_ids, window),
                                      dropout=dropout, scaling=scaling, **kwargs)
    assert _VARLEN_KERNEL is not None
    if offsets is not None and longest_sample is not None:
        boundaries, longest = offsets, longest_sample
    else:
        boundaries, longest = _BOUNDARIES.get(position_ids)
    kv_heads = key.shape[1]
    output = _VARLEN_KERNEL(
        query.transpose(1, 2).reshape(batch * length, heads, head_dim),
        key.transpose(1, 2).reshape(batch * length, kv_heads, head_dim),
        value.transpose(1, 2).reshape(batch * length, kv_heads, head_dim),
        boundaries, longest, scaling,
    )
    return output.view(batch, length, heads, head_dim), None


def _per_sample_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          boundaries: torch.Tensor, window: int | None, dropout: float, scaling: float | None,
                          **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Packed rows attended sample by sample with SDPA's causal kernel (CPUs): Σ n² work and no rows × width² mask
    to build and read in every layer, forward and backward; a sliding window applies within each sample.
    `boundaries` are the varlen kernel's: sample starts in the rows flattened to one stream, then the total (every
    row starts a sample, so none spans two rows)."""
    length = query.shape[2]
    rows: list[list[torch.Tensor]] = [[] for _ in range(query.shape[0])]
    for start, end in itertools.pairwise(boundaries.tolist()):
        row, begin = divmod(start, length)
        span = slice(begin, begin + end - start)
        mask = _sliding_causal_mask(end - start, window, query.device) if window and end - start > window else None
        rows[row].append(sdpa_attention_forward(
            module, query[row : row + 1, :, span], key[row : row + 1, :, span], value[row : row + 1, :, span], mask,
            dropout=dropout, scaling=scaling, is_causal=True, **kwargs,
        )[0])
    return torch.cat([torch.cat(pieces, dim=1) for pieces in rows], dim=0), None


def _sliding_causal_mask(length: int, window: int | None, device: torch.device) -> torch.Tensor:
    """Query i sees keys j ≤ i, and with a window only i - window < j (transformers' sliding-window convention)."""
    offsets = torch.arange(length, device=device)
    distance = offsets[:, None] - offsets[None, :]
    visible = distance >= 0
    return (visible if window is None else visible & (distance < window))[None, None]


def varlen_mask(*, attention_mask: torch.Tensor | None = None, q_length: int, kv_length: int, q_offset: int = 0,
                **kwargs: Any) -> torch.Tensor | None:
    """No mask for full-length rows without padding (the attention derives sample boundaries from position_ids);
    SDPA's mask for everything else (padding, decoding with a cache)."""
    if attention_mask is None and q_length == kv_length and not q_offset:
        return None
    return sdpa_mask(attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     **kwargs)


AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
AttentionMaskInterface.register(VARLEN_ATTENTION, varlen_mask)


def training_attention(device: torch.device) -> str:
    """The attention implementation to train with: ours (`VARLEN_ATTENTION`) on CUDA where the varlen kernel runs
    and on CPUs (per-sample SDPA for packed rows), transformers' SDPA elsewhere."""
    return VARLEN_ATTENTION if varlen_available(device) or device.type == "cpu" else "sdpa"
