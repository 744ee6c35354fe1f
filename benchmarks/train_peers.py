"""QLoRA training on one GPU against the tools users pick instead of us, all in one run on the same machine.

    python benchmarks/train_peers.py --shapes qwen2.5-1.5b llama3.1-8b --workloads chat long --json peers.json

Every path trains the same random-init model (saved once as bf16 safetensors, loaded 4-bit NF4 with double quant
and bf16 compute), on the same synthetic samples, LoRA r=16 all-linear (alpha 32), learning rate, linear schedule
and 16 samples per optimizer step as `train_throughput.py` (whose data, model shapes, MFU formula and held-out loss
this reuses). Each path runs in its own process (Unsloth patches transformers on import; peak memory per path):

- `stock`: the transformers `Trainer` recipe of `train_throughput.py` (padded batches, SDPA, checkpointing);
- `trl-liger`: TRL `SFTTrainer` with `padding_free=True` and `use_liger_kernel=True` (Liger's RMSNorm, SwiGLU, RoPE
  and fused linear cross-entropy), the stock micro-batch sizes, gradient checkpointing. TRL documents padding-free
  with FlashAttention; the GPU image has no flash-attn build and cannot fetch one, so the model runs
  `flex_attention`, where transformers derives a block-diagonal mask from the reset position ids: samples stay
  isolated (the alternative, SDPA with a dense mask, does not fit the long workload);
- `unsloth` / `unsloth-d0`: `FastLanguageModel.from_pretrained(load_in_4bit=True)` + `get_peft_model(...,
  use_gradient_checkpointing="unsloth")` + its patched `SFTTrainer` with `packing=True` (Unsloth's sample-isolated
  packing), LoRA dropout 0.05 (the same LoRA as everyone) and 0 (Unsloth's fastest kernels);
- `kubetune` / `kubetune-fp8`: our train stage's path (`train_throughput.run_ours`), bf16 and FP8 base matmuls,
  with the default recompute table (#11's memory budget);
- `kubetune-fast` / `kubetune-fp8-fast`: the fast mode, `training.recomputeLayers: 0` (no layer recomputed) with
  the step in `FAST`'s micro-batches, sized to an 80 GB card;
- `kubetune-lean` / `kubetune-fp8-lean`: the same with `training.activationOffload` (every layer recomputed, layer
  inputs in pinned CPU memory) and the step in `LEAN`'s micro-batches, to run at or under the peers' GPU memory;
- `kubetune-d0`, `kubetune-d0-lean`, `kubetune-fp8-d0-lean`: the same with LoRA dropout 0, the LoRA of Unsloth's
  `-d0` paths (like with like); the lean ones in `LEAN_D0`'s micro-batches (`--mlp-chunk-elements`: their MLPs in
  token chunks, which offload does only without dropout).

The lean paths keep an untied input embedding table in host memory, as the train stage's lean mode does; its
AdamW moments in host memory too only with `--host-moments` (the train stage's lean mode always does: the flag
keeps the earlier measurements' setting reproducible).

Reported per path: real tokens/s after the warm-up steps, MFU, peak GPU memory (torch allocator; Unsloth and our
lean paths hold checkpointed activations in CPU memory, which this does not count — nor would a GPU budget),
held-out loss, seconds with loading; then each of ours against stock, against the fastest peer and against the
fastest peer with the same LoRA dropout, with the memory ratio, and against each peer the fastest of ours whose peak
is at most that peer's (issue #22's comparison). `--json` is rewritten after every path, so a run cut short keeps
what it measured.

Pinned peers (the wheels carried to the GPU machine): trl 1.15.0 (Unsloth 2026.10.9 needs trl ≤ 1.15.0),
liger-kernel 0.8.5, unsloth 2026.10.9, unsloth_zoo 2026.10.9, bitsandbytes 0.50.2, datasets 4.8.5, torchao 0.18.0,
cut_cross_entropy 25.1.1, and pydantic (our train code reads the chat-template spec); what they import that the
GPU image lacks: tyro 1.0.17, docstring_parser 0.18.0, shtab 1.13.0, typeguard 4.6.1, msgspec 0.23.0, hf_transfer
0.1.9, dill 0.4.1, multiprocess 0.70.19, json5 0.17.3, nest_asyncio 1.6.0, structlog 26.1.0 (installed into one
folder, Unsloth's `studio` web app and bitsandbytes' libraries for other CUDA versions removed, it travels in 24 MB);
torch, transformers and peft as installed on the GPU image (printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

OURS = ("kubetune", "kubetune-fp8", "kubetune-fast", "kubetune-fp8-fast", "kubetune-lean", "kubetune-fp8-lean",
        "kubetune-d0", "kubetune-d0-lean", "kubetune-fp8-d0-lean")
PEERS = ("trl-liger", "unsloth", "unsloth-d0", "unsloth-d0-packed")
PATHS = ("stock", *PEERS, *OURS)
PAD_ID = 0  # the synthetic language never uses it (train_throughput.BIGRAM_VOCAB)
# Our lean paths: activation offload with a step in this many micro-batches, loss chunks of this many logits (the
# least memory at which they still run fast; `benchmarks/train_offload_check.py` measures the choices). Plain ints:
# this module must not import torch or transformers before a worker imports Unsloth.
LEAN = {("qwen2.5-1.5b", "chat"): (3, 2**24), ("qwen2.5-1.5b", "long"): (2, 2**26),
        ("llama3.1-8b", "chat"): (3, 2**24), ("llama3.1-8b", "long"): (2, 2**26)}
# The lean paths without LoRA dropout: micro-batches, loss-chunk logits, MLP-chunk intermediate values (None: whole
# MLPs; chunks cut the peak but cost more time than a micro-batch more, `train_offload_check.py`). Measured in
# training: 1.5B long (3.35 GiB against Unsloth d0 packed's 3.38); 8B chat in one micro-batch, the untied input
# embedding in host memory (6.45 GiB against 6.93); 1.5B chat in 2 with `--host-moments` (1.76 GiB against 1.80;
# 1.90 with the moments on the GPU).
LEAN_D0: dict[tuple[str, str], tuple[int, int, int | None]] = {
    ("qwen2.5-1.5b", "chat"): (2, 2**24, None), ("qwen2.5-1.5b", "long"): (2, 2**26, None),
    ("llama3.1-8b", "chat"): (1, 2**26, None), ("llama3.1-8b", "long"): (2, 2**26, None)}
# The fast mode (no recompute): micro-batches per step, the fewest whose activations fit an 80 GB card (8B long in 3:
# 58.6 GiB bf16, 65.0 GiB FP8 on an H200; 8B chat in one: 39.0 / 45.5 GiB).
FAST = {("qwen2.5-1.5b", "chat"): 1, ("qwen2.5-1.5b", "long"): 2, ("llama3.1-8b", "chat"): 1,
        ("llama3.1-8b", "long"): 3}
OVERRIDE_FLAGS = {"micro_batches": "--lean-micro-batches", "chunk_logits": "--lean-chunk-logits",
                  "mlp_chunk_elements": "--mlp-chunk-elements", "host_moments": "--host-moments"}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------- one path, in its own process


def run_worker(path: str, shape: str, workload_name: str, folder: Path, layers: int | None, out: Path,
               overrides: dict[str, int | bool | None]) -> None:
    if path.startswith("unsloth"):
        import unsloth  # noqa: F401 - before transformers, as Unsloth requires
    sys.path.insert(0, str(HERE))
    import train_bench as bench
    import train_throughput as tt

    config = bench.shape_config(shape, layers)
    workload = bench.WORKLOADS[workload_name]
    train = bench.synthetic_samples(workload, workload.steps * bench.SAMPLES_PER_STEP, seed=bench.SEED)
    held_out = bench.synthetic_samples(workload, bench.HELD_OUT, seed=bench.SEED + 1)
    flops = bench.flops_per_token(config, train)
    extras: dict[str, Any] = {}
    if path == "stock":
        result = tt.run_baseline(folder, workload, train, held_out, flops, folder.parent)
    elif path.startswith("kubetune"):
        fp8 = path.startswith("kubetune-fp8")
        fast = path.endswith("-fast")
        if fast:
            workload = replace(workload, micro_batches=FAST[shape, workload_name])
        d0 = "-d0" in path
        lean = None
        if path.endswith("-lean"):
            micro_batches, chunk_logits, mlp_chunk = (LEAN_D0[shape, workload_name] if d0
                                                      else (*LEAN[shape, workload_name], None))
            lean = tt.Lean(overrides["micro_batches"] or micro_batches, overrides["chunk_logits"] or chunk_logits,
                           overrides["mlp_chunk_elements"] or mlp_chunk, host_moments=bool(overrides["host_moments"]))
        recompute = 1.0 if lean else 0.0 if fast else (
            tt.FP8_RECOMPUTE if fp8 else tt.DEFAULT_RECOMPUTE)[shape, workload_name]
        result, details = tt.run_ours(folder, config, workload, train, held_out, flops, recompute, fp8=fp8,
                                      check_packing=False, lean=lean, lora_dropout=0.0 if d0 else tt.Lora.dropout)
        result = replace(result, path=path)
        extras = {"recompute": recompute, "attention": details["attention"], "lora_dropout": 0.0 if d0 else 0.05,
                  "offloaded_layers": details["offloaded_layers"], "chunked_mlp_layers": details["chunked_mlp_layers"],
                  "host_embedding": details["host_embedding"]}
        if fast:
            extras["micro_batches"] = workload.micro_batches
        if lean:
            extras.update(micro_batches=lean.micro_batches, chunk_logits=lean.chunk_logits,
                          mlp_chunk_elements=lean.mlp_chunk_elements, host_moments=lean.host_moments)
    else:
        result, extras = run_peer(path, tt, folder, workload, train, held_out, flops)
    out.write_text(json.dumps({"result": asdict(result), "extras": extras}), encoding="utf-8")


def run_peer(path: str, tt: Any, folder: Path, workload: Any, train: list[Any], held_out: list[Any],
             flops: float) -> tuple[Any, dict[str, Any]]:
    import torch
    import train_bench as bench
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    lora: dict[str, Any] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0 if path.startswith("unsloth-d0") else 0.05}
    if path == "trl-liger":
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=quantization,
                                                     device_map={"": 0}, dtype=torch.bfloat16,
                                                     attn_implementation="flex_attention")
        peft_config: Any = LoraConfig(**lora, target_modules="all-linear", task_type="CAUSAL_LM")
        # Samples are at most max_length already; TRL enforces max_length only when it packs.
        batch, extra_args = workload.baseline_batch, {"padding_free": True, "use_liger_kernel": True,
                                                      "max_length": None}
    else:
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(model_name=str(folder), max_seq_length=workload.max_length,
                                                     dtype=torch.bfloat16, load_in_4bit=True)
        model = FastLanguageModel.get_peft_model(model, **lora, target_modules=list(LORA_TARGETS), bias="none",
                                                 use_gradient_checkpointing="unsloth", random_state=bench.SEED)
        peft_config = None
        if path == "unsloth-d0-packed":  # rows of max_length: as many per step as hold ~16 samples, like ours
            mean_length = sum(len(s.input_ids) for s in train) / len(train)
            batch = max(1, round(bench.SAMPLES_PER_STEP * mean_length / workload.max_length))
            extra_args = {"packing": True, "max_length": workload.max_length}
        else:  # Unsloth's default: padding-free batches when the model allows it (decided by Unsloth)
            batch, extra_args = workload.baseline_batch, {"max_length": workload.max_length}
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(folder.parent / f"{path}-trainer"), per_device_train_batch_size=batch,
        gradient_accumulation_steps=max(1, bench.SAMPLES_PER_STEP // batch) if path != "unsloth-d0-packed" else 1, num_train_epochs=1, learning_rate=bench.LEARNING_RATE,
        lr_scheduler_type="linear", warmup_steps=bench.WARMUP_RATIO, max_grad_norm=1.0, bf16=True,
        gradient_checkpointing=path == "trl-liger", logging_steps=10**6, save_strategy="no", eval_strategy="no",
        report_to="none", seed=bench.SEED, data_seed=bench.SEED, disable_tqdm=True, dataset_num_proc=1, **extra_args,
    )
    real_tokens = torch.zeros((), dtype=torch.long, device="cuda")

    def count_real_tokens(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        real_tokens.add_((inputs[0] != PAD_ID).sum())  # stays on the GPU: no extra synchronisation

    counter = model.get_input_embeddings().register_forward_pre_hook(count_real_tokens)
    timing = tt.TrainerTiming(workload.warmup_steps, real_tokens)
    dataset = Dataset.from_list([{"input_ids": s.input_ids, "labels": s.labels} for s in train])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[timing.callback()])
    bench.release_memory()
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30
    counter.remove()
    os.environ["UNSLOTH_RETURN_LOGITS"] = "1"  # Unsloth skips logits in training forwards; the check needs them
    loss = bench.held_out_loss(trainer.model, held_out)
    rate = timing.tokens / timing.seconds
    extras = {"attention": trainer.model.config._attn_implementation, "steps": timing.steps, "micro_batch": batch,
              "padding_free": bool(getattr(trainer.args, "padding_free", False)),
              "packing": bool(getattr(trainer.args, "packing", False)), "lora_dropout": lora["lora_dropout"]}
    return bench.Result(path, rate, rate * flops / bench.H100_BF16_DENSE_FLOPS, peak, loss, timing.tokens, timing.seconds,
                     timing.steps), extras


def save_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer over the model's whole vocabulary: the peers load one from the model folder (our
    samples are token ids already, so only its size and pad token matter)."""
    if (folder / "tokenizer.json").is_file():
        return
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    vocab["<pad>"] = PAD_ID
    del vocab[f"t{PAD_ID}"]
    model = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    model.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=model, pad_token="<pad>", eos_token="t1", bos_token="t2")
    fast.save_pretrained(str(folder))


