"""Activation offload on a GPU: the same loss and gradients as plain checkpointing, and how much GPU memory it saves.

    python benchmarks/train_offload_check.py --shape qwen2.5-1.5b [--layers 2] [--lora-dropout 0] [--json x.json]

Builds our QLoRA model (`train_throughput.load_ours`: 4-bit base, LoRA r=16 with dropout 0.05 or `--lora-dropout`,
compiled layers, varlen attention, every layer recomputed) on the random model of `train_throughput.py`, takes one
optimizer step's packed rows of the chat workload and runs forward + backward over them:

1. plain checkpointing twice (the second run gives the run-to-run noise of the GPU kernels), then with offload;
   prints the loss and the largest relative LoRA-gradient difference of each against the first run;
2. the peak GPU memory (torch allocator) of the step without and with offload, and with offload in 2 and 4
   micro-batches and smaller loss chunks (the lean settings `train_peers.py` chooses from), with the step's time;
   without LoRA dropout also with the MLPs in token chunks of 2^22 to 2^24 intermediate values.
Every setting runs twice (the first compiles what it needs); the second is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench as bench
import train_throughput as tt

from kubetune.jobs.train_data import Batch, make_batcher
from kubetune.jobs.train_loss import CHUNK_LOGITS, chunked_causal_lm_loss_sum
from kubetune.jobs.train_offload import MLPChunks, enable_activation_offload


def step_batches(workload: bench.Workload, micro_batches: int, flat: bool) -> list[Batch]:
    """One optimizer step's packed rows (the first of the epoch), in `micro_batches` micro-batches."""
    train = bench.synthetic_samples(workload, workload.steps * bench.SAMPLES_PER_STEP, seed=bench.SEED)
    mean_length = sum(len(s.input_ids) for s in train) / len(train)
    rows = max(1, round(bench.SAMPLES_PER_STEP * mean_length / workload.max_length / micro_batches))
    batcher = make_batcher(packing=True, batch_size=rows, max_seq_length=workload.max_length, pad_token_id=0,
                           flat=flat)
    plan = batcher.epoch_batches(train, 0, bench.SEED)[:micro_batches]
    return [batcher.collate([[train[i] for i in row] for row in rows_of_batch]) for rows_of_batch in plan]


