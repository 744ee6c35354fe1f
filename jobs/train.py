"""The train stage: LoRA / QLoRA on the dataset's conversations, checkpointed to the store, resumable, stoppable.

`train()` is the whole job on plain inputs (a model folder, a jsonl file, the training spec, a checkpoint store);
`run(ctx)` only gathers those inputs from the run config and publishes the outputs. With several ranks
(`kubetune.jobs.launch`), every rank trains on its share of each step and rank 0 alone writes checkpoints, outputs
and progress.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, set_seed

from kubetune.api.types import TrainingSpec
from kubetune.chat_templates import ChatTemplateError, ResolvedTemplate, resolve_template
from kubetune.jobs.basemodel import URI_FIELD as BASE_MODEL_FIELD
from kubetune.jobs.basemodel import folder_digest
from kubetune.jobs.checkpoints import (
    BaseModelRef,
    CheckpointStore,
    checkpoint_name,
    load_adapter_weights,
    write_adapter_folder,
)
from kubetune.jobs.distributed import SINGLE, Ranks, process_group, ranks_from_env
from kubetune.jobs.eval_loss import (
    EVAL_DATASET_FILE,
    EvalSet,
    eval_loss,
    eval_loss_figures,
    eval_loss_summary,
    load_eval_set,
)
from kubetune.jobs.generation import Generation, generate_answers
from kubetune.jobs.launch import install_rank_signal_handlers, launch_plan, record_rank_failure, run_ranks
from kubetune.jobs.plots import plot_loss, write_metrics_csv
from kubetune.jobs.runtime import ConfigError, JobContext, Stopped
from kubetune.jobs.sources import base_model_folder, store_factory
from kubetune.jobs.tracking import track_training
from kubetune.jobs.train_attention import VARLEN_ATTENTION, training_attention
from kubetune.jobs.train_data import (
    DataError,
    default_chat_template,
    load_conversations,
    make_batcher,
    tokenize_dataset,
)
from kubetune.jobs.train_loop import (
    STATE_FILE,
    LoopSettings,
    Outcome,
    TrainerState,
    TrainLoop,
    load_trainer_state,
    make_optimizer,
    planned_steps,
    restore_training_state,
    save_training_state,
)
from kubetune.jobs.train_model import (
    BaseModelFolderError,
    LoadedModel,
    build_model,
    load_tokenizer,
    pad_token_id,
    resolve_device,
)
from kubetune.llama.errors import ConversionError
from kubetune.llama.hf_config import read_model_spec
from kubetune.store import ObjectNotFoundError

log = logging.getLogger("kubetune.jobs.train")

DATASET_FILE = "train_data.jsonl"
GENERATIONS_FILE = "generations.jsonl"
RANKS_FILE = "ranks.json"  # in a checkpoint: how many ranks trained up to it
METRICS_FILE = "metrics.json"  # in the output, with an eval split: the held-out losses

ProgressReporter = Callable[..., None]  # JobContext.progress: (phase="Running", *, force=False, **fields)


@dataclass(frozen=True)
class TrainInputs:
    model_dir: Path
    base: BaseModelRef
    data_path: Path
    training: TrainingSpec
    max_seq_length: int
    workdir: Path
    chat_template: str = field(default_factory=default_chat_template)
    eval_data_path: Path | None = None  # the dataset's eval split, when it wrote one


@dataclass(frozen=True)
class TrainResult:
    outcome: Outcome
    state: TrainerState
    added_tokens: list[str]
    eval_samples: int = 0  # conversations of the eval split measured (0: no eval split)


def write_generations(generations: Sequence[Generation], path: Path) -> None:
    path.write_text("".join(json.dumps(g.to_json(), ensure_ascii=False) + "\n" for g in generations), encoding="utf-8")


class CheckpointingHooks:
    """The loop's hooks: progress reports, and checkpoints (with eval generations) published to the store."""

    def __init__(
        self,
        inputs: TrainInputs,
        loaded: LoadedModel,
        tokenizer: PreTrainedTokenizerBase,
        loop: TrainLoop,
        checkpoints: CheckpointStore,
        progress: ProgressReporter,
        ranks: Ranks = SINGLE,
        eval_set: EvalSet | None = None,
    ) -> None:
        self.ranks = ranks
        self.eval_set = eval_set
        self.inputs = inputs
        self.loaded = loaded
        self.tokenizer = tokenizer
        self.loop = loop
        self.checkpoints = checkpoints
        self.progress = progress
        self.generations: tuple[int, list[Generation]] | None = None  # (step, answers) of the latest eval

    def on_log(self, state: TrainerState, row: dict[str, float], eta_seconds: float) -> None:
        if not self.ranks.is_main:
            return
        log.info("step %d/%d epoch %.3f loss %.4f lr %.3g %.0f tok/s", state.step, state.total_steps, row["epoch"],
                 row["loss"], row["learning_rate"], row["tokens_per_second"])
        self.progress(
            step=state.step, totalSteps=state.total_steps, epoch=row["epoch"], loss=row["loss"],
            learningRate=row["learning_rate"], tokensPerSecond=round(row["tokens_per_second"], 1),
            etaSeconds=round(eta_seconds), lastCheckpoint=state.last_checkpoint,
        )

    def evaluate(self, step: int) -> list[Generation]:
        if self.generations is None or self.generations[0] != step:
            training = self.inputs.training
            devices = [self.loaded.device] if self.loaded.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # eval must not shift the training RNG streams
                answers = generate_answers(
                    self.loaded.model, self.tokenizer, training.eval_prompts, stop_sequences=training.stop_sequences,
                    max_new_tokens=training.max_new_tokens, device=self.loaded.device,
                )
            for answer in answers:
                log.info("eval at step %d: %r -> %r", step, answer.prompt, answer.answer)
            self.generations = (step, answers)
        return self.generations[1]

    def measure_eval_loss(self, state: TrainerState) -> float | None:
        """The held-out loss of the current weights, recorded in `state` (every rank calls this: they share the
        work); None without an eval split."""
        if self.eval_set is None:
            return None
        if state.eval_losses and state.eval_losses[-1]["step"] == state.step:
            return state.eval_losses[-1]["eval_loss"]
        loss = eval_loss(self.loaded.model, self.eval_set, self.loaded.device,
                         autocast_dtype=self.loaded.autocast_dtype, ranks=self.ranks)
        state.eval_losses.append({"step": state.step, "epoch": round(state.epoch, 6), "eval_loss": loss})
        if self.ranks.is_main:
            log.info("eval loss at step %d: %.4f (%d samples)", state.step, loss, self.eval_set.samples)
            base = state.eval_losses[0]["eval_loss"] if state.eval_losses[0]["step"] == 0 else None
            self.progress(force=True, step=state.step, evalLoss=loss, baseEvalLoss=base)
        return loss

    def on_checkpoint(self, state: TrainerState, *, stopping: bool) -> None:
        name = checkpoint_name(state.step)
        # Under SIGTERM the grace period is for saving, not for measuring.
        eval_loss_now = None if stopping else self.measure_eval_loss(state)
        if not self.ranks.is_main:  # the ranks hold the same weights: rank 0 saves them, the others wait for it
            state.last_checkpoint = name
            self.ranks.barrier()
            return
        folder = self.inputs.workdir / "checkpoints" / name
        shutil.rmtree(folder, ignore_errors=True)
        write_adapter_folder(folder, self.loaded.model, self.tokenizer, self.inputs.model_dir, self.inputs.base)
        state.last_checkpoint = name
        save_training_state(folder, self.loop.optimizer, self.loop.scheduler, state)
        (folder / RANKS_FILE).write_text(json.dumps({"worldSize": self.ranks.world_size}) + "\n", encoding="utf-8")
        # Under SIGTERM the grace period is for saving, not for generating.
        if self.inputs.training.eval_prompts and not stopping:
            write_generations(self.evaluate(state.step), folder / GENERATIONS_FILE)
        self.checkpoints.publish(folder, name, {"step": state.step, "epoch": state.epoch,
                                                "loss": state.metrics[-1]["loss"] if state.metrics else None,
                                                "evalLoss": eval_loss_now})
        shutil.rmtree(folder)
        log.info("saved %s", name)
        self.progress(force=True, step=state.step, lastCheckpoint=name)
        self.ranks.barrier()  # no rank goes on (or stops) before the checkpoint is complete


