"""Training ranks: which one this process is, its process group, and the few collectives the train loop needs.

A rank learns its place from the torchrun environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, with `MASTER_ADDR` and
`MASTER_PORT` for the rendezvous), set by the launcher (`kubetune.jobs.launch`) or by hand. Without it the process is
the only rank and every collective is the identity, so single-process training pays nothing for any of this.

Gradients are summed once per optimizer step, after the last micro-batch, rather than through DDP: the loss may run
the decoder directly (`train_loss`), which DDP's forward hook would not see, and one all-reduce of LoRA's small
gradients per step is all the communication training needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from kubetune.jobs.errors import ConfigError

RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Rank 0 saves checkpoints and generates eval answers while the others wait at a barrier: allow for that.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


class RankSetupError(ConfigError):
    """This process cannot take its place among the ranks (bad environment, no GPU for its local rank): retrying
    the same pod cannot help."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training ranks."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, outputs and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def place(self, device: torch.device) -> torch.device:
        """This rank's training device: on CUDA, the GPU of its local rank."""
        if device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise RankSetupError(f"local rank {self.local_rank} has no GPU: {torch.cuda.device_count()} visible")
        return torch.device("cuda", self.local_rank)

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks, in one collective."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return [float(value) for value in tensor.tolist()]

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (on this rank's device) summed over the ranks, without waiting on the host."""
        if self.distributed:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any: how the ranks agree to stop at the same step."""
        return bool(self.sum(float(flag))[0]) if self.distributed else flag

    def sum_gradients(self, parameters: Sequence[torch.Tensor]) -> None:
        """Replace each gradient by its sum over the ranks, one flat all-reduce per dtype. A missing gradient counts
        as zeros, so that every rank sends the same shapes."""
        if not self.distributed:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            by_dtype.setdefault(parameter.grad.dtype, []).append(parameter.grad)
        for grads in by_dtype.values():
            flat = torch.cat([grad.reshape(-1) for grad in grads])
            dist.all_reduce(flat)
            for grad, summed in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
                grad.copy_(summed.view_as(grad))

    def broadcast_from_main(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite `tensors` in place with rank 0's values (the trainable weights every rank starts from)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for tensor in tensors:
                dist.broadcast(tensor.data, src=0)

    def main_value(self, value: str) -> str:
        """Rank 0's `value`, on every rank."""
        if not self.distributed:
            return value
        box: list[object] = [value]
        dist.broadcast_object_list(box, src=0)
        return str(box[0])

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = Ranks()


def ranks_from_env(env: Mapping[str, str] = os.environ) -> Ranks | None:
    """The rank the launcher made this process; None when it was not launched as one."""
    present = [name for name in RANK_VARIABLES if name in env]
    if not present:
        return None
    if len(present) != len(RANK_VARIABLES):
        raise RankSetupError(f"rank environment incomplete: {', '.join(present)} set, {RANK_VARIABLES} needed")
    try:
        rank, world_size, local_rank = (int(env[name]) for name in RANK_VARIABLES)
    except ValueError as error:
        raise RankSetupError(f"rank environment is not numeric: {error}") from error
    if not (0 <= rank < world_size and 0 <= local_rank <= rank):
        raise RankSetupError(f"rank {rank} / local rank {local_rank} do not fit a world of {world_size}")
    return Ranks(rank, world_size, local_rank)


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """Join the ranks' process group for the duration (nothing to join for a single rank). `device` is this rank's
    training device (`Ranks.place`)."""
    if not ranks.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RankSetupError(f"rank {ranks.rank} has no rendezvous address: {', '.join(missing)} not set")
    dist.init_process_group(backend_for(device), init_method="env://", rank=ranks.rank, world_size=ranks.world_size,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()
