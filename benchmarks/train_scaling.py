"""Data-parallel scaling of our train stage's path: real tokens/s of N GPUs over one GPU, and peak memory per GPU.

    python benchmarks/train_scaling.py --shape qwen2.5-1.5b --workload chat --gpus 1 2

One script, one random-init model (the GPU-speed benchmark's, `train_throughput.py`), the same synthetic samples.
For each rank count N it starts N rank processes with the torchrun environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR`, `MASTER_PORT`), as the train job's launcher does, and each rank runs what a train job's rank runs:
`Ranks.place` + `process_group`, `build_model` (its own 4-bit model on its own GPU), the trainable weights broadcast
from rank 0, and `TrainLoop` taking its own micro-batches of the shared plan with one gradient all-reduce per step.
Every rank keeps the one-GPU micro-batch (the benchmark's packed rows per step), so N ranks train N times the tokens
per optimizer step (weak scaling, how data parallelism is used to go faster); the figure is real tokens/s summed
over the ranks after warm-up steps, timed on rank 0 between synchronised step boundaries. Scaling = tokens/s with N
ranks / tokens/s with one rank (ideal: N).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import (  # also makes kubetune.jobs importable from a checkout
    DEFAULT_RECOMPUTE,
    H100_BF16_DENSE_FLOPS,
    SAMPLES_PER_STEP,
    SEED,
    SHAPES,
    WORKLOADS,
    default_workdir,
    flops_per_token,
    load_ours,
    random_model_folder,
    synthetic_samples,
    timed_region,
)

from kubetune.jobs.distributed import process_group, ranks_from_env
from kubetune.jobs.train_data import PackedBatcher
from kubetune.jobs.train_loop import LoopSettings, TrainerState, TrainLoop, make_optimizer


@dataclass
class RankResult:
    rank: int
    world_size: int
    tokens_per_second: float  # summed over the ranks (rank 0's timing)
    timed_tokens: int
    timed_seconds: float
    peak_gib: float  # this rank's GPU
    final_loss: float


def run_rank(folder: Path, shape: str, workload_name: str, steps: int, out: Path) -> None:
    """One rank of an N-rank run (its place comes from the torchrun environment)."""
    ranks = ranks_from_env()
    assert ranks is not None, "run by the benchmark with the torchrun environment"
    workload = WORKLOADS[workload_name]
    config = SHAPES[shape]()
    device = ranks.place(torch.device("cuda"))
    samples = synthetic_samples(workload, steps * SAMPLES_PER_STEP * ranks.world_size, seed=SEED)
    mean_length = sum(len(s.input_ids) for s in samples) / len(samples)
    rows = max(1, round(SAMPLES_PER_STEP * mean_length / workload.max_length))
    with process_group(ranks, device):
        loaded = load_ours(folder, config, DEFAULT_RECOMPUTE[shape, workload_name], None, device=device)
        ranks.broadcast_from_main([p for p in loaded.model.parameters() if p.requires_grad])
        batcher = PackedBatcher(batch_size=rows, max_seq_length=workload.max_length, pad_token_id=0)
        batches = len(batcher.epoch_batches(samples, 0, SEED))
        settings = LoopSettings(learning_rate=1e-3, lr_scheduler="linear", warmup_ratio=0.1, gradient_accumulation=1,
                                seed=SEED, logging_steps=1, checkpoint_every=10**9)
        optimizer, scheduler = make_optimizer(loaded.model, settings, steps)
        loop = TrainLoop(loaded.model, optimizer, scheduler, samples, batcher, settings, loaded.device,
                         autocast_dtype=loaded.autocast_dtype, ranks=ranks)
        state = TrainerState(total_steps=steps, batches_per_epoch=batches)
        torch.cuda.reset_peak_memory_stats(device)
        tokens, seconds, loss = 0, 0.0, float("nan")
        while not state.finished:
            timing = state.step >= workload.warmup_steps
            with timed_region() as span:
                loss, real = loop.optimizer_step(state)  # real tokens of the step, summed over the ranks
            if timing:
                tokens, seconds = tokens + real, seconds + span[1] - span[0]
        # Every rank waits at the same collectives each step, so rank 0's clock times the whole world's step.
        times = ranks.sum(seconds)
        result = RankResult(ranks.rank, ranks.world_size, tokens / (times[0] / ranks.world_size), tokens,
                            times[0] / ranks.world_size, torch.cuda.max_memory_allocated(device) / 2**30, loss)
    out.write_text(json.dumps(asdict(result)), encoding="utf-8")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch(folder: Path, shape: str, workload: str, steps: int, world_size: int, workdir: Path) -> list[RankResult]:
    """Start `world_size` rank processes (the torchrun environment) and collect each one's figures."""
    port = free_port()
    processes, outputs = [], []
    for rank in range(world_size):
        out = workdir / f"scaling-{world_size}-rank{rank}.json"
        out.unlink(missing_ok=True)
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        if world_size > 1:  # as torchrun (the job's launcher) sets it: N ranks' CPU thread pools do not fight
            env.setdefault("OMP_NUM_THREADS", "1")
        command = [sys.executable, __file__, "--rank-of", str(folder), "--shape", shape, "--workload", workload,
                   "--steps", str(steps), "--out", str(out)]
        processes.append(subprocess.Popen(command, env=env))
        outputs.append(out)
    codes = [process.wait() for process in processes]
    if any(codes):
        sys.exit(f"{world_size}-rank run failed: exit codes {codes}")
    return [RankResult(**json.loads(out.read_text(encoding="utf-8"))) for out in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="qwen2.5-1.5b")
    parser.add_argument("--workload", choices=list(WORKLOADS), default="chat")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="rank counts to run, the first is the base")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per run (the workload's warm-up first)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("--rank-of", type=Path, default=None, help=argparse.SUPPRESS)  # a rank process: the model
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_of is not None:
        run_rank(args.rank_of, args.shape, args.workload, args.steps, args.out)
        return
    available = torch.cuda.device_count()
    if max(args.gpus) > available:
        sys.exit(f"asked for {max(args.gpus)} GPUs, {available} visible")
    workdir = args.workdir or default_workdir()
    config = SHAPES[args.shape]()
    folder = random_model_folder(args.shape, config, workdir / args.shape)
    flops = flops_per_token(config, synthetic_samples(WORKLOADS[args.workload], 256, seed=SEED))
    label = f"[{args.shape} / {args.workload}]"
    print(f"{label} {torch.cuda.get_device_name()} x{available}; torch {torch.__version__}", flush=True)
    report = []
    for world_size in args.gpus:
        results = launch(folder, args.shape, args.workload, args.steps, world_size, workdir)
        rate = results[0].tokens_per_second
        entry = {"gpus": world_size, "tokens_per_second": rate,
                 "mfu_per_gpu": rate * flops / world_size / H100_BF16_DENSE_FLOPS,
                 "peak_gib_per_gpu": [round(r.peak_gib, 2) for r in results],
                 "final_loss": results[0].final_loss, "timed_tokens": results[0].timed_tokens}
        report.append(entry)
        print(f"{label} {world_size} GPU(s): {rate:,.0f} real tokens/s, MFU per GPU {100 * entry['mfu_per_gpu']:.1f}%, "
              f"peak GiB per GPU {entry['peak_gib_per_gpu']}, last step loss {entry['final_loss']:.4f}", flush=True)
    base = report[0]
    for entry in report[1:]:
        entry["scaling"] = entry["tokens_per_second"] / base["tokens_per_second"]
        entry["efficiency"] = entry["scaling"] * base["gpus"] / entry["gpus"]
        print(f"{label} scaling {base['gpus']} -> {entry['gpus']} GPUs: {entry['scaling']:.2f}x "
              f"({100 * entry['efficiency']:.0f}% of ideal)", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
