"""A compact training loop: gradient accumulation, clipping, LR schedule, exact resume, cooperative stop.

What is pluggable for speed work: the batcher (padding or packing, `train_data`), the loss (`LossFunction`: any
callable returning the summed token loss of a batch, `train_loss`) and the attention implementation (chosen when the
model loads, `train_attention`). The loop itself only plans data positions, steps the optimizer and calls the hooks;
it waits on the GPU once per optimizer step (the loss it must check), never per micro-batch.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_scheduler

from kubetune.jobs.distributed import SINGLE, Ranks
from kubetune.jobs.train_data import IGNORE_INDEX, Batch, Batcher, MicroBatch, Sample
from kubetune.jobs.train_host_state import HostAdamW
from kubetune.jobs.train_loss import LossFunction, chunked_causal_lm_loss_sum

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng_state.pt"


def labelled_tokens(batch: Batch) -> int:
    return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())


@dataclass
class TrainerState:
    """Where training stands; saved in every checkpoint as `trainer_state.json`."""

    total_steps: int
    batches_per_epoch: int
    step: int = 0
    epoch_index: int = 0  # the epoch in progress
    batch_index: int = 0  # next micro-batch of that epoch
    real_tokens: int = 0
    metrics: list[dict[str, float]] = field(default_factory=list)
    last_checkpoint: str | None = None
    # Held-out loss ({step, epoch, eval_loss}): the base model's at step 0, then one per checkpoint (eval_loss.py).
    eval_losses: list[dict[str, float]] = field(default_factory=list)

    @property
    def epoch(self) -> float:
        return self.epoch_index + self.batch_index / self.batches_per_epoch

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "epoch": self.epoch}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainerState:
        data = dict(data)
        data.pop("epoch", None)
        return cls(**data)


def planned_steps(
    batches_per_epoch: int, gradient_accumulation: int, *, epochs: float, extra_epochs: float, max_steps: int | None
) -> int:
    """Optimizer steps of the whole plan. `extra_epochs` extends it epoch-based on top of `max_steps` or `epochs`,
    so continuing a finished run adds whole epochs of data rather than moving an absolute step limit."""
    steps_per_epoch = batches_per_epoch / gradient_accumulation
    if max_steps is not None:
        return max_steps + math.ceil(extra_epochs * steps_per_epoch)
    return max(1, math.ceil((epochs + extra_epochs) * steps_per_epoch))


@dataclass(frozen=True)
class LoopSettings:
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    gradient_accumulation: int
    seed: int
    logging_steps: int
    checkpoint_every: int
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0


def make_optimizer(model: torch.nn.Module, settings: LoopSettings, total_steps: int,
                   host_moments: bool = False) -> tuple[Optimizer, LRScheduler]:
    """AdamW and the schedule; with `host_moments` its moments stay in host memory and it updates there
    (`train_host_state.HostAdamW`: the memory-lean mode's)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise RuntimeError("the model has no trainable parameters")
    # One fused kernel for all LoRA tensors on CUDA rather than a few launches per tensor group.
    fused = all(p.is_cuda for p in trainable)
    optimizer: Optimizer = (
        HostAdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay) if host_moments
        else AdamW(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=fused or None))
    scheduler = get_scheduler(
        settings.lr_scheduler, optimizer,
        num_warmup_steps=math.ceil(settings.warmup_ratio * total_steps), num_training_steps=total_steps,
    )
    return optimizer, scheduler


def save_training_state(folder: Path, optimizer: Optimizer, scheduler: LRScheduler, state: TrainerState) -> None:
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    torch.save(scheduler.state_dict(), folder / SCHEDULER_FILE)
    rng: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, folder / RNG_FILE)
    (folder / STATE_FILE).write_text(json.dumps(state.to_json(), indent=1), encoding="utf-8")


