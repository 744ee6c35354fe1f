"""The main job's CPU train step: padded micro-batches (the path before) against the joined rows the train stage uses
on CPUs, on the same micro-batches of the same model, interleaved so that machine load hits both alike.

    .venv/bin/python -P benchmarks/cpu_train_steps.py --data <dataset output>/train_data.jsonl --steps 8

The model, LoRA and dataset shape come from examples/local-identity.yaml (the bundled SmolLM2-135M-Instruct, LoRA
r16 all-linear, fp32, batch 4). `--data` is the dataset stage's `train_data.jsonl` of that manifest
(`kubetune run examples/local-identity.yaml --to-stage dataset` puts it under `.kubetune/store/`). Prints, per path,
the process CPU seconds of forward + backward over `--steps` micro-batches of epoch 0 (after one warm-up each), the tokens they run
(padding included) and the largest relative difference of the losses (the same sums up to rounding).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from kubetune.api.validate import load_runs
from kubetune.jobs.basemodel import default_cache_dir, resolve_base_model
from kubetune.jobs.train import join_pair_cost
from kubetune.jobs.train_data import (
    Batch,
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
    device = torch.device("cpu")
    loaded = build_model(model_dir, len(tokenizer), method=training.method, quantization=None, lora=training.lora,
                         device=device, gradient_checkpointing=False)
    model = loaded.model
    model.train()
    pair_cost = join_pair_cost(model_dir, device)
    assert pair_cost is not None
    paths = {"padded": PaddedBatcher(training.batch_size, pad_token_id(tokenizer)),
             "joined": JoinedBatcher(training.batch_size, pad_token_id(tokenizer), pair_cost)}
    warm_up, *plan = paths["padded"].epoch_batches(samples, 0, training.seed)[: args.steps + 1]
    seconds = dict.fromkeys(paths, 0.0)
    tokens = dict.fromkeys(paths, 0)
    worst = 0.0
    for index, micro in enumerate([warm_up, *plan]):
        rows = [[samples[i] for i in row] for row in micro]
        losses = {}
        for name, batcher in paths.items():
            batch: Batch = batcher.collate(rows)
            started = time.process_time()
            loss = chunked_causal_lm_loss_sum(model, batch)
            loss.backward()
            if index:  # the first micro-batch warms both paths up
                seconds[name] += time.process_time() - started
                tokens[name] += batch.input_ids.numel()
            model.zero_grad(set_to_none=True)
            losses[name] = loss.item()
        worst = max(worst, abs(losses["joined"] - losses["padded"]) / abs(losses["padded"]))
    for name in paths:
        print(f"{name}: {seconds[name]:.2f} CPU s, {tokens[name]} tokens over {len(plan)} micro-batches")
    print(f"joined / padded CPU time: {seconds['joined'] / seconds['padded']:.3f}; "
          f"largest relative loss difference {worst:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
