"""Training ranks: when the train job launches ranks, how each learns its place, how their failures map to the job's
exit contract, and how a resumed plan is cut when the rank count changed."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from kubetune.api.types import FineTuneRunSpec, TrainingSpec
from kubetune.jobs import train
from kubetune.jobs.distributed import SINGLE, Ranks, RankSetupError, backend_for, ranks_from_env
from kubetune.jobs.launch import LaunchPlan, launch_plan, ranks_failure, record_rank_failure, run_ranks
from kubetune.jobs.runtime import ConfigError, JobContext, Stopped
from kubetune.jobs.train import resumed_total_steps
from kubetune.jobs.train_loop import TrainerState
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.stages import StageRef

CPU_SPEC = FineTuneRunSpec.model_validate({"training": {"device": "cpu"}})
MULTI_NODE_ENV = {"NPROC_PER_NODE": "4", "NNODES": "3", "NODE_RANK": "2", "MASTER_ADDR": "job-0.svc",
                  "MASTER_PORT": "29500"}


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),  # one rank: the job trains in its own process
    ({"NPROC_PER_NODE": "1"}, None),
    ({"NPROC_PER_NODE": "2"}, LaunchPlan(2)),
    ({"NPROC_PER_NODE": "2", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "100"}, LaunchPlan(2, shutdown_timeout_s=100)),
    (MULTI_NODE_ENV, LaunchPlan(4, 3, 2, "job-0.svc", 29500)),
    ({"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "job-0.svc"}, LaunchPlan(1, 2, 0, "job-0.svc")),
    ({**MULTI_NODE_ENV, "RANK": "5", "WORLD_SIZE": "12", "LOCAL_RANK": "1"}, None),  # already a rank
])
def test_the_job_launches_ranks_only_when_several_are_asked_and_it_is_not_one(
    env: dict[str, str], expected: LaunchPlan | None
) -> None:
    assert launch_plan(CPU_SPEC, env) == expected


def test_without_cuda_the_specs_gpu_count_launches_nothing() -> None:
    spec = FineTuneRunSpec.model_validate({"resources": {"train": {"gpus": 4}}})
    assert not torch.cuda.is_available()
    assert launch_plan(spec, {}) is None


@pytest.mark.parametrize(("env", "message"), [
    ({"NPROC_PER_NODE": "two"}, "NPROC_PER_NODE='two' is not a whole number"),
    ({"NPROC_PER_NODE": "0"}, "NPROC_PER_NODE=0 must be at least 1"),
    ({"NNODES": "2", "MASTER_ADDR": "a"}, "NNODES=2 needs NODE_RANK to find the other nodes"),
    ({"NNODES": "2"}, "needs NODE_RANK and MASTER_ADDR"),
    ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "a"}, "NODE_RANK=2 is not below NNODES=2"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "rank environment incomplete"),
])
def test_a_bad_rank_environment_is_a_configuration_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        launch_plan(CPU_SPEC, env)


@pytest.mark.parametrize(("plan", "expected"), [
    (LaunchPlan(2), {"standalone": True, "nproc_per_node": "2", "nnodes": "1:1", "shutdown_timeout": 270}),
    (LaunchPlan(4, 3, 2, "job-0.svc", 29501), {
        "standalone": False, "nproc_per_node": "4", "nnodes": "3", "node_rank": 2, "rdzv_backend": "static",
        "master_addr": "job-0.svc", "master_port": 29501}),
])
def test_the_plan_is_a_torchrun_command_line(plan: LaunchPlan, expected: dict[str, Any]) -> None:
    args = vars(torchrun.parse_args([*plan.torchrun_args(), "--module", "kubetune.jobs"]))
    assert {key: args[key] for key in expected} == expected
    assert (args["module"], args["training_script"]) == (True, "kubetune.jobs")


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, Ranks(3, 4, 1)),
])
def test_a_process_learns_its_rank_from_the_torchrun_environment(env: dict[str, str], expected: Ranks | None) -> None:
    assert ranks_from_env(env) == expected


@pytest.mark.parametrize("env", [
    {"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"},
    {"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"},
    {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "1"},
])
def test_an_impossible_rank_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(RankSetupError):
        ranks_from_env(env)


def test_one_rank_needs_no_process_group_and_its_collectives_are_the_identity() -> None:
    assert SINGLE.is_main and not SINGLE.distributed
    assert SINGLE.sum(3.0, 4.0) == [3.0, 4.0]
    assert SINGLE.any(True) and not SINGLE.any(False)
    assert SINGLE.main_value("checkpoint-00000002") == "checkpoint-00000002"
    parameter = torch.nn.Parameter(torch.ones(2))
    parameter.grad = torch.full((2,), 0.5)
    SINGLE.sum_gradients([parameter])
    assert parameter.grad.tolist() == [0.5, 0.5]
    assert (backend_for(torch.device("cpu")), backend_for(torch.device("cuda", 1))) == ("gloo", "nccl")
    assert Ranks(5, 8, 1).place(torch.device("cpu")) == torch.device("cpu")


def failure(tmp: Path, rank: int, code: int, error: Exception | None, at: int) -> ProcessFailure:
    error_file = tmp / f"error-{rank}.json"
    if error is not None:
        record_rank_failure(error, {"TORCHELASTIC_ERROR_FILE": str(error_file)})
        data = json.loads(error_file.read_text())
        error_file.write_text(json.dumps({**data, "timestamp": at}))
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=code, error_file=str(error_file))


def test_a_configuration_error_on_any_rank_fails_the_stage_for_good(tmp_path: Path) -> None:
    outcome = ranks_failure({0: failure(tmp_path, 0, 1, RuntimeError("peer gone"), at=5),
                             1: failure(tmp_path, 1, 2, ConfigError("the dataset output has no x"), at=9)})
    assert isinstance(outcome, ConfigError)
    assert str(outcome) == "rank 1 exited with code 2: the dataset output has no x"


def test_ranks_that_all_stopped_stop_the_stage(tmp_path: Path) -> None:
    outcome = ranks_failure({0: failure(tmp_path, 0, 143, Stopped("stopped at step 3; saved checkpoint-3"), at=4),
                             1: failure(tmp_path, 1, 143, Stopped("stopped at step 3"), at=5)})
    assert isinstance(outcome, Stopped) and str(outcome) == "rank 0 exited with code 143: stopped at step 3; saved checkpoint-3"


def test_otherwise_the_earliest_failed_ranks_reason_is_the_stages(tmp_path: Path) -> None:
    outcome = ranks_failure({0: failure(tmp_path, 0, 143, Stopped("stopped"), at=8),
                             1: failure(tmp_path, 1, 1, MemoryError("out of   memory\nin backward"), at=3)})
    assert type(outcome) is RuntimeError
    assert str(outcome) == "rank 1 exited with code 1: MemoryError: out of memory in backward"


def test_a_rank_killed_by_a_signal_reports_the_signal(tmp_path: Path) -> None:
    outcome = ranks_failure({1: failure(tmp_path, 1, -9, None, at=0)})
    assert type(outcome) is RuntimeError and "Signal 9 (SIGKILL)" in str(outcome)


def raise_a_sigterm() -> None:
    raise SignalException("Process 1 got signal: 15", sigval=signal.SIGTERM)


def raise_while_unwinding_a_sigterm() -> None:
    """What torch's metrics wrapper does when the launcher's SIGTERM lands before it binds its start time."""
    try:
        raise_a_sigterm()
    finally:
        raise UnboundLocalError("cannot access local variable 'start' where it is not associated with a value")


@pytest.mark.parametrize("launcher", [raise_a_sigterm, raise_while_unwinding_a_sigterm])
def test_a_stop_signal_to_the_launcher_stops_the_stage_however_torch_unwinds_it(
        launcher: Callable[[], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchrun, "run", lambda _args: launcher())
    with pytest.raises(Stopped, match="^stopped by SIGTERM: the ranks saved a checkpoint and exited$"):
        run_ranks(LaunchPlan(2), "train", tmp_path / "run.json")


def test_a_launcher_error_without_a_stop_signal_is_the_launchers_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def launcher(_args: object) -> None:
        raise RuntimeError("rendezvous timed out")

    monkeypatch.setattr(torchrun, "run", launcher)
    with pytest.raises(RuntimeError, match="^rendezvous timed out$"):
        run_ranks(LaunchPlan(2), "train", tmp_path / "run.json")


def test_the_stages_signal_handlers_are_back_once_the_ranks_are_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def stage_handler(_signum: int, _frame: object) -> None:
        pass

    def launcher(_args: object) -> None:  # as torch's launcher: handlers that raise, left in place
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, signal.default_int_handler)

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    previous_sigterm = signal.signal(signal.SIGTERM, stage_handler)
    try:
        monkeypatch.setattr(torchrun, "run", launcher)
        run_ranks(LaunchPlan(2), "train", tmp_path / "run.json")
        assert signal.getsignal(signal.SIGTERM) is stage_handler
        assert {signum: signal.getsignal(signum) for signum in before} == before
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)


def test_a_stop_asked_while_the_model_is_fetched_ends_the_stage_before_any_rank_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stage = StageRef(key="0" * 64, prefix="default/demo/train/0123456789abcdef")
    ctx = JobContext(RunConfig("demo", "default", CPU_SPEC, StoreConfig(str(tmp_path / "store")), {"train": stage}),
                     "train", workdir=tmp_path / "work")
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    monkeypatch.setattr(train, "base_model_folder", lambda ctx: ctx.stop.set())  # a SIGTERM during the fetch
    monkeypatch.setattr(train, "run_ranks", lambda *_args: pytest.fail("the ranks started"))
    with pytest.raises(Stopped, match="^stopped before the ranks started$"):
        train.run(ctx)


def state_at(step: int, epoch_index: int, batch_index: int, total: int) -> TrainerState:
    return TrainerState(total_steps=total, batches_per_epoch=6, step=step, epoch_index=epoch_index,
                        batch_index=batch_index)


@pytest.mark.parametrize(("training", "state", "micro_batches_per_step", "same_ranks", "expected"), [
    ({"epochs": 2}, state_at(2, 0, 4, total=6), 1, True, 6),  # same ranks: the plan as planned
    ({"epochs": 2}, state_at(2, 0, 4, total=6), 1, False, 2 + 8),  # 8 micro-batches left, one per step
    ({"epochs": 2}, state_at(2, 0, 2, total=12), 2, False, 2 + 5),
    ({"epochs": 2}, state_at(5, 1, 3, total=12), 4, False, 5 + 1),  # 3 left: one step takes them
    ({"epochs": 1, "extraEpochs": 1}, state_at(6, 1, 0, total=6), 2, False, 6 + 3),
    ({"maxSteps": 9}, state_at(2, 0, 4, total=9), 1, False, 9),  # a step budget stays a step budget
])
def test_a_plan_resumed_with_another_rank_count_covers_the_data_left(
    training: dict[str, Any], state: TrainerState, micro_batches_per_step: int, same_ranks: bool, expected: int
) -> None:
    spec = TrainingSpec.model_validate(training)
    assert resumed_total_steps(state, spec, state.total_steps, micro_batches_per_step,
                               same_ranks=same_ranks) == expected
