"""Runs the real `train()` as gloo ranks in spawned processes (or as one rank in this one) on a tiny model.

Ranks other than 0 get a store that refuses every write, so a checkpoint or output written by any rank but 0 fails
the run instead of passing unnoticed.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from kubetune.api.types import TrainingSpec
from kubetune.jobs.checkpoints import BaseModelRef, CheckpointStore
from kubetune.jobs.distributed import SINGLE, Ranks, process_group, ranks_from_env
from kubetune.jobs.train import TrainInputs, train
from kubetune.store import open_store
from kubetune.store.local import LocalStore

PREFIX = "default/demo/train/0123456789abcdef"
RESULT = "result.json"


class WriteRefusingStore(LocalStore):
    """The shared store as a rank other than 0 must use it: reading only."""

    def refuse(self, key: str) -> None:
        raise PermissionError(f"rank {os.environ.get('RANK')} wrote {key!r}: only rank 0 writes to the store")

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        self.refuse(key)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.refuse(key)

    def delete(self, key: str) -> None:
        self.refuse(key)

    def delete_prefix(self, prefix: str) -> None:
        self.refuse(prefix)


@dataclass(frozen=True)
class RankJob:
    model_dir: Path
    data_path: Path
    store_root: Path
    training: dict[str, Any]  # TrainingSpec as JSON: plain data crosses the process boundary
    out: Path  # per-rank folders: the result, the work dir and (rank 0, when finished) the outputs
    stop_at: int | None = None  # rank 0 asks to stop once this step is logged (what SIGTERM does)
    eval_path: Path | None = None  # the eval split, when the run has one


def rank_dir(job: RankJob, rank: int) -> Path:
    return job.out / f"rank-{rank}"


def train_rank(job: RankJob, ranks: Ranks) -> None:
    training = TrainingSpec.model_validate(job.training)
    store = open_store(str(job.store_root)) if ranks.is_main else WriteRefusingStore(job.store_root)
    checkpoints = CheckpointStore(store, PREFIX, stage="train", input_key="b" * 64, keep=training.checkpoint.keep)
    here = rank_dir(job, ranks.rank)
    inputs = TrainInputs(job.model_dir, BaseModelRef("file:///tiny", "c" * 64), job.data_path, training,
                         max_seq_length=48, workdir=here / "work", eval_data_path=job.eval_path)
    stop = threading.Event()

    def progress(phase: str = "Running", *, force: bool = False, **fields: Any) -> None:
        if job.stop_at is not None and fields.get("step") == job.stop_at and "loss" in fields:
            stop.set()

    with process_group(ranks, torch.device("cpu")):
        result = train(inputs, checkpoints, here / "outputs", stop=stop, progress=progress, ranks=ranks)
    state = result.state
    (here / RESULT).write_text(json.dumps({
        "outcome": result.outcome, "step": state.step, "totalSteps": state.total_steps, "epoch": state.epoch,
        "metrics": state.metrics, "lastCheckpoint": state.last_checkpoint, "evalLosses": state.eval_losses}),
        encoding="utf-8")


def spawned_rank(index: int, job: RankJob, world_size: int, port: int) -> None:
    os.environ.update({"RANK": str(index), "LOCAL_RANK": str(index), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
    ranks = ranks_from_env()
    assert ranks is not None
    train_rank(job, ranks)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_ranks(job: RankJob, world_size: int) -> list[dict[str, Any]]:
    """Train with `world_size` ranks (spawned gloo processes, or this process for one); each rank's result."""
    for rank in range(world_size):
        rank_dir(job, rank).mkdir(parents=True, exist_ok=True)
    if world_size == 1:
        train_rank(job, SINGLE)
    else:
        mp.spawn(spawned_rank, args=(job, world_size, free_port()), nprocs=world_size, join=True)
    return [json.loads((rank_dir(job, rank) / RESULT).read_text()) for rank in range(world_size)]