def run_step(model: torch.nn.Module, batches: list[Batch], chunk_logits: int) -> dict[str, Any]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same LoRA dropout masks every run
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    loss = torch.zeros((), device="cuda")
    for batch in batches:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            part = chunked_causal_lm_loss_sum(model, batch.to(torch.device("cuda")), chunk_logits=chunk_logits)
        part.backward()
        loss += part.detach()
    torch.cuda.synchronize()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": float(loss), "grads": grads, "seconds": time.perf_counter() - started,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def max_relative_difference(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    return max(float((grads[n] - g).norm() / g.norm().clamp_min(1e-30)) for n, g in reference.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen2.5-1.5b", choices=sorted(bench.SHAPES))
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--workload", default="chat", choices=sorted(bench.WORKLOADS))
    parser.add_argument("--lora-dropout", type=float, default=tt.Lora.dropout)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    config = bench.shape_config(args.shape, args.layers)
    workload = bench.WORKLOADS[args.workload]
    folder = bench.random_model_folder(args.shape, config, (args.workdir or bench.default_workdir())
                                    / f"{args.shape}-{config.num_hidden_layers}-layers")
    loaded = tt.load_ours(folder, config, 1.0, None, lora_dropout=args.lora_dropout)
    model, base = loaded.model, loaded.model.get_base_model()
    model.train()  # checkpointing (and so offload) runs in training mode only
    torch.manual_seed(0)
    for name, parameter in model.named_parameters():  # LoRA B starts at zero: give every LoRA tensor a gradient
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    layers = [m for m in base.modules() if getattr(m, "gradient_checkpointing", False)]
    plain_functions = [layer._gradient_checkpointing_func for layer in layers]

    def use_offload(on: bool, mlp_chunk_elements: int | None = None) -> None:
        for module in base.modules():  # MLPs back to their own forward
            if isinstance(module.__dict__.get("forward"), MLPChunks):
                del module.forward
        if on:
            enable_activation_offload(base, loaded.device, mlp_chunk_elements=mlp_chunk_elements, compile_mlp=True)
        else:
            for layer, function in zip(layers, plain_functions, strict=True):
                layer._gradient_checkpointing_func = function

    flat = loaded.model.config._attn_implementation == tt.VARLEN_ATTENTION
    one = step_batches(workload, 1, flat)
    report: dict[str, Any] = {"shape": args.shape, "layers": config.num_hidden_layers, "workload": workload.name,
                              "device": torch.cuda.get_device_name(), "tokens": sum(b.real_tokens for b in one)}
    run_step(model, one, CHUNK_LOGITS)  # compiles
    use_offload(True)
    run_step(model, one, CHUNK_LOGITS)  # warm
    use_offload(False)
    reference = run_step(model, one, CHUNK_LOGITS)
    # label: (offload, micro-batches, loss-chunk logits, MLP-chunk elements)
    runs: dict[str, tuple[bool, int, int, int | None]] = {
        "plain again": (False, 1, CHUNK_LOGITS, None), "offload": (True, 1, CHUNK_LOGITS, None),
        "offload, 1/4 chunks": (True, 1, CHUNK_LOGITS // 4, None),
        "offload, 2 micro-batches": (True, 2, CHUNK_LOGITS, None),
        "offload, 2 micro-batches, 1/4 chunks": (True, 2, CHUNK_LOGITS // 4, None),
        "offload, 3 micro-batches, 1/4 chunks": (True, 3, CHUNK_LOGITS // 4, None),
        "offload, 4 micro-batches, 1/4 chunks": (True, 4, CHUNK_LOGITS // 4, None),
    }
    if args.lora_dropout == 0:  # MLP chunks (offload chunks MLPs without dropout only)
        runs.update({f"offload, MLP 2^{e}, 1/{q} chunks": (True, 1, CHUNK_LOGITS // q, 2**e)
                     for e in (24, 23, 22) for q in (1, 4, 16)})
        runs.update({f"offload, 2 micro-batches, MLP 2^{e}, 1/4 chunks": (True, 2, CHUNK_LOGITS // 4, 2**e)
                     for e in (24, 23)})
    rows: dict[str, Any] = {"plain": {"loss": reference["loss"], "peak_gib": reference["peak_gib"],
                                      "seconds": reference["seconds"]}}
    batches = {m: step_batches(workload, m, flat) for m in (2, 3, 4)} | {1: one}
    for label, (offload, micro_batches, chunk_logits, mlp_chunk_elements) in runs.items():
        use_offload(offload, mlp_chunk_elements)
        run_step(model, batches[micro_batches], chunk_logits)  # compiles new shapes
        result = run_step(model, batches[micro_batches], chunk_logits)
        rows[label] = {"loss": result["loss"], "peak_gib": result["peak_gib"], "seconds": result["seconds"]}
        if micro_batches == 1:  # the same rows as the reference: the gradients must match
            rows[label]["max_grad_rel_diff"] = max_relative_difference(result["grads"], reference["grads"])
    report["runs"] = rows
    show: Callable[[str, dict[str, Any]], str] = lambda label, r: (
        f"{label:48s} loss {r['loss']:.6f}  peak {r['peak_gib']:6.2f} GiB  {r['seconds']:6.3f}s"
        + (f"  grad rel diff {r['max_grad_rel_diff']:.2e}" if "max_grad_rel_diff" in r else ""))
    print(f"\n{report['device']}: {args.shape}, {config.num_hidden_layers} layers, {report['tokens']} tokens a step")
    for label, row in rows.items():
        print(show(label, row))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
