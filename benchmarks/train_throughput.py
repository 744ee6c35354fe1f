"""QLoRA training throughput on one GPU: stock transformers `Trainer` + peft + bitsandbytes vs our train stage's path.

    python benchmarks/train_throughput.py --shapes qwen2.5-1.5b llama3.1-8b --workloads chat long

Both paths train the same random-init model (built on the GPU, saved as bf16 safetensors, loaded 4-bit NF4 with double
quant and bf16 compute), with LoRA r=16 all-linear (alpha 32, dropout 0.05), on the same synthetic samples (the same
seed, the same real tokens: one epoch over the same samples), with the same learning rate, schedule, clipping and
about 16 samples per optimizer step:

- baseline: the recipe of the transformers / peft docs. `prepare_model_for_kbit_training`, `get_peft_model`,
  `Trainer` with padded batches (8 × 2 accumulation; 2 × 8 for the long workload, which does not fit 8 wide),
  default (SDPA) attention, gradient checkpointing, bf16;
- kubetune: `build_model` + `TrainLoop` with the train stage's packed batcher (with varlen attention, each micro-batch
  one row of up to a step's rows × the workload's max length tokens; the long workload's step in two micro-batches),
  i.e. sample-isolated varlen attention, the chunked head + cross-entropy, a share of the layers recomputed, decoder
  layers compiled (`--no-compile` runs them eagerly; compilation happens in the warm-up steps, which are not timed);
  `--precisions bf16 fp8` adds a row with `training.fp8` (the 4-bit base matmuls in FP8).

The samples, shapes, MFU formula and held-out loss are `train_bench.py`'s. Prints, per shape and workload: real
(non-pad) tokens/s after warm-up steps, MFU, peak GPU memory, held-out loss (one function for both models: full fp32
logits, sample by sample), and kubetune / baseline ratios. Before training, a packing check compares layer outputs
of packed rows with each sample run alone (and with a deliberately leaking packed run, to show the check can fail).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import (
    H100_BF16_DENSE_FLOPS,
    HELD_OUT,
    LEARNING_RATE,
    SAMPLES_PER_STEP,
    SEED,
    SHAPES,
    WARMUP_RATIO,
    WORKLOADS,
    Result,
    Workload,
    default_workdir,
    describe,
    flops_per_token,
    held_out_loss,
    random_model_folder,
    release_memory,
    shape_config,
    synthetic_samples,
    timed_region,
)
from train_gpu_smoke import Lora

from kubetune.jobs.train_attention import VARLEN_ATTENTION
from kubetune.jobs.train_data import IGNORE_INDEX, Batcher, PackedBatcher, Sample, make_batcher
from kubetune.jobs.train_loop import LoopSettings, TrainerState, TrainLoop, make_optimizer
from kubetune.jobs.train_loss import CHUNK_LOGITS, chunked_causal_lm_loss_sum
from kubetune.jobs.train_model import DefaultQuantization, build_model
from kubetune.jobs.train_offload import chunked_mlp_layers

# The share of decoder layers that recompute activations in backward (gradient checkpointing; 0 = none), per shape
# and workload: the least recompute whose peak stays within the memory budget (≤ 0.6 × the baseline's peak) on the
# H100. Activation memory grows with the tokens of a micro-batch, so the long workload (4096-token rows) recomputes
# more.
DEFAULT_RECOMPUTE = {("qwen2.5-1.5b", "chat"): 0.5, ("qwen2.5-1.5b", "long"): 1.0,
                     ("llama3.1-8b", "chat"): 0.8125, ("llama3.1-8b", "long"): 1.0}
# With FP8 a layer that keeps its activations also keeps its backward's e4m3 weights (1 byte per weight).
FP8_RECOMPUTE = {**DEFAULT_RECOMPUTE, ("llama3.1-8b", "chat"): 0.875}


@dataclass(frozen=True)
class Lean:
    """Our memory-lean mode's settings: activation offload, and a step in `micro_batches` micro-batches (activation
    memory follows a micro-batch's tokens) with loss chunks of `chunk_logits` logits."""

    micro_batches: int
    chunk_logits: int = CHUNK_LOGITS
    mlp_chunk_elements: int | None = None  # MLPs in token chunks of this many intermediate values (no LoRA dropout)
    host_moments: bool = False  # AdamW's moments in host memory, the update there (`train_host_state.HostAdamW`)


# ---------------------------------------------------------------- data


# ---------------------------------------------------------------- models


def dynamo_counters() -> dict[str, int]:
    """Compilations so far (graphs, breaks, recompiles), to show the layers compiled once and stayed compiled."""
    from torch._dynamo.utils import counters

    return {"unique_graphs": counters["stats"]["unique_graphs"],
            "graph_breaks": sum(counters["graph_break"].values()),
            "recompiles": sum(counters["recompiles"].values())}