def loop_settings(training: TrainingSpec) -> LoopSettings:
    return LoopSettings(
        learning_rate=training.learning_rate,
        lr_scheduler=training.lr_scheduler,
        warmup_ratio=training.warmup_ratio,
        gradient_accumulation=training.gradient_accumulation,
        seed=training.seed,
        logging_steps=training.logging_steps,
        checkpoint_every=training.checkpoint.every_steps,
    )


def saved_world_size(checkpoint: Path) -> int:
    ranks_file = checkpoint / RANKS_FILE
    return int(json.loads(ranks_file.read_text(encoding="utf-8"))["worldSize"]) if ranks_file.is_file() else 1


def resumed_total_steps(
    state: TrainerState, training: TrainingSpec, planned: int, micro_batches_per_step: int, *, same_ranks: bool
) -> int:
    """The plan's total steps, unless the run resumes with another number of ranks: then the data position (in
    micro-batches of the shared plan) stays and the epochs left are cut into steps of the new size. A `maxSteps`
    plan keeps its step count."""
    if same_ranks or training.max_steps is not None:
        return planned
    planned_batches = (training.epochs + training.extra_epochs) * state.batches_per_epoch
    done = state.epoch_index * state.batches_per_epoch + state.batch_index
    return state.step + max(0, math.ceil((planned_batches - done) / micro_batches_per_step))


