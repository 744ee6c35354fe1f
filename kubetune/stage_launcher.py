"""How `kubetune run` starts a stage's process: `python -P -m kubetune.jobs STAGE --run run.json`, either as a fresh
interpreter or, for the stages that import torch on a host without GPUs, forked from a stage server that imported
them once (`kubetune.jobs.stage_server`). Both give the same process contract: environment, arguments, the log file
as stdout and stderr, exit code, signals. The server is started with the first stage, so its imports overlap the
dataset stage; a stage asked of it waits for them, as a fresh process would wait for its own.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from glob import glob
from pathlib import Path
from typing import IO, Any, Protocol

# The stages whose start is mostly importing torch and transformers, and what the server imports for each: its
# module and what it imports later (the bundled model's Llama code; llama.cpp's bindings).
STAGE_MODULES = {
    "train": ("kubetune.jobs.train", "transformers.models.llama.modeling_llama"),
    "merge": ("kubetune.jobs.merge", "transformers.models.llama.modeling_llama"),
    "convert": ("kubetune.jobs.convert",),
    "evaluate": ("kubetune.jobs.evaluate", "transformers.models.llama.modeling_llama", "llama_cpp"),
}
# Device nodes of GPUs: a process that imported bitsandbytes or touched CUDA cannot give CUDA to forked children.
GPU_DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")
SERVER_STOP_SECONDS = 5.0


class StageProcess(Protocol):
    """The part of `subprocess.Popen` the runner uses."""

    pid: int
    returncode: int | Any

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


def stage_command(stage: str, run_json: Path) -> list[str]:
    # -P: started from a checkout's root, the job must not import its operator/ folder as the stdlib's operator.
    return [sys.executable, "-P", "-m", "kubetune.jobs", stage, "--run", str(run_json)]


def fork_safe_host() -> bool:
    """Linux without GPU device nodes: forking a process that imported torch is sound there."""
    return sys.platform.startswith("linux") and not any(glob(pattern) for pattern in GPU_DEVICE_NODES)


class ForkedStage:
    """A stage forked by the stage server, with `Popen`'s poll/wait/send_signal/kill."""

    def __init__(self, server: StageServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self._wait(0.0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._wait(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"stage process {self.pid}", timeout or 0.0)
        return code

    def _wait(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            reply = self.server.reply(timeout)
            if reply is not None:
                # The server gone while the stage ran: its exit code is lost, so the stage failed.
                self.returncode = int(reply.get("exit", 1))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class StageServer:
    """The stage server process, for one FineTuneRun under `kubetune run`."""

    def __init__(self, modules: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        with log_path.open("wb") as log:  # what this server said, not every earlier one's too
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", "kubetune.jobs.stage_server", *modules],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=dict(env),
            )
        self.ready = False

    def start(self, argv: Sequence[str], modules: Sequence[str], env: Mapping[str, str], log_path: Path
              ) -> ForkedStage | None:
        """The stage forked from the server, or None when the server cannot (it refused or ended): start it afresh."""
        try:
            if not self.ready:
                self.ready = bool((self.reply(None) or {}).get("ready"))
                if not self.ready:
                    self.close()
                    return None
            stdin = self.process.stdin
            assert stdin is not None
            stdin.write((json.dumps({"argv": list(argv), "env": dict(env), "log": str(log_path), "modules": list(modules)}) + "\n").encode())
            stdin.flush()
        except BrokenPipeError:  # the server ended
            self.close()
            return None
        except BaseException:
            # Interrupted before the fork was asked for: nothing of the stage may run.
            self.close(kill=True)
            raise
        reply = self.reply(None)
        if reply is None or "pid" not in reply:
            self.close()
            return None
        return ForkedStage(self, int(reply["pid"]))

    def reply(self, timeout: float | None) -> dict[str, Any] | None:
        """The server's next message; None on timeout. An ended server reads as {} (no ready, pid or exit)."""
        stdout: IO[bytes] | None = self.process.stdout
        assert stdout is not None
        if timeout is not None and not select.select([stdout], [], [], timeout)[0]:
            return None
        line = stdout.readline()
        message: dict[str, Any] = json.loads(line) if line else {}
        return message

    def close(self, *, kill: bool = False) -> None:
        if self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout=SERVER_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class StageLauncher:
    """Starts each stage of one FineTuneRun under `kubetune run`: forked from a stage server where that is sound, else
    afresh. The server's own output (its imports' warnings) goes to `stage-server.log` in the run's state folder,
    beside the stage logs."""

    def __init__(self, state_dir: Path, *, preload: bool | None = None) -> None:
        self.state_dir = state_dir
        self.preload = fork_safe_host() if preload is None else preload
        self.server: StageServer | None = None

    def warm_up(self, stages: Sequence[str], env: Mapping[str, str]) -> None:
        """Start the server with the imports of the first of `stages` it serves, beside the stage about to run."""
        modules = next((STAGE_MODULES[stage] for stage in stages if stage in STAGE_MODULES), ())
        if self.preload and self.server is None and modules:
            self.server = StageServer(modules, env, self.state_dir / "stage-server.log")
            self.preload = False  # one server per run: one that refused is not started again

    def start(self, stage: str, run_json: Path, env: Mapping[str, str], log_path: Path) -> StageProcess:
        """The stage's process, its stdout and stderr written to `log_path` afresh."""
        with log_path.open("wb") as log:  # emptied for either start: a forked stage appends to it
            if stage in STAGE_MODULES and self.server is not None:
                forked = self.server.start([stage, "--run", str(run_json)], STAGE_MODULES[stage], env, log_path)
                if forked is not None:
                    return forked
                self.server = None
            return subprocess.Popen(stage_command(stage, run_json), stdout=log, stderr=log, env=dict(env))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
