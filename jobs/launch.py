"""Launching the train stage as several ranks: one process per GPU, on one or several nodes.

`python -m kubetune.jobs train`, whether started in a pod, by `kubetune run` or by hand, decides here whether it
trains in its own process or re-executes the stage as ranks under torch.distributed's elastic launcher (what
`torchrun` runs), from the torchrun-style environment:

    NPROC_PER_NODE                          ranks on this node (the operator sets it to the pod's GPUs; on CPU it
                                            is the knob for gloo ranks)
    NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   several nodes meeting at node 0 (static rendezvous)

Without NPROC_PER_NODE, a CUDA machine runs one rank per GPU the spec asks for (`resources.train.gpus`, else
`resources.defaults.gpus`). A process that already is a rank (`RANK`, `WORLD_SIZE`, `LOCAL_RANK` set) never launches.

The launcher keeps the job contract: a rank's configuration error still ends the stage with exit 2, ranks stopped by
a signal end it with 143 after rank 0 saved a checkpoint, and the failing rank's one-line reason is the stage's.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import torch
from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from kubetune.api.types import FineTuneRunSpec
from kubetune.jobs.distributed import ranks_from_env
from kubetune.jobs.runtime import EXIT_CONFIG, EXIT_STOPPED, ConfigError, Stopped

log = logging.getLogger("kubetune.jobs.launch")

DEFAULT_MASTER_PORT = 29500
# SIGTERM reaches the launcher, which passes it on to the ranks and waits this long for rank 0's checkpoint before
# killing them: inside the train pod's grace period (300 s, operator/jobspec.py), with room for the upload's end.
DEFAULT_SHUTDOWN_TIMEOUT_S = 270
ERROR_FILE_VARIABLE = "TORCHELASTIC_ERROR_FILE"  # where the launcher reads a failed rank's reason
LAUNCHER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)  # torch's launcher takes these


@dataclass(frozen=True)
class LaunchPlan:
    """How many ranks to start on this node and, across nodes, where they meet."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT
    shutdown_timeout_s: int = DEFAULT_SHUTDOWN_TIMEOUT_S

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def torchrun_args(self) -> list[str]:
        args = [f"--nproc-per-node={self.nproc_per_node}", f"--shutdown-timeout={self.shutdown_timeout_s}"]
        if self.nnodes == 1:
            return ["--standalone", *args]  # a free local port: several runs on one machine never collide
        return [*args, f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}", "--rdzv-backend=static",
                f"--master-addr={self.master_addr}", f"--master-port={self.master_port}"]