# ---------------------------------------------------------------- baseline: stock Trainer recipe


def run_baseline(folder: Path, workload: Workload, train: list[Sample], held_out: list[Sample],
                 flops: float, workdir: Path) -> Result:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, Trainer, TrainingArguments

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    base = AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=quantization,
                                                device_map={"": 0})
    base = prepare_model_for_kbit_training(base)
    lora = Lora()
    model = get_peft_model(base, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    accumulation = SAMPLES_PER_STEP // workload.baseline_batch
    args = TrainingArguments(
        output_dir=str(workdir / "baseline-trainer"), per_device_train_batch_size=workload.baseline_batch,
        gradient_accumulation_steps=accumulation, num_train_epochs=1, learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear", warmup_steps=WARMUP_RATIO, max_grad_norm=1.0, bf16=True,
        gradient_checkpointing=True, logging_steps=10**6, save_strategy="no", eval_strategy="no", report_to="none",
        seed=SEED, data_seed=SEED, remove_unused_columns=False, disable_tqdm=True,
    )

    def pad(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        return {
            "input_ids": torch.tensor([f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features]),
            "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                            for f in features]),
            "labels": torch.tensor([f["labels"] + [IGNORE_INDEX] * (width - len(f["labels"])) for f in features]),
        }

    real_tokens = torch.zeros((), dtype=torch.long, device="cuda")

    def count_real_tokens(_module: torch.nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
        real_tokens.add_(kwargs["attention_mask"].sum())  # stays on the GPU: no extra synchronisation

    counter = model.register_forward_pre_hook(count_real_tokens, with_kwargs=True)
    timing = TrainerTiming(workload.warmup_steps, real_tokens)
    dataset = [{"input_ids": s.input_ids, "labels": s.labels} for s in train]
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=pad, callbacks=[timing.callback()])
    release_memory()
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30
    counter.remove()
    loss = held_out_loss(model, held_out)
    del trainer, model, base
    release_memory()
    rate = timing.tokens / timing.seconds
    return Result("baseline", rate, rate * flops / H100_BF16_DENSE_FLOPS, peak, loss, timing.tokens, timing.seconds,
                  timing.steps)


class TrainerTiming:
    """Real tokens and seconds of a transformers `Trainer` run after its warm-up steps; `real_tokens` is a GPU
    counter the caller's hook adds to (read only at the two marks, so no extra synchronisation per step)."""

    def __init__(self, warmup_steps: int, real_tokens: torch.Tensor) -> None:
        self.warmup_steps, self.real_tokens = warmup_steps, real_tokens
        self.start: tuple[float, int] = (0.0, 0)
        self.end: tuple[float, int] = (0.0, 0)
        self.steps = 0

    def mark(self) -> tuple[float, int]:
        torch.cuda.synchronize()
        return time.monotonic(), int(self.real_tokens)

    @property
    def seconds(self) -> float:
        return self.end[0] - self.start[0]

    @property
    def tokens(self) -> int:
        return self.end[1] - self.start[1]

    def callback(self) -> Any:
        from transformers import TrainerCallback

        timing = self

        class Timing(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if state.global_step == timing.warmup_steps:
                    timing.start = timing.mark()

            def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                timing.end = timing.mark()
                timing.steps = state.global_step

        return Timing()


# ---------------------------------------------------------------- kubetune: the train stage's path


def load_ours(folder: Path, config: PretrainedConfig, recompute: float, attention: str | None,
              device: torch.device | None = None, compile_layers: bool = True, fp8: bool = False,
              offload: bool = False, lora_dropout: float = Lora.dropout,
              mlp_chunk_elements: int | None = None) -> Any:
    return build_model(
        folder, config.vocab_size, method="qlora", quantization=DefaultQuantization(), lora=Lora(dropout=lora_dropout),
        device=device or torch.device("cuda"), gradient_checkpointing=recompute > 0 or offload,
        recompute_share=recompute, attn_implementation=attention, compile_layers=compile_layers, fp8=fp8,
        activation_offload=offload, mlp_chunk_elements=mlp_chunk_elements,
    )


def packing_check(loaded: Any, samples: Sequence[Sample], max_length: int) -> dict[str, float]:
    """Relative difference of attention outputs (o_proj inputs) of the first and last layers between a packed row
    (our attention) and each sample alone (SDPA); `leaking` packs the same row with continuous positions (one long
    causal sequence), to show what a leak between samples looks like."""
    model = loaded.model
    layers = model.get_base_model().model.layers
    captured: list[torch.Tensor] = []
    hooks = [layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, a: captured.append(a[0].detach().float()))
             for layer in (layers[0], layers[-1])]
    batch = PackedBatcher(batch_size=1, max_seq_length=max_length, pad_token_id=0).collate([list(samples)]).to(
        torch.device("cuda"))
    model.eval()
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), torch.compiler.set_stance("force_eager"):
            captured.clear()
            model(**batch.model_inputs(), use_cache=False)
            packed = list(captured)
            captured.clear()
            continuous = torch.arange(batch.input_ids.shape[1], device="cuda")[None]
            model(input_ids=batch.input_ids, position_ids=continuous, use_cache=False)
            leaking = list(captured)
            # The references run through transformers' SDPA, so the check covers the varlen kernel itself too.
            attention = model.config._attn_implementation
            model.get_base_model().set_attn_implementation("sdpa")
            alone: list[list[torch.Tensor]] = []
            for sample in samples:
                captured.clear()
                model(input_ids=torch.tensor([sample.input_ids], device="cuda"), use_cache=False)
                alone.append(list(captured))
            model.get_base_model().set_attn_implementation(attention)
    finally:
        for hook in hooks:
            hook.remove()
        model.train()

    def worst(outputs: list[torch.Tensor], layer: int) -> float:
        errors, offset = [], 0
        for sample, reference in zip(samples, alone, strict=True):
            length = len(sample.input_ids)
            got, want = outputs[layer][0, offset : offset + length], reference[layer][0]
            errors.append(float((got - want).norm() / want.norm()))
            offset += length
        return max(errors)

    return {f"{kind}_{name}": worst(outputs, index) for kind, outputs in (("isolated", packed), ("leaking", leaking))
            for index, name in enumerate(("first_layer", "last_layer"))}


def run_ours(folder: Path, config: PretrainedConfig, workload: Workload, train: list[Sample],
             held_out: list[Sample], flops: float, recompute: float, attention: str | None = None,
             *, compile_layers: bool = True, check_packing: bool = True, profile: bool = False,
             quality: bool = True, fp8: bool = False, lean: Lean | None = None,
             lora_dropout: float = Lora.dropout) -> tuple[Result, dict[str, Any]]:
    """Our path; with `lean`, the memory-lean mode (activation offload, every layer recomputed) in `lean`'s
    micro-batches per step and loss chunks. `lora_dropout` 0: the path's name gets `-d0`."""
    loaded = load_ours(folder, config, recompute, attention, compile_layers=compile_layers, fp8=fp8,
                       offload=lean is not None, lora_dropout=lora_dropout,
                       mlp_chunk_elements=lean.mlp_chunk_elements if lean else None)
    extras: dict[str, Any] = {"attention": loaded.model.config._attn_implementation, "compiled": loaded.compiled,
                              "fp8_layers": loaded.fp8_layers, "offloaded_layers": loaded.offloaded_layers,
                              "chunked_mlp_layers": chunked_mlp_layers(loaded.model),
                              "host_embedding": loaded.host_embedding}
    micro_batches = lean.micro_batches if lean else workload.micro_batches
    if check_packing:  # before training, LoRA B is zero: this is also the base model's held-out loss
        extras["packing_check"] = packing_check(loaded, held_out[:3], workload.max_length)
        extras["initial_loss"] = held_out_loss(loaded.model, held_out)
    mean_length = sum(len(s.input_ids) for s in train) / len(train)
    rows = micro_batches * max(1, round(SAMPLES_PER_STEP * mean_length / workload.max_length / micro_batches))
    extras["flat_rows"] = extras["attention"] == VARLEN_ATTENTION  # as the train stage packs for varlen attention
    batcher = make_batcher(packing=True, batch_size=rows // micro_batches, max_seq_length=workload.max_length,
                           pad_token_id=0, flat=extras["flat_rows"])
    batches = len(batcher.epoch_batches(train, 0, SEED))
    steps = math.ceil(batches / micro_batches)
    settings = LoopSettings(learning_rate=LEARNING_RATE, lr_scheduler="linear", warmup_ratio=WARMUP_RATIO,
                            gradient_accumulation=micro_batches, seed=SEED, logging_steps=1,
                            checkpoint_every=10**9)
    optimizer, scheduler = make_optimizer(loaded.model, settings, steps, host_moments=bool(lean and lean.host_moments))
    loss_function = partial(chunked_causal_lm_loss_sum, chunk_logits=lean.chunk_logits if lean else CHUNK_LOGITS)
    loop = TrainLoop(loaded.model, optimizer, scheduler, train, batcher, settings, loaded.device,
                     autocast_dtype=loaded.autocast_dtype, loss_function=loss_function)
    state = TrainerState(total_steps=steps, batches_per_epoch=batches)
    release_memory()
    torch.cuda.reset_peak_memory_stats()
    tokens, seconds, losses = 0, 0.0, []
    while not state.finished:
        timing = state.step >= workload.warmup_steps
        with timed_region() as span:
            loss, real = loop.optimizer_step(state)
        losses.append(loss)
        if timing:
            tokens, seconds = tokens + real, seconds + span[1] - span[0]
    peak = torch.cuda.max_memory_allocated() / 2**30
    extras["dynamo"] = dynamo_counters()
    loss = held_out_loss(loaded.model, held_out) if quality else float("nan")
    if profile:  # after the held-out loss: these are extra training steps
        extras["profile"] = profile_steps(loop, train, batcher)
    extras.update(rows_per_step=rows, finite_losses=all(math.isfinite(x) for x in losses))
    del loop, optimizer, scheduler, loaded
    release_memory()
    rate = tokens / seconds
    path = ("kubetune-fp8" if fp8 else "kubetune") + ("-d0" if lora_dropout == 0 else "")
    return Result(path + ("-lean" if lean else ""), rate, rate * flops / H100_BF16_DENSE_FLOPS, peak, loss,
                  tokens, seconds, state.step), extras


def profile_steps(loop: TrainLoop, train: list[Sample], batcher: Batcher) -> str:
    """The GPU kernels of two more optimizer steps (an extra epoch's start), by total GPU time."""
    from torch.profiler import ProfilerActivity, profile

    state = TrainerState(total_steps=2, batches_per_epoch=len(batcher.epoch_batches(train, 1, SEED)), epoch_index=1)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof, timed_region() as span:
        while not state.finished:
            loop.optimizer_step(state)
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]  # not the ops that launch them
    busy = sum(e.self_device_time_total for e in kernels) / 1e6
    table = events.table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=70)
    return f"2 steps: wall {span[1] - span[0]:.3f}s, GPU kernels {busy:.3f}s\n{table}"


