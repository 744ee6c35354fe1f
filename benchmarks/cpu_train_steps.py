"""The main job's CPU train step, path by path: what the train stage ran before against what it runs now, on the
same micro-batches of the same model, interleaved so that machine load hits every path alike.

    .venv/bin/python -P benchmarks/cpu_train_steps.py --data <dataset output>/train_data.jsonl --steps 8

The model, LoRA and dataset shape come from examples/local-identity.yaml (the bundled SmolLM2-135M-Instruct, LoRA
r16 all-linear, fp32, batch 4). `--data` is the dataset stage's `train_data.jsonl` of that manifest
(`kubetune run examples/local-identity.yaml --to-stage dataset` puts it under `.kubetune/store/`). Paths:

- `padded`: padded micro-batches, transformers' SDPA, peft's LoRA layers (the stock recipe's step);
- `joined`: each micro-batch as one unpadded row attended sample by sample (`JoinedBatcher`, our attention);
- `fused`: `joined` with each LoRA linear layer as one op (`train_cpu_lora`);
- `int8`: `fused` with the base matmuls in int8 (`training.int8`, the main job's setting).

Prints, per path, the wall and process CPU seconds of forward + backward over `--steps` micro-batches of epoch 0
(after one warm-up each), the tokens they run (padding included), and the largest relative difference of the loss
and of any LoRA gradient from `padded`'s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from kubetune.api.validate import load_runs
from kubetune.jobs import train_model
from kubetune.jobs.basemodel import default_cache_dir, resolve_base_model
from kubetune.jobs.train_attention import VARLEN_ATTENTION
from kubetune.jobs.train_data import (
    JoinedBatcher,
    PaddedBatcher,
    default_chat_template,
    load_conversations,
    tokenize_dataset,
)
from kubetune.jobs.train_loss import chunked_causal_lm_loss_sum
from kubetune.jobs.train_model import build_model, load_tokenizer, pad_token_id
from kubetune.store import open_store

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "local-identity.yaml"
# name: (joined rows, fused LoRA layers, int8 base matmuls)
PATHS = {"padded": (False, False, False), "joined": (True, False, False), "fused": (True, True, False),
         "int8": (True, True, True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the dataset stage's train_data.jsonl")
    parser.add_argument("--steps", type=int, default=8, help="micro-batches per path")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_runs(EXAMPLE)[0].spec
    training = spec.training
    model_dir = resolve_base_model(spec.base_model, store_factory=open_store, cache_dir=default_cache_dir())
    tokenizer, _ = load_tokenizer(model_dir, default_chat_template(), training.added_special_tokens)
    samples = tokenize_dataset(tokenizer, load_conversations(args.data), spec.dataset.max_seq_length)
    pad = pad_token_id(tokenizer)
    fuse_layers = train_model.fuse_cpu_lora_layers

    def model_for(joined: bool, fused: bool, int8: bool) -> torch.nn.Module:
        train_model.fuse_cpu_lora_layers = fuse_layers if fused else (lambda model, int8: (0, 0))
        torch.manual_seed(training.seed)
        loaded = build_model(model_dir, len(tokenizer), method=training.method, quantization=None,
                             lora=training.lora, device=torch.device("cpu"), gradient_checkpointing=False,
                             attn_implementation=VARLEN_ATTENTION if joined else "sdpa", int8=int8)
        loaded.model.train()
        return loaded.model

    models = {name: model_for(*flags) for name, flags in PATHS.items()}
    train_model.fuse_cpu_lora_layers = fuse_layers
    padded, joined = PaddedBatcher(training.batch_size, pad), JoinedBatcher(training.batch_size, pad)
    warm_up, *plan = padded.epoch_batches(samples, 0, training.seed)[: args.steps + 1]
    wall = dict.fromkeys(PATHS, 0.0)
    cpu = dict.fromkeys(PATHS, 0.0)
    tokens = dict.fromkeys(PATHS, 0)
    worst = dict.fromkeys(PATHS, 0.0)
    for index, micro in enumerate([warm_up, *plan]):
        rows = [[samples[i] for i in row] for row in micro]
        results: dict[str, tuple[float, list[torch.Tensor]]] = {}
        for name, (join, _, _) in PATHS.items():
            batch = (joined if join else padded).collate(rows)
            model = models[name]
            started, started_cpu = time.perf_counter(), time.process_time()
            loss = chunked_causal_lm_loss_sum(model, batch)
            loss.backward()
            if index:  # the first micro-batch warms every path up
                wall[name] += time.perf_counter() - started
                cpu[name] += time.process_time() - started_cpu
                tokens[name] += batch.input_ids.numel()
            results[name] = (loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
            model.zero_grad(set_to_none=True)
        reference_loss, reference_grads = results["padded"]
        for name, (value, grads) in results.items():
            differences = [float((a - b).norm() / b.norm()) for a, b in zip(grads, reference_grads, strict=True)]
            worst[name] = max(worst[name], abs(value - reference_loss) / abs(reference_loss), *differences)
    for name in PATHS:
        print(f"{name:7s} {wall[name]:6.2f} s wall {cpu[name]:6.2f} CPU s ({cpu[name] / cpu['padded']:.2f}x padded), "
              f"{tokens[name]} tokens over {len(plan)} micro-batches; largest relative difference from padded "
              f"(loss, LoRA gradients) {worst[name]:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