def _positive(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def spec_gpus(spec: FineTuneRunSpec) -> int | None:
    """`resources.train.gpus`, else `resources.defaults.gpus` (the stage block overrides the defaults)."""
    for block in (spec.resources.train, spec.resources.defaults):
        if block is not None and block.gpus is not None:
            return block.gpus
    return None


def launch_plan(spec: FineTuneRunSpec, env: Mapping[str, str] = os.environ) -> LaunchPlan | None:
    """The ranks to launch from this process; None when it trains by itself (one rank, or already a rank)."""
    if ranks_from_env(env) is not None:
        return None
    asked_gpus = spec_gpus(spec) if spec.training.device != "cpu" and torch.cuda.is_available() else None
    nproc = _positive(env, "NPROC_PER_NODE", max(1, asked_gpus or 1))
    nnodes = _positive(env, "NNODES", 1)
    if nproc == 1 and nnodes == 1:
        return None
    shutdown_timeout = _positive(env, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", DEFAULT_SHUTDOWN_TIMEOUT_S)
    if nnodes == 1:
        return LaunchPlan(nproc, shutdown_timeout_s=shutdown_timeout)
    missing = [name for name in ("NODE_RANK", "MASTER_ADDR") if not env.get(name)]
    if missing:
        raise ConfigError(f"NNODES={nnodes} needs {' and '.join(missing)} to find the other nodes")
    node_rank = _positive(env, "NODE_RANK", 0, minimum=0)
    if node_rank >= nnodes:
        raise ConfigError(f"NODE_RANK={node_rank} is not below NNODES={nnodes}")
    return LaunchPlan(nproc, nnodes, node_rank, env["MASTER_ADDR"],
                      _positive(env, "MASTER_PORT", DEFAULT_MASTER_PORT), shutdown_timeout)


def run_ranks(plan: LaunchPlan, stage: str, run_json: Path) -> None:
    """Run `python -m kubetune.jobs <stage> --run <run_json>` as this node's ranks and wait for them. Raises
    ConfigError / Stopped / RuntimeError with the failing rank's reason, as the stage itself would.

    `run_json` lies in the stage's scratch folder: the launcher's per-rank error files and logs go beside it, in
    `torchelastic/`, and are removed with the scratch (left to itself, torch makes a `torchelastic_*` folder in the
    temp dir that nothing ever removes)."""
    log.info("launching %d rank(s) on node %d of %d (world size %d)", plan.nproc_per_node, plan.node_rank,
             plan.nnodes, plan.world_size)
    log_dir = run_json.parent / "torchelastic"
    args = torchrun.parse_args([*plan.torchrun_args(), f"--log-dir={log_dir}", "--module", "kubetune.jobs"])
    # Set after parsing: torchrun's parser would take `--run` for an abbreviation of its own `--run-path`.
    args.training_script_args = [stage, "--run", str(run_json)]
    # torch's launcher swaps in handlers that raise SignalException and never puts the stage's back: a SIGTERM after
    # the ranks ended would then raise in the stage's own code instead of asking it to stop.
    handlers = {signum: signal.getsignal(signum) for signum in LAUNCHER_SIGNALS}
    try:
        torchrun.run(args)
    except ChildFailedError as error:
        raise ranks_failure(error.failures) from None
    except Exception as error:
        stop = stop_signal(error)
        if stop is None:
            raise
        raise Stopped(f"stopped by {stop.sigval.name}: the ranks saved a checkpoint and exited") from None
    finally:
        for signum, handler in handlers.items():
            if handler is not None:  # None: a handler set outside Python, which Python cannot put back
                signal.signal(signum, handler)


def stop_signal(error: BaseException) -> SignalException | None:
    """The stop signal behind `error`, if one is. The launcher's signal handler raises SignalException wherever its
    main thread is, and torch code it lands in may raise another exception while unwinding it (its metrics wrapper,
    hit before it binds its start time, raises UnboundLocalError); the agent has still shut the ranks down."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, SignalException):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def ranks_failure(failures: Mapping[int, ProcessFailure]) -> Exception:
    """The stage's outcome from its failed ranks: a configuration error on any rank wins, then a clean stop on all,
    else a failure that may be retried; the reason is the earliest failed rank's own."""
    def reason(rank: int) -> str:
        failure = failures[rank]
        return f"rank {rank} exited with code {failure.exitcode}: {failure.message}"

    codes = {rank: failure.exitcode for rank, failure in failures.items()}
    config = sorted(rank for rank, code in codes.items() if code == EXIT_CONFIG)
    if config:
        return ConfigError(reason(config[0]))
    first = min(failures, key=lambda rank: (failures[rank].timestamp, rank))
    if all(code == EXIT_STOPPED for code in codes.values()):
        return Stopped(reason(first))
    return RuntimeError(reason(first))


def record_rank_failure(error: Exception, env: Mapping[str, str] = os.environ) -> None:
    """Leave this rank's one-line reason where the launcher reads it (the torchelastic error file)."""
    path = env.get(ERROR_FILE_VARIABLE)
    if not path:
        return
    text = str(error) if isinstance(error, (ConfigError, Stopped)) else f"{type(error).__name__}: {error}"
    message = " ".join(text.split())[:1000]
    Path(path).write_text(json.dumps({"message": message, "timestamp": int(time.time())}), encoding="utf-8")


def install_rank_signal_handlers(stop: threading.Event) -> None:
    """A rank may get the same stop request twice (from its process group and from the launcher passing it on):
    every signal only asks it to stop; the launcher's shutdown timeout is the hard stop."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if not stop.is_set():
            log.warning("received %s: stopping after this step", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