def restore_checkpoint(checkpoints: CheckpointStore, workdir: Path, ranks: Ranks) -> tuple[str, Path] | None:
    """The latest complete checkpoint, downloaded by every rank, which must all have found the same one."""
    restored = checkpoints.restore_latest(workdir)
    name = restored[0] if restored is not None else ""
    if ranks.main_value(name) != name:
        # A store listing that changed between the ranks' looks: a retry sees one state.
        raise RuntimeError(f"rank {ranks.rank} found {name or 'no checkpoint'} but rank 0 another one")
    return restored


def train(
    inputs: TrainInputs,
    checkpoints: CheckpointStore,
    output_dir: Path,
    *,
    stop: threading.Event,
    progress: ProgressReporter,
    ranks: Ranks = SINGLE,
) -> TrainResult:
    """Train (resuming from the latest complete checkpoint) and, when finished, write the outputs to `output_dir`
    (rank 0; the other ranks only train)."""
    training = inputs.training
    set_seed(training.seed)
    tokenizer, added_tokens = load_tokenizer(inputs.model_dir, inputs.chat_template, training.added_special_tokens)
    samples = tokenize_dataset(tokenizer, load_conversations(inputs.data_path), inputs.max_seq_length)
    device = ranks.place(resolve_device(training.device))
    attention = training_attention(device)  # one choice for the model and for how its batches are packed
    batcher = make_batcher(packing=training.packing, batch_size=training.batch_size,
                           max_seq_length=inputs.max_seq_length, pad_token_id=pad_token_id(tokenizer),
                           flat=attention == VARLEN_ATTENTION, join=device.type == "cpu")
    batches_per_epoch = len(batcher.epoch_batches(samples, 0, training.seed))
    eval_set = None if inputs.eval_data_path is None else load_eval_set(
        inputs.eval_data_path, tokenizer, batcher, max_seq_length=inputs.max_seq_length, seed=training.seed)
    micro_batches_per_step = training.gradient_accumulation * ranks.world_size  # every rank takes its own
    total_steps = planned_steps(batches_per_epoch, micro_batches_per_step, epochs=training.epochs,
                                extra_epochs=training.extra_epochs, max_steps=training.max_steps)
    loaded = build_model(
        inputs.model_dir, len(tokenizer), method=training.method, quantization=training.quantization,
        lora=training.lora, device=device, gradient_checkpointing=training.gradient_checkpointing,
        recompute_share=training.recompute_layers, attn_implementation=attention,
        compile_layers=training.compile and device.type == "cuda", fp8=training.fp8, int8=training.int8,
        four_bit_layers=device.type == "cuda",
        activation_offload=training.activation_offload and device.type == "cuda",
    )
    if training.int8:
        log.info("int8 base matmuls: %d layers%s", loaded.int8_layers, "" if device.type == "cpu" else " (CPU only)")
    settings = loop_settings(training)
    state = TrainerState(total_steps=total_steps, batches_per_epoch=batches_per_epoch)
    restored = restore_checkpoint(checkpoints, inputs.workdir / "resume", ranks)
    if restored is not None:
        state = load_trainer_state(restored[1])
        total_steps = state.total_steps = resumed_total_steps(
            state, training, total_steps, micro_batches_per_step,
            same_ranks=saved_world_size(restored[1]) == ranks.world_size)
    # The schedule is made for the steps this run will reach; a restored one continues from its position.
    # The memory-lean mode keeps AdamW's moments in host memory too (train_host_state.HostAdamW).
    optimizer, scheduler = make_optimizer(loaded.model, settings, total_steps,
                                          host_moments=loaded.offloaded_layers > 0)
    if restored is not None:
        name, folder = restored
        load_adapter_weights(loaded.model, folder)
        restore_training_state(folder, optimizer, scheduler)
        log.info("resuming from %s at step %d of %d (epoch %.3f)", name, state.step, total_steps, state.epoch)
        shutil.rmtree(folder)
    ranks.broadcast_from_main([p for p in loaded.model.parameters() if p.requires_grad])
    progress(force=True, step=state.step, totalSteps=total_steps, epoch=state.epoch,
             lastCheckpoint=state.last_checkpoint, message=f"{len(samples)} samples, {total_steps} steps")
    loop = TrainLoop(loaded.model, optimizer, scheduler, samples, batcher, settings, loaded.device,
                     autocast_dtype=loaded.autocast_dtype, ranks=ranks)
    hooks = CheckpointingHooks(inputs, loaded, tokenizer, loop, checkpoints, progress, ranks, eval_set)
    if state.step == 0:
        hooks.measure_eval_loss(state)  # the base model's: what the gate can compare the fine-tuned one with
    outcome = loop.run(state, hooks, stop)
    if outcome == "finished" and ranks.is_main:
        write_outputs(output_dir, inputs, loaded, tokenizer, state, hooks)
    return TrainResult(outcome, state, added_tokens, eval_set.samples if eval_set is not None else 0)


