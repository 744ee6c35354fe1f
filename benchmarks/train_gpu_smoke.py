"""QLoRA smoke benchmark on one GPU: our train stage's model setup and loop on a random Qwen2.5-1.5B-shaped model.

    python benchmarks/train_gpu_smoke.py --steps 10 --batch 8 --seq 1024

The random model is built on the GPU (building 1.5B parameters on the CPU takes minutes), saved once as bf16
safetensors in --workdir, then loaded through `kubetune.jobs.train_model.build_model` exactly as the train stage
loads a base model (4-bit NF4, double quant, bf16 compute, LoRA all-linear). Synthetic batches of full-length rows,
every token labelled. Prints real tokens/s (after warm-up steps) and peak GPU memory.
Needs only torch, transformers, peft, accelerate, safetensors and bitsandbytes.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, Qwen2Config


def use_checkout_jobs() -> None:
    """Make `kubetune.jobs` importable from a plain checkout (no editable install, e.g. on a bare GPU machine):
    the folder `jobs/` is the package `kubetune.jobs`, as pyproject's package-dir maps it."""
    try:
        import kubetune.jobs  # noqa: F401 - installed (editable or wheel): nothing to do
        return
    except ModuleNotFoundError:
        pass
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    spec = importlib.util.spec_from_file_location("kubetune.jobs", root / "jobs" / "__init__.py",
                                                  submodule_search_locations=[str(root / "jobs")])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kubetune.jobs"] = module
    spec.loader.exec_module(module)


use_checkout_jobs()

from kubetune.jobs.train_data import PaddedBatcher, Sample
from kubetune.jobs.train_loop import LoopSettings, TrainerState, TrainLoop, make_optimizer
from kubetune.jobs.train_model import DefaultQuantization, build_model


@dataclass(frozen=True)
class Lora:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("all-linear",)

VOCAB_SIZE = 151936
QWEN25_15B: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    "bos_token_id": 151643, "eos_token_id": 151645,
}


def random_model_folder(folder: Path) -> Path:
    if (folder / "config.json").is_file():
        return folder
    started = time.monotonic()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN25_15B), dtype=torch.bfloat16)
    model.save_pretrained(str(folder))
    del model
    torch.cuda.empty_cache()
    print(f"built random Qwen2.5-1.5B-shaped model on the GPU in {time.monotonic() - started:.1f}s", flush=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "kubetune-gpu-smoke")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")

    folder = random_model_folder(args.workdir / "qwen2.5-1.5b-random")
    loaded = build_model(
        folder, VOCAB_SIZE, method="qlora",
        quantization=DefaultQuantization(type="nf4", double_quant=True, compute_dtype="bfloat16"),
        lora=Lora(),
        device=torch.device("cuda"), gradient_checkpointing=not args.no_gradient_checkpointing, compile_layers=True,
    )
    generator = torch.Generator().manual_seed(0)
    rows = args.batch * (args.steps + args.warmup)
    ids = torch.randint(0, VOCAB_SIZE, (rows, args.seq), generator=generator).tolist()
    samples = [Sample(row, row) for row in ids]
    settings = LoopSettings(learning_rate=2e-4, lr_scheduler="constant", warmup_ratio=0.0, gradient_accumulation=1,
                            seed=0, logging_steps=1, checkpoint_every=10**9)
    optimizer, scheduler = make_optimizer(loaded.model, settings, args.steps + args.warmup)
    batcher = PaddedBatcher(batch_size=args.batch, pad_token_id=0)
    loop = TrainLoop(loaded.model, optimizer, scheduler, samples, batcher, settings, loaded.device,
                     autocast_dtype=loaded.autocast_dtype)
    state = TrainerState(total_steps=args.steps + args.warmup, batches_per_epoch=len(samples) // args.batch)
    torch.cuda.reset_peak_memory_stats()
    tokens, started = 0, 0.0
    for step in range(args.steps + args.warmup):
        if step == args.warmup:
            torch.cuda.synchronize()
            tokens, started = 0, time.monotonic()
        loss, real = loop.optimizer_step(state)
        tokens += real
        print(f"step {step + 1}: loss {loss:.4f}", flush=True)
    torch.cuda.synchronize()
    elapsed = time.monotonic() - started
    print(f"device: {torch.cuda.get_device_name()}")
    print(f"QLoRA nf4+double-quant bf16, LoRA r16 all-linear, batch {args.batch} x {args.seq}, "
          f"gradient checkpointing {not args.no_gradient_checkpointing}")
    print(f"tokens/s: {tokens / elapsed:.0f} ({tokens} tokens in {elapsed:.2f}s over {args.steps} steps)")
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
