"""Tensor data for the GGUF writer, encoded on several threads while the writer writes, byte for byte what
tensors.encoded_chunks gives.

f16 and q8_0 weights (nearly all of a model's bytes) take the fast path here: their rows are split into chunks, each
chunk is read, widened and encoded by a pool thread (numpy and os.preadv release the GIL, so the threads use every
core), and the chunks come back in file order with at most `2 × threads` chunks in flight, so memory stays a few chunks
whatever the model's size. Small tensors (norms, biases, computed ones) go through tensors.encoded_chunks on the same
pool, one task each; weights of the other output types (f32, bf16) are streamed by it chunk by chunk, in order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from gguf import GGMLQuantizationType

from kubetune.cpus import usable_cpus

from .errors import ConversionError
from .tensors import CHUNK_ELEMENTS, TensorPlan, encoded_chunks

Q = GGMLQuantizationType
Q8_0_BLOCK = 32
# One piece of a tensor's GGUF data, as a view (no copy of numpy's buffer).
Piece = memoryview
Task = Callable[[], list[Piece]]


def encoded_pieces(plans: list[TensorPlan], threads: int | None = None) -> Iterator[tuple[int, list[Piece]]]:
    """(plan index, data pieces) in file order: each plan's pieces, in order, add up to its GGUF data."""
    workers = max(1, threads if threads is not None else min(4, usable_cpus()))
    pending: deque[tuple[int, Future[list[Piece]]]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gguf-encode") as pool:
        try:
            for index, plan in enumerate(plans):
                tasks = _tasks(plan)
                if tasks is None:  # a large weight of another output type: streamed here, chunk by chunk, in order
                    while pending:
                        done_index, future = pending.popleft()
                        yield done_index, future.result()
                    for chunk in encoded_chunks(plan):
                        yield index, [memoryview(chunk)]
                    continue
                for task in tasks:
                    pending.append((index, pool.submit(task)))
                    if len(pending) >= 2 * workers:
                        done_index, future = pending.popleft()
                        yield done_index, future.result()
            while pending:
                done_index, future = pending.popleft()
                yield done_index, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def _tasks(plan: TensorPlan) -> list[Task] | None:
    """Pool tasks for the plan's data in order; None for a weight the serial encoder must stream."""
    source = plan.source
    if plan.computed is not None or source is None or len(plan.shape) < 2 or plan.reordered:
        # small (norms, biases, rope factors) or read whole (Qwen3.5's regrouped value heads)
        return [lambda: [memoryview(chunk) for chunk in encoded_chunks(plan)]]
    if plan.qtype not in (Q.F16, Q.Q8_0):
        return None
    rows, row_elements = plan.shape[0], int(np.prod(plan.shape[1:]))
    step = max(1, CHUNK_ELEMENTS // row_elements)
    if plan.permute_head_dim:
        step = max(plan.permute_head_dim, step // plan.permute_head_dim * plan.permute_head_dim)
    return [_chunk_task(plan, start, min(rows, start + step)) for start in range(0, rows, step)]


def _chunk_task(plan: TensorPlan, start: int, stop: int) -> Task:
    def run() -> list[Piece]:
        source = plan.source
        assert source is not None
        stored = source.read_stored_rows(start, stop)
        if plan.permute_head_dim:
            # Rotate-half order (pairs i, i+d/2) → interleaved order (pairs 2i, 2i+1), per head.
            shape = stored.shape
            stored = stored.reshape(-1, 2, plan.permute_head_dim // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
        if plan.qtype == Q.F16 and source.dtype == "BF16":
            return [bf16_bits_to_f16(stored, plan.gguf_name).data]
        if plan.qtype == Q.F16:
            return [encode_f16(widen(stored), plan.gguf_name).data]
        return [encode_q8_0(stored, plan.gguf_name).data]

    return run


def widen(stored: np.ndarray) -> np.ndarray:
    """float32 values of read_stored_rows' array (bf16 is the upper half of a float32)."""
    if stored.dtype == np.uint16:
        widened = np.empty(stored.shape, dtype=np.uint32)
        np.left_shift(stored, 16, out=widened, dtype=np.uint32)
        return widened.view(np.float32)
    return stored.astype(np.float32, copy=False)


# bf16 bit patterns (sign cleared) at the edges of float16's normal range: 2^-14 and 2^16.
BF16_F16_SMALLEST_NORMAL = 0x3880
BF16_F16_OVERFLOW = 0x4780
BF16_INF = 0x7F80
# bf16 exponent bias 127, float16's 15: the difference, at the exponent's place in a bf16 pattern.
BF16_TO_F16_EXPONENT = (127 - 15) << 7


def bf16_bits_to_f16(bits: np.ndarray, name: str) -> np.ndarray:
    """bf16 bit patterns → float16, equal to float32 → float16 rounding but in uint16 integer passes.

    In float16's normal range the 7-bit bf16 mantissa fits the 10-bit one, so the value moves exactly: rebias the
    exponent and shift. Only magnitudes below 2^-14 (float16 subnormals, which round) go through float32.
    """
    flat = bits.reshape(-1)
    magnitude = flat & np.uint16(0x7FFF)
    if magnitude.size and int(magnitude.max()) >= BF16_F16_OVERFLOW:
        if int(magnitude.max()) >= BF16_INF:
            raise ConversionError(f"{name}: the weights hold NaN or infinite values, which F16 cannot store; "
                                  "choose f32 or bf16, or fix the model")
        raise ConversionError(f"{name}: values overflow float16; choose bf16 or f32")
    small = np.flatnonzero(magnitude < BF16_F16_SMALLEST_NORMAL)
    half = magnitude  # reused in place: magnitude is not needed any more
    half -= np.uint16(BF16_TO_F16_EXPONENT)
    half <<= np.uint16(3)
    half |= flat & np.uint16(0x8000)
    if small.size:
        half[small] = widen(flat[small]).astype("<f2").view(np.uint16)
    return half.astype("<u2", copy=False)


def encode_f16(values: np.ndarray, name: str) -> np.ndarray:
    """float32 → little-endian float16, refusing NaN, infinity and overflow like tensors.encoded_chunks."""
    with np.errstate(over="ignore"):  # overflow is reported below, as an error naming the tensor
        half = values.astype("<f2")
    if not np.isfinite(half).all():  # one check on the result; the source is looked at only to name the cause
        if not np.isfinite(values).all():
            raise ConversionError(f"{name}: the weights hold NaN or infinite values, which F16 cannot store; "
                                  "choose f32 or bf16, or fix the model")
        raise ConversionError(f"{name}: values overflow float16; choose bf16 or f32")
    return half.reshape(-1)


# Just below 0.5: x + ROUND_HALF_AWAY truncated is roundf(x) for every float32 |x| < 2^22. With 0.5 itself the one
# float32 below 0.5 would round up (0.49999997 + 0.5 is a tie that goes to 1.0); halves still round away from zero
# because k + 0.5 + 0.49999997 rounds to k + 1.
ROUND_HALF_AWAY = np.float32(0.5) - np.float32(2.0**-25)


def encode_q8_0(stored: np.ndarray, name: str) -> np.ndarray:
    """GGML's Q8_0 blocks (f16 scale, 32 int8) of read_stored_rows' array (or float32 values), bit-identical to
    gguf.quants and ggml-quants.c in fewer numpy passes: block maxima of |x| as integer maxima of the sign-cleared
    bit patterns (same order as the magnitudes), and roundf plus the int8 cast as one add and a truncating cast."""
    if stored.dtype == np.uint16:  # bf16 bit patterns
        amax = widen(_block_max(stored.reshape(-1, Q8_0_BLOCK) & np.uint16(0x7FFF)))
        blocks = widen(stored).reshape(-1, Q8_0_BLOCK)  # a fresh buffer: scaled in place below
    else:
        blocks = np.ascontiguousarray(stored, dtype=np.float32).reshape(-1, Q8_0_BLOCK)
        amax = _block_max(blocks.view(np.uint32) & np.uint32(0x7FFFFFFF)).view(np.float32)
        blocks = blocks.copy() if np.shares_memory(blocks, stored) else blocks
    if not np.isfinite(amax).all():  # NaN and infinity have the largest patterns
        raise ConversionError(f"{name}: the weights hold NaN or infinite values, which Q8_0 cannot store; "
                              "choose f32 or bf16, or fix the model")
    scale = amax / 127
    with np.errstate(divide="ignore"):
        inverse = np.where(scale == 0, 0, 1 / scale)
    scaled = np.multiply(blocks, inverse, out=blocks)
    scaled += np.copysign(ROUND_HALF_AWAY, scaled)
    out = np.empty((blocks.shape[0], 2 + Q8_0_BLOCK), dtype=np.uint8)
    out[:, :2] = scale.astype("<f2").view(np.uint8)
    np.copyto(out[:, 2:].view(np.int8), scaled, casting="unsafe")  # float → int truncates toward zero
    return out.reshape(-1)


def _block_max(magnitudes: np.ndarray) -> np.ndarray:
    """Row maxima of (n, 32) unsigned integers by halving the columns: a few whole-array passes instead of numpy's
    slow reduction along a 32-long axis."""
    half = np.maximum(magnitudes[:, :16], magnitudes[:, 16:])
    for width in (8, 4, 2, 1):
        np.maximum(half[:, :width], half[:, width:2 * width], out=half[:, :width])
    return half[:, :1].copy()