# How an optimizer computes its update, not what it learnt: its own choice for this device and mode.
IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer_state(optimizer: Optimizer, state: dict[str, Any]) -> None:
    """Moments, step counts and rates from a checkpoint, keeping the optimizer's own implementation flags: a state
    dict's param groups carry those of the optimizer that saved it (the lean mode's HostAdamW, a CPU run's), and
    loading them as they are would turn a fused CUDA AdamW into the per-tensor loop, slower and rounding apart."""
    own = [{flag: group[flag] for flag in IMPLEMENTATION_FLAGS if flag in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, own, strict=True):
        group.update(flags)


def load_trainer_state(folder: Path) -> TrainerState:
    return TrainerState.from_json(json.loads((folder / STATE_FILE).read_text(encoding="utf-8")))


def restore_training_state(folder: Path, optimizer: Optimizer, scheduler: LRScheduler) -> None:
    """Optimizer, scheduler position and RNG streams as they were when the checkpoint was taken."""
    load_optimizer_state(optimizer, torch.load(folder / OPTIMIZER_FILE, weights_only=True))
    scheduler.load_state_dict(torch.load(folder / SCHEDULER_FILE, weights_only=True))
    rng = torch.load(folder / RNG_FILE, weights_only=False)  # our own file: holds Python's random state tuple
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


class LoopHooks(Protocol):
    def on_log(self, state: TrainerState, row: dict[str, float], eta_seconds: float) -> None: ...

    def on_checkpoint(self, state: TrainerState, *, stopping: bool) -> None:
        """Save a checkpoint of the current step (and set `state.last_checkpoint`)."""
        ...


Outcome = Literal["finished", "stopped"]


class TrainLoop:
    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: Optimizer,
        scheduler: LRScheduler,
        samples: Sequence[Sample],
        batcher: Batcher,
        settings: LoopSettings,
        device: torch.device,
        *,
        autocast_dtype: torch.dtype | None = None,
        loss_function: LossFunction = chunked_causal_lm_loss_sum,
        ranks: Ranks = SINGLE,
    ) -> None:
        self.ranks = ranks
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.samples = samples
        self.batcher = batcher
        self.settings = settings
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.loss_function = loss_function
        self._plan_epoch = -1
        self._plan: list[list[list[int]]] = []

    def _epoch_plan(self, epoch: int) -> list[list[list[int]]]:
        if epoch != self._plan_epoch:
            self._plan = self.batcher.epoch_batches(self.samples, epoch, self.settings.seed)
            self._plan_epoch = epoch
        return self._plan

    def _next_batch(self, state: TrainerState) -> Batch:
        """This rank's next micro-batch, still on the CPU. The ranks take consecutive micro-batches of one shared
        plan, so `state` counts micro-batches of the plan whatever the number of ranks (resume may change it)."""
        rows: MicroBatch = []
        for rank in range(self.ranks.world_size):
            plan = self._epoch_plan(state.epoch_index)
            if rank == self.ranks.rank:
                rows = plan[state.batch_index]
            state.batches_per_epoch = len(plan)  # packing may plan a slightly different row count per epoch
            state.batch_index += 1
            if state.batch_index == len(plan):
                state.epoch_index, state.batch_index = state.epoch_index + 1, 0
        return self.batcher.collate([[self.samples[i] for i in row] for row in rows])

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def optimizer_step(self, state: TrainerState) -> tuple[float, int]:
        """One optimizer step over `gradient_accumulation` micro-batches; returns (mean token loss, real tokens)."""
        batches = [self._next_batch(state) for _ in range(self.settings.gradient_accumulation)]
        # Normalise by the labelled tokens of the whole step, so accumulation equals one big batch (counted on the
        # CPU copies: no wait on the GPU).
        # With several ranks the step is theirs together: counts and gradients are summed over the ranks.
        labelled_all, tokens_all = self.ranks.sum(sum(labelled_tokens(batch) for batch in batches),
                                                  sum(batch.real_tokens for batch in batches))
        labelled = max(1, int(labelled_all))
        total_loss = torch.zeros((), device=self.device)
        self.model.train()
        for batch in batches:
            with self._autocast():
                loss = self.loss_function(self.model, batch.to(self.device)) / labelled
            loss.backward()
            total_loss += loss.detach()
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.ranks.sum_gradients(parameters)
        torch.nn.utils.clip_grad_norm_(parameters, self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        return float(self.ranks.sum_tensor(total_loss)), int(tokens_all)

    def run(self, state: TrainerState, hooks: LoopHooks, stop: threading.Event) -> Outcome:
        window_tokens, window_start = 0, time.monotonic()
        run_start, steps_at_start = window_start, state.step
        while not state.finished:
            learning_rate = float(self.scheduler.get_last_lr()[0])
            loss, tokens = self.optimizer_step(state)
            state.real_tokens += tokens
            window_tokens += tokens
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {state.step}")
            if state.step % self.settings.logging_steps == 0 or state.finished:
                now = time.monotonic()
                row = {
                    "step": state.step,
                    "epoch": round(state.epoch, 6),
                    "loss": loss,
                    "learning_rate": learning_rate,
                    "tokens_per_second": window_tokens / max(now - window_start, 1e-9),
                }
                state.metrics.append(row)
                seconds_per_step = (now - run_start) / (state.step - steps_at_start)
                hooks.on_log(state, row, seconds_per_step * (state.total_steps - state.step))
                window_tokens, window_start = 0, now
            stopping = self.ranks.any(stop.is_set())  # every rank stops after the same step
            if stopping or state.finished or state.step % self.settings.checkpoint_every == 0:
                paused = time.monotonic()
                hooks.on_checkpoint(state, stopping=stopping)
                # Checkpoint and eval time is not training time: keep it out of tokens/s and the ETA.
                paused = time.monotonic() - paused
                window_start += paused
                run_start += paused
            if stopping:
                return "stopped"
        return "finished"
