"""The GPU training benchmarks' common ground (`train_throughput.py`, `train_peers.py`, `train_offload_check.py`):
model shapes, workloads and their synthetic samples, random-init models, the MFU formula, the held-out loss that
judges every path, and one path's result.

Samples follow a fixed random bigram language (so there is something to learn) with log-normal lengths: `chat` around
300 tokens capped at 1024, `long` around 1500 capped at 4096; the first quarter of each sample is prompt (unlabelled).
MFU counts useful FLOPs per real token from the config: 4N (forward + input-gradient backward through the frozen
weights, N = non-embedding parameters) + 4·hidden·vocab (the frozen head) + 12·layers·q_width·(n+1)/2 (causal
attention within a sample of n tokens), over 989 TFLOP/s (H100 SXM dense bf16).
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_gpu_smoke import QWEN25_15B  # also makes kubetune.jobs importable from a checkout

from kubetune.jobs.train_data import IGNORE_INDEX, Sample
from kubetune.jobs.train_loss import causal_lm_loss_sum

H100_BF16_DENSE_FLOPS = 989e12
SEED = 1234
SAMPLES_PER_STEP = 16
LEARNING_RATE = 1e-3
WARMUP_RATIO = 0.1
BIGRAM_VOCAB = (1000, 5096)  # token ids the synthetic language uses
HELD_OUT = 24

LLAMA31_8B: dict[str, Any] = {
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
    "rope_theta": 500_000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "bos_token_id": 128000, "eos_token_id": 128009,
}


SHAPES: dict[str, Callable[[], PretrainedConfig]] = {
    "qwen2.5-1.5b": lambda: Qwen2Config(**QWEN25_15B),
    "llama3.1-8b": lambda: LlamaConfig(**LLAMA31_8B),
}


def shape_config(shape: str, layers: int | None = None) -> PretrainedConfig:
    """The shape's config, with only its first `layers` decoder layers when given (a quick check of a code path)."""
    config = SHAPES[shape]()
    if layers:
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):  # one entry per layer, checked when saved
            config.layer_types = config.layer_types[:layers]
    return config


@dataclass(frozen=True)
class Workload:
    name: str
    median_length: int
    sigma: float
    max_length: int
    baseline_batch: int  # per-device batch of the stock recipe; accumulation fills SAMPLES_PER_STEP
    steps: int
    warmup_steps: int
    micro_batches: int = 1  # our path: a step's packed rows in this many micro-batches (less activation memory)


WORKLOADS = {
    "chat": Workload("chat", 300, 0.6, 1024, baseline_batch=8, steps=14, warmup_steps=2),
    "long": Workload("long", 1500, 0.5, 4096, baseline_batch=2, steps=6, warmup_steps=1, micro_batches=2),
}


@dataclass
class Result:
    path: str
    tokens_per_second: float
    mfu: float
    peak_gib: float
    held_out_loss: float
    timed_tokens: int
    timed_seconds: float
    steps: int


def synthetic_samples(workload: Workload, count: int, seed: int) -> list[Sample]:
    """Samples of a fixed random bigram language (each token has four likely successors), log-normal lengths."""
    table_generator = torch.Generator().manual_seed(SEED)
    low, high = BIGRAM_VOCAB
    successors = torch.randint(low, high, (high, 4), generator=table_generator)
    choice_weights = torch.tensor([0.55, 0.25, 0.15, 0.05])
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.exp(math.log(workload.median_length) + workload.sigma * torch.randn(count, generator=generator))
    samples = []
    for length in lengths.round().clamp(16, workload.max_length).int().tolist():
        choices = torch.multinomial(choice_weights, length, replacement=True, generator=generator).tolist()
        token = int(torch.randint(low, high, (1,), generator=generator))
        ids = [token]
        for choice in choices[1:]:
            token = int(successors[token, choice])
            ids.append(token)
        prompt = length // 4
        samples.append(Sample(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return samples


def flops_per_token(config: PretrainedConfig, samples: Sequence[Sample]) -> float:
    """Useful training FLOPs per real token (the module docstring's formula), averaged over `samples`."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_width, kv_width = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    per_layer = hidden * q_width * 2 + hidden * kv_width * 2 + 3 * hidden * config.intermediate_size
    non_embedding = layers * per_layer
    dense = 4 * non_embedding + 4 * hidden * config.vocab_size
    tokens = sum(len(s.input_ids) for s in samples)
    attention = sum(12 * layers * q_width * len(s.input_ids) * (len(s.input_ids) + 1) / 2 for s in samples)
    return dense + attention / tokens


def random_model_folder(shape: str, config: PretrainedConfig, folder: Path) -> Path:
    if (folder / "config.json").is_file():
        return folder
    started = time.monotonic()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(folder))
    del model
    release_memory()
    print(f"[{shape}] built and saved the random model in {time.monotonic() - started:.1f}s ({folder})", flush=True)
    return folder


def release_memory() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def held_out_loss(model: torch.nn.Module, samples: Sequence[Sample]) -> float:
    """Mean token loss over labelled tokens, each sample alone (no padding, no packing), full fp32 logits."""
    from kubetune.jobs.train_data import Batch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    # Eagerly: the reference numerics, and no compiling of eval graphs for one pass.
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), torch.compiler.set_stance("force_eager"):
        for sample in samples:
            ids = torch.tensor([sample.input_ids], device="cuda")
            batch = Batch(ids, torch.tensor([sample.labels], device="cuda"), None, None, len(sample.input_ids))
            total += float(causal_lm_loss_sum(model, batch))
            count += sum(1 for label in sample.labels[1:] if label != IGNORE_INDEX)
    model.train(was_training)
    return total / count


@contextmanager
def timed_region() -> Iterator[list[float]]:
    torch.cuda.synchronize()
    span = [time.monotonic()]
    yield span
    torch.cuda.synchronize()
    span.append(time.monotonic())


def describe(result: Result) -> str:
    return (f"{result.path:12s} {result.tokens_per_second:9.0f} real tok/s  MFU {100 * result.mfu:5.1f}%  "
            f"peak {result.peak_gib:6.2f} GiB  held-out loss {result.held_out_loss:.4f}  "
            f"({result.timed_tokens} tokens in {result.timed_seconds:.2f}s, {result.steps} steps)")


def default_workdir() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 40 * 2**30:
        return shm / "kubetune-throughput"
    return Path(os.environ.get("TMPDIR", tempfile.gettempdir())) / "kubetune-throughput"