# ---------------------------------------------------------------- the run


def ratios(ours: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    return {"speed": ours["tokens_per_second"] / other["tokens_per_second"],
            "memory": ours["peak_gib"] / other["peak_gib"],
            "loss_gap": abs(ours["held_out_loss"] - other["held_out_loss"]) / other["held_out_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["qwen2.5-1.5b", "llama3.1-8b"])
    parser.add_argument("--workloads", nargs="+", default=["chat", "long"])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--layers", type=int, default=None, help="fewer decoder layers: a quick check of the paths")
    parser.add_argument("--lean-micro-batches", type=int, default=None,
                        help="micro-batches per step of the lean paths (default: LEAN's per shape and workload)")
    parser.add_argument("--lean-chunk-logits", type=int, default=None,
                        help="loss-chunk logits of the lean paths (default: LEAN's / LEAN_D0's)")
    parser.add_argument("--mlp-chunk-elements", type=int, default=None,
                        help="MLP-chunk intermediate values of the lean -d0 paths (default: LEAN_D0's)")
    parser.add_argument("--host-moments", action="store_true",
                        help="the lean paths keep AdamW's moments in host memory and update there")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = {"micro_batches": args.lean_micro_batches, "chunk_logits": args.lean_chunk_logits,
                 "mlp_chunk_elements": args.mlp_chunk_elements, "host_moments": args.host_moments}
    if args.worker:
        run_worker(args.worker, args.shapes[0], args.workloads[0], args.folder, args.layers, args.out, overrides)
        return
    sys.path.insert(0, str(HERE))
    import torch
    import train_bench as bench

    workdir = args.workdir or bench.default_workdir()
    report: list[dict[str, Any]] = []
    for shape in args.shapes:
        config = bench.shape_config(shape, args.layers)
        folder = bench.random_model_folder(shape, config, workdir / f"{shape}-{config.num_hidden_layers}-layers")
        save_tokenizer(folder, config.vocab_size)
        bench.release_memory()
        for name in args.workloads:
            entry: dict[str, Any] = {"shape": shape, "workload": name, "paths": {}}
            report.append(entry)
            for path in args.paths:
                out = workdir / f"{shape}-{name}-{path}.json"
                command = [sys.executable, __file__, "--worker", path, "--shapes", shape, "--workloads", name,
                           "--folder", str(folder), "--out", str(out)] + (["--layers", str(args.layers)]
                                                                          if args.layers else [])
                for key, value in overrides.items():
                    if value:
                        command += [OVERRIDE_FLAGS[key]] + ([] if value is True else [str(value)])
                started = time.monotonic()
                done = subprocess.run(command, check=False)
                seconds = time.monotonic() - started
                if done.returncode != 0 or not out.is_file():
                    entry["paths"][path] = {"error": f"exit {done.returncode}", "seconds_with_loading": seconds}
                    print(f"[{shape} / {name}] {path}: FAILED (exit {done.returncode})", flush=True)
                else:
                    row = json.loads(out.read_text(encoding="utf-8"))
                    entry["paths"][path] = {**row, "seconds_with_loading": seconds}
                    print(f"[{shape} / {name}] {bench.describe(bench.Result(**row['result']))} {row['extras']} "
                          f"({seconds:.0f}s with loading)", flush=True)
                if args.json:  # after every path: a run cut short still leaves what it measured
                    args.json.write_text(json.dumps({"rows": report}, indent=1), encoding="utf-8")
            summarise(entry)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print_table(report, device)
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": report}, indent=1), encoding="utf-8")


def summarise(entry: dict[str, Any]) -> None:
    results = {p: row["result"] for p, row in entry["paths"].items() if "result" in row}
    peers = [results[p] for p in PEERS if p in results]
    fastest = max(peers, key=lambda r: r["tokens_per_second"]) if peers else None
    comparisons = {}
    for ours in OURS:
        if ours not in results:
            continue
        if "stock" in results:
            comparisons[f"{ours} vs stock"] = ratios(results[ours], results["stock"])
        if fastest:
            comparisons[f"{ours} vs {fastest['path']}"] = ratios(results[ours], fastest)
        # Like with like: the fastest peer with the same LoRA dropout.
        same = [results[p] for p in PEERS if p in results and p.startswith("unsloth-d0") == ("-d0" in ours)]
        same_fastest = max(same, key=lambda r: r["tokens_per_second"]) if same else None
        if same_fastest and same_fastest is not fastest:
            comparisons[f"{ours} vs {same_fastest['path']} (same dropout)"] = ratios(results[ours], same_fastest)
    # The goal's comparison: against each peer, our fastest path that needs no more GPU memory than it.
    for peer in peers:
        within = [results[p] for p in OURS if p in results and results[p]["peak_gib"] <= peer["peak_gib"]]
        if within:
            best = max(within, key=lambda r: r["tokens_per_second"])
            comparisons[f"fastest ours at <= {peer['path']} memory ({best['path']}) vs {peer['path']}"] = ratios(
                best, peer)
        else:
            comparisons[f"none of ours at <= {peer['path']} memory"] = {}
    entry["comparisons"] = comparisons


def print_table(report: list[dict[str, Any]], device: str) -> None:
    print(f"\n{device}\nshape / workload           path          tok/s    MFU   peak GiB  held-out")
    for entry in report:
        for path, row in entry["paths"].items():
            label = f"{entry['shape']} / {entry['workload']}"
            if "error" in row:
                print(f"{label:26s} {path:12s}  {row['error']}")
                continue
            r = row["result"]
            print(f"{label:26s} {path:12s} {r['tokens_per_second']:8.0f} {100 * r['mfu']:5.1f}% "
                  f"{r['peak_gib']:8.2f}  {r['held_out_loss']:8.4f}"
                  + ("" if math.isfinite(r["held_out_loss"]) else "  (no loss)"))
        for what, c in entry["comparisons"].items():
            print(f"    {what}: {c['speed']:.2f}x speed, {c['memory']:.2f}x memory, "
                  f"held-out loss gap {100 * c['loss_gap']:.2f}%" if c else f"    {what}")


if __name__ == "__main__":
    main()