def write_outputs(
    output_dir: Path,
    inputs: TrainInputs,
    loaded: LoadedModel,
    tokenizer: PreTrainedTokenizerBase,
    state: TrainerState,
    hooks: CheckpointingHooks,
) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_adapter_folder(output_dir / "adapter", loaded.model, tokenizer, inputs.model_dir, inputs.base)
    (output_dir / STATE_FILE).write_text(json.dumps(state.to_json(), indent=1), encoding="utf-8")
    write_metrics_csv(state.metrics, output_dir / "metrics.csv", state.eval_losses)
    plot_loss(state.metrics, output_dir / "loss.png", f"{inputs.training.method} training loss", state.eval_losses)
    if hooks.eval_set is not None:
        summary = eval_loss_summary(state.eval_losses, hooks.eval_set.samples)
        (output_dir / METRICS_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if inputs.training.eval_prompts:
        write_generations(hooks.evaluate(state.step), output_dir / GENERATIONS_FILE)


def output_metadata(result: TrainResult) -> dict[str, Any]:
    state = result.state
    return {
        "steps": state.step,
        "epoch": round(state.epoch, 6),
        "finalLoss": state.metrics[-1]["loss"] if state.metrics else None,
        "tokens": state.real_tokens,
        "addedTokens": result.added_tokens,
        "lastCheckpoint": state.last_checkpoint,
        # The evaluate stage gates on these (evalSamples 0: no eval split, no eval-loss gate).
        **eval_loss_figures(state.eval_losses, result.eval_samples),
    }


def adopt_rank_progress(ctx: JobContext) -> None:
    """Take over what rank 0 last wrote to progress.json: the launcher's own last word (a failure, a stop) is
    merged into it rather than replacing its step and checkpoint."""
    try:
        report = json.loads(ctx.store.get_bytes(f"{ctx.prefix}/progress.json"))
    except (ObjectNotFoundError, ValueError):
        return
    fields = {key: value for key, value in report.items() if key not in ("stage", "phase", "updatedAt")}
    ctx.progress(str(report.get("phase", "Running")), **fields)


def run(ctx: JobContext) -> None:
    plan = launch_plan(ctx.run.spec)
    if plan is not None:
        base_model_folder(ctx)  # fetched or converted once into the node's cache: the ranks find it there
        if ctx.stop.is_set():  # asked while the model was fetched, before torch's launcher listens for signals
            raise Stopped("stopped before the ranks started")
        run_json = ctx.workdir / "run.json"
        run_json.write_text(ctx.run.dumps(), encoding="utf-8")
        try:
            run_ranks(plan, ctx.stage, run_json)
        finally:
            adopt_rank_progress(ctx)
        return
    ranks = ranks_from_env() or SINGLE
    if not ranks.distributed:
        run_rank(ctx, ranks, ctx.workdir)
        return
    install_rank_signal_handlers(ctx.stop)
    try:
        run_rank(ctx, ranks, ctx.workdir / f"rank-{ranks.rank}")  # the node's ranks share its scratch
    except Exception as error:
        record_rank_failure(error)
        raise


def check_convertible(model_dir: Path) -> None:
    """The convert stage reads the merged model's config.json as the base's: a base it cannot convert (an
    architecture or config llama.cpp lacks) is refused before training instead of after it."""
    try:
        read_model_spec(model_dir)
    except ConversionError as error:
        raise ConfigError(f"{BASE_MODEL_FIELD}: {error}") from None


def run_chat_template(ctx: JobContext, model_dir: Path) -> ResolvedTemplate:
    """The run's chat template (kubetune/chat_templates.py), the one the keys were computed from."""
    resolved = ctx.run.sources
    try:
        template = resolve_template(ctx.run.spec.training.chat_template, model_dir, store_factory(ctx.run),
                                    resolved.template.digest if resolved is not None else None)
    except ChatTemplateError as error:
        raise ConfigError(str(error)) from None
    log.info("chat template: %s from %s (sha256 %s)", template.source, template.origin, template.sha256[:12])
    return template


def run_rank(ctx: JobContext, ranks: Ranks, workdir: Path) -> None:
    spec = ctx.run.spec
    dataset_dir = workdir / "dataset"
    ctx.fetch("dataset", dataset_dir)
    data_path = dataset_dir / DATASET_FILE
    if not data_path.is_file():
        raise ConfigError(f"the dataset output has no {DATASET_FILE}")
    model_dir = base_model_folder(ctx)
    check_convertible(model_dir)
    eval_path = dataset_dir / EVAL_DATASET_FILE
    template = run_chat_template(ctx, model_dir)
    inputs = TrainInputs(
        model_dir=model_dir,
        base=BaseModelRef(spec.base_model.uri, spec.base_model.sha256 or folder_digest(model_dir)),
        data_path=data_path,
        training=spec.training,
        max_seq_length=spec.dataset.max_seq_length,
        workdir=workdir,
        eval_data_path=eval_path if eval_path.is_file() else None,
        chat_template=template.text,
    )
    checkpoints = CheckpointStore(ctx.store, ctx.prefix, stage=ctx.stage, input_key=ctx.key,
                                  keep=spec.training.checkpoint.keep)
    output_dir = workdir / "outputs"
    shutil.rmtree(output_dir, ignore_errors=True)
    with track_training(ctx, enabled=ranks.is_main) as tracker:
        try:
            with process_group(ranks, ranks.place(resolve_device(spec.training.device))):
                result = train(inputs, checkpoints, output_dir, stop=ctx.stop,
                               progress=tracker.observe(ctx.progress), ranks=ranks)
        except DataError as error:
            raise ConfigError(str(error)) from error
        except BaseModelFolderError as error:
            raise ConfigError(f"{BASE_MODEL_FIELD}: {error}") from None
        if result.outcome == "stopped":
            raise Stopped(f"stopped at step {result.state.step}; saved {result.state.last_checkpoint}")
        if ranks.is_main:
            tracker.before_publish(output_dir, result.state.metrics, result.state.eval_losses)
            ctx.publish(output_dir, {**output_metadata(result), "chatTemplate": template.to_json()})
