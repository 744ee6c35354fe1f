"""What every stage job shares: its run config, the store, progress reporting, stop signals and exit codes.

Jobs know nothing of Kubernetes (ARCHITECTURE decision 4): the same code runs in a pod, under `kubetune run`, or by
hand with `python -m kubetune.jobs <stage> --run run.json`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from kubetune.jobs.errors import ConfigError, Stopped
from kubetune.jobs.lineage import write_lineage
from kubetune.runconfig import RunConfig
from kubetune.store import Manifest, Store, fetch, open_store, publish, read_manifest

log = logging.getLogger("kubetune.jobs")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_STOPPED = 143
TERMINATION_LOG_ENV = "KUBETUNE_TERMINATION_LOG"  # where a pod's termination message goes (Job env)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class JobContext:
    """A running stage: where it reads, where it writes, how it reports."""

    PROGRESS_MIN_INTERVAL_S = 2.0

    def __init__(self, run: RunConfig, stage: str, *, store: Store | None = None, workdir: Path | None = None) -> None:
        if stage not in run.stages:
            raise ConfigError(f"run config has no entry for stage {stage!r} (stages: {', '.join(run.stages)})")
        self.run = run
        self.stage = stage
        self.key = run.stages[stage].key
        self.prefix = run.stages[stage].prefix
        self.store = store or open_store(
            run.store.uri, endpoint=run.store.endpoint, region=run.store.region, path_style=run.store.path_style
        )
        # A scratch dir made here (no KUBETUNE_WORKDIR: a job run by hand) is removed by run_job; a pod's
        # emptyDir or `kubetune run`'s state dir is the caller's to keep or drop.
        self.owns_workdir = workdir is None and not os.environ.get("KUBETUNE_WORKDIR")
        self.workdir = workdir or _scratch_dir(stage)
        self.stop = threading.Event()
        self._progress: dict[str, Any] = {"stage": stage}
        self._progress_written_at = 0.0
        # progress.json has one writer: rank 0 of launched ranks, else the process itself. A second rank's
        # start or stop report would replace rank 0's step and checkpoint.
        self.writes_progress = os.environ.get("RANK", "0") == "0"

    def progress(self, phase: str = "Running", *, force: bool = False, **fields: Any) -> None:
        """Merge `fields` into progress.json and write it (at most every few seconds unless the phase changes)."""
        if not self.writes_progress:
            return
        changed_phase = self._progress.get("phase") != phase
        self._progress.update({k: v for k, v in fields.items() if v is not None}, phase=phase, updatedAt=utc_now())
        now = time.monotonic()
        if force or changed_phase or now - self._progress_written_at >= self.PROGRESS_MIN_INTERVAL_S:
            self.store.put_bytes(f"{self.prefix}/progress.json", json.dumps(self._progress, sort_keys=True).encode())
            self._progress_written_at = now

    def upstream_manifest(self, stage: str) -> Manifest:
        ref = self.run.stages.get(stage)
        if ref is None:
            raise ConfigError(f"run config has no entry for upstream stage {stage!r}")
        manifest = read_manifest(self.store, ref.prefix)
        if manifest is None or manifest.input_key != ref.key:
            raise ConfigError(f"the {stage} stage has no complete output at {self.store.uri_for(ref.prefix)}")
        return manifest

    def fetch(self, stage: str, dest: Path) -> Manifest:
        """Download an upstream stage's output into `dest`, verifying every file's sha256."""
        manifest = self.upstream_manifest(stage)
        return fetch(self.store, self.run.stages[stage].prefix, dest, manifest)

    def publish(self, outputs: Path, metadata: dict[str, Any]) -> Manifest:
        """Write lineage.json into `outputs`, upload them and write manifest.json last: only then does the stage's
        output exist."""
        write_lineage(self, outputs)
        manifest = publish(self.store, self.prefix, outputs, stage=self.stage, input_key=self.key, metadata=metadata)
        self.progress("Succeeded", force=True)
        return manifest

    def install_signal_handlers(self) -> None:
        """SIGTERM (pod deletion, preemption, suspend) and SIGINT (Ctrl-C locally) ask the stage to stop cleanly."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            if self.stop.is_set():
                raise KeyboardInterrupt  # a second signal: stop now
            log.warning("received %s: saving and stopping", signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def _scratch_dir(stage: str) -> Path:
    root = os.environ.get("KUBETUNE_WORKDIR")
    if root:
        path = Path(root) / stage
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError, PermissionError) as error:  # a retry would not change these
            raise ConfigError(f"KUBETUNE_WORKDIR={root}: cannot make the stage's scratch folder {path}: "
                              f"{error.strerror or error}") from None
        return path
    return Path(tempfile.mkdtemp(prefix=f"kubetune-{stage}-"))


def run_job(stage: str, run_path: Path, body: Callable[[JobContext], None]) -> int:
    """Run a stage body and map its outcome to the exit-code contract (docs/contracts.md)."""
    if run_path.exists() and not run_path.is_file():  # a folder, or a FIFO that would block the read forever
        return _fail(None, EXIT_CONFIG, "Failed", f"run config {run_path} is not a regular file")
    try:
        config = RunConfig.load(run_path)
    except OSError as exc:
        return _fail(None, EXIT_CONFIG, "Failed", f"cannot read run config {run_path}: {exc.strerror or exc}")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        # Not JSON, not a run config, or a spec the API refuses: nothing a retry would change.
        return _fail(None, EXIT_CONFIG, "Failed", f"run config {run_path} is not usable: {type(exc).__name__}: {exc}")
    try:
        ctx = JobContext(config, stage)
    except (ConfigError, ValueError) as exc:  # no entry for the stage, a store URI or endpoint that cannot work
        return _fail(None, EXIT_CONFIG, "Failed", str(exc))
    except OSError as exc:  # a full disk under the scratch folder, say: a retry may find room
        return _fail(None, EXIT_FAILED, "Failed", f"cannot start the {stage} stage: {exc}")
    try:
        ctx.install_signal_handlers()
        ctx.progress("Running", force=True, startedAt=utc_now())
        body(ctx)
        return EXIT_OK
    except Stopped as exc:
        return _fail(ctx, EXIT_STOPPED, "Stopped", str(exc) or "stopped by signal after saving a checkpoint")
    except ConfigError as exc:
        return _fail(ctx, EXIT_CONFIG, "Failed", str(exc))
    except Exception as exc:
        log.exception("stage %s failed", stage)
        return _fail(ctx, EXIT_FAILED, "Failed", f"{type(exc).__name__}: {exc}")
    finally:
        if ctx.owns_workdir:
            shutil.rmtree(ctx.workdir, ignore_errors=True)  # everything worth keeping is in the store


def _fail(ctx: JobContext | None, code: int, phase: str, reason: str) -> int:
    reason = " ".join(reason.split())[:1000]
    if ctx is not None:
        try:
            ctx.progress(phase, force=True, message=reason, exitCode=code)
        except Exception:
            log.warning("could not write progress.json", exc_info=True)
    _write_termination_log(reason)
    print(f"kubetune-job: {phase.lower()}: {reason}", file=sys.stderr, flush=True)
    return code


def _write_termination_log(reason: str) -> None:
    """The pod's termination message. Only the Job builder sets the variable: run locally or by hand (even as root),
    a job never writes the host's /dev/termination-log."""
    path = os.environ.get(TERMINATION_LOG_ENV)
    if not path:
        return
    try:
        Path(path).write_text(reason, encoding="utf-8")
    except OSError as exc:
        log.warning("could not write the termination log %s: %s", path, exc.strerror or exc)