# ---------------------------------------------------------------- report


def compare(baseline: Result, ours: Result) -> dict[str, Any]:
    loss_gap = abs(ours.held_out_loss - baseline.held_out_loss) / baseline.held_out_loss
    return {
        "throughput_ratio": ours.tokens_per_second / baseline.tokens_per_second,
        "memory_ratio": ours.peak_gib / baseline.peak_gib,
        "held_out_loss_gap": loss_gap,
        "equal_quality": loss_gap <= 0.02 and math.isfinite(ours.held_out_loss)
        and math.isfinite(baseline.held_out_loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--recompute", type=float, default=None,
                        help="share of decoder layers that recompute in backward on our path (0: none, 1: all); "
                        "default per shape and workload")
    parser.add_argument("--micro-batches", type=int, default=None,
                        help="our path's step in this many micro-batches (default per workload: chat 1, long 2); "
                        "more of them hold fewer activations each, e.g. room for --recompute 0 on a large card")
    parser.add_argument("--ablations", action="store_true",
                        help="also time our path with SDPA masks, and with other checkpointing, on the first shape")
    parser.add_argument("--profile", action="store_true", help="print our path's top GPU kernels")
    parser.add_argument("--no-compile", action="store_true", help="run our path's decoder layers eagerly")
    parser.add_argument("--precisions", nargs="+", choices=("bf16", "fp8"), default=["bf16"],
                        help="our path's base matmuls: bf16, and/or fp8 (training.fp8); one row each")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--layers", type=int, default=None,
                        help="decoder layers of the shape (default: all); fewer for a quick check of the code path")
    parser.add_argument("--workdir", type=Path, default=None, help="where the random models go (default: /dev/shm "
                        "when it has room, else the temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    workdir = args.workdir or default_workdir()
    import bitsandbytes
    import peft
    import transformers

    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}, peft {peft.__version__}, bitsandbytes {bitsandbytes.__version__}", flush=True)
    report: list[dict[str, Any]] = []
    for shape in args.shapes:
        config = shape_config(shape, args.layers)
        folder = random_model_folder(shape, config, workdir / f"{shape}-{config.num_hidden_layers}-layers")
        for name in args.workloads:
            workload = WORKLOADS[name]
            if args.micro_batches is not None:
                workload = replace(workload, micro_batches=args.micro_batches)
            train = synthetic_samples(workload, workload.steps * SAMPLES_PER_STEP, seed=SEED)
            held_out = synthetic_samples(workload, HELD_OUT, seed=SEED + 1)
            flops = flops_per_token(config, train)
            label = f"[{shape} / {name}]"
            print(f"{label} {len(train)} samples, {sum(len(s.input_ids) for s in train)} real tokens, "
                  f"{flops / 1e9:.2f} GFLOP per token", flush=True)
            entry: dict[str, Any] = {"shape": shape, "workload": name, "gflop_per_token": flops / 1e9}
            if not args.skip_baseline:
                baseline = run_baseline(folder, workload, train, held_out, flops, workdir)
                print(f"{label} {describe(baseline)}", flush=True)
                entry["baseline"] = asdict(baseline)
            for precision in args.precisions:
                recompute = args.recompute if args.recompute is not None else (
                    FP8_RECOMPUTE if precision == "fp8" else DEFAULT_RECOMPUTE)[shape, name]
                ours, extras = run_ours(folder, config, workload, train, held_out, flops, recompute,
                                        compile_layers=not args.no_compile, fp8=precision == "fp8",
                                        profile=args.profile and name == args.workloads[0],
                                        # FP8 is for training passes only: the eval-mode check would repeat itself
                                        check_packing=precision == args.precisions[0])
                print(f"{label} {describe(ours)}  [recompute {recompute:g} of the layers, {extras['attention']}, "
                      f"compiled {extras['compiled']} {extras['dynamo']}, FP8 layers {extras['fp8_layers']}, "
                      f"{extras['rows_per_step'] * workload.max_length} tokens per step in "
                      f"{workload.micro_batches} micro-batch(es), "
                      f"{'one row each' if extras['flat_rows'] else f'rows of {workload.max_length}'}]", flush=True)
                check = extras.get("packing_check")
                if check:
                    print(f"{label} packing check, relative difference of attention outputs to each sample alone "
                          f"(SDPA), first / last layer: isolated {check['isolated_first_layer']:.1e} / "
                          f"{check['isolated_last_layer']:.1e}, leaking {check['leaking_first_layer']:.1e} / "
                          f"{check['leaking_last_layer']:.1e}; held-out loss before training "
                          f"{extras['initial_loss']:.4f}", flush=True)
                if "profile" in extras:
                    print(extras.pop("profile"), flush=True)
                key = ours.path.replace("-", "_")
                entry.update({key: asdict(ours), f"{key}_details": extras})
                if not args.skip_baseline:
                    entry[f"{key}_comparison"] = compare(baseline, ours)
                    print(f"{label} {ours.path} ratios: {json.dumps(entry[f'{key}_comparison'])}", flush=True)
            if args.ablations and shape == args.shapes[0] and name == args.workloads[0]:
                entry["ablations"] = run_ablations(folder, config, workload, train, held_out, flops, label)
            report.append(entry)
    print_summary(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")


def run_ablations(folder: Path, config: PretrainedConfig, workload: Workload, train: list[Sample],
                  held_out: list[Sample], flops: float, label: str) -> list[dict[str, Any]]:
    rows = []
    for attention, recompute, compile_layers in (("sdpa", 1.0, True), (None, 1.0, False), (None, 1.0, True),
                                                  (None, 0.5, True), (None, 0.0, True)):
        result, extras = run_ours(folder, config, workload, train, held_out, flops, recompute, attention,
                                  compile_layers=compile_layers, check_packing=False, quality=False)
        print(f"{label} ablation {extras['attention']}, recompute {recompute:g} of the layers, compiled "
              f"{extras['compiled']}: {describe(result)}", flush=True)
        rows.append({"attention": extras["attention"], "recompute": recompute,
                     "compiled": extras["compiled"], **asdict(result)})
    return rows


def print_summary(report: list[dict[str, Any]]) -> None:
    print("\nshape / workload           path         tok/s   MFU    peak GiB  held-out   ratio  mem-ratio  quality")
    for entry in report:
        for path in ("baseline", "kubetune", "kubetune_fp8"):
            if path not in entry:
                continue
            r = entry[path]
            extra = ""
            comparison = entry.get(f"{path}_comparison")
            if comparison:
                extra = (f"  {comparison['throughput_ratio']:5.2f}x  {comparison['memory_ratio']:6.2f}x   "
                         f"{'equal' if comparison['equal_quality'] else 'DIFFERENT'} "
                         f"({100 * comparison['held_out_loss_gap']:.2f}%)")
            print(f"{entry['shape'] + ' / ' + entry['workload']:26s} {r['path']:12s} {r['tokens_per_second']:8.0f} "
                  f"{100 * r['mfu']:5.1f}%  {r['peak_gib']:8.2f}  {r['held_out_loss']:8.4f}{extra}")


if __name__ == "__main__":
    main()
