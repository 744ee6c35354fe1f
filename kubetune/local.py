"""`kubetune run`: the local executor. Walks the same planner as the operator and runs each stage's job code as a
subprocess with the same contract as in the cluster (`python -m kubetune.jobs <stage> --run run.json`)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.types import STAGES
from kubetune.api.validate import FineTuneRun, load_runs
from kubetune.digests import DigestCache
from kubetune.jobs.basemodel import default_cache_dir
from kubetune.jobs.runtime import utc_now
from kubetune.notify.local import NotifyConfigError, RunNotices
from kubetune.notify.message import GateFailure, read_gate_failure
from kubetune.operator.observe import ObservedJob
from kubetune.operator.status import StatusInputs, compute_status
from kubetune.planner import (
    CreateJob,
    Done,
    Fail,
    Idle,
    JobPhase,
    JobState,
    Lookup,
    Observed,
    Output,
    Plan,
    Resolve,
    plan,
)
from kubetune.progress_view import ProgressView, format_size
from kubetune.runconfig import RunConfig, StoreConfig
from kubetune.sources import SourceError, Sources, resolve_sources
from kubetune.stage_launcher import StageLauncher, StageProcess
from kubetune.stages import StageRef
from kubetune.state_files import append_lines, check_run_folder, write_state_file
from kubetune.store import (
    Manifest,
    ManifestError,
    NotAnObjectError,
    Store,
    content_digest,
    open_store,
    read_manifest,
)
from kubetune.store.local import LocalStore
from kubetune.store.verify import output_problem

EXIT_CONFIG, EXIT_STOPPED = 2, 143
PROGRESS_SECONDS = 0.5  # how often the progress view is redrawn while a stage runs
STATE_DIR = Path(".kubetune")
DIGEST_CACHE = "digests.json"  # big local files' sha256 by stat, under STATE_DIR


@dataclass
class LocalRun:
    """One FineTuneRun being executed here, with what has been observed so far."""

    run: FineTuneRun
    store_config: StoreConfig
    store: Store
    state_dir: Path  # the stage logs, run configs, status and scratch of this run
    launcher: StageLauncher
    outputs: dict[str, Output] = field(default_factory=dict)
    looked_up: set[str] = field(default_factory=set)
    jobs: list[JobState] = field(default_factory=list)
    job_times: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # job name → (start, end)
    refs: dict[str, StageRef] = field(default_factory=dict)
    manifests: dict[str, Manifest] = field(default_factory=dict)  # by stage, outputs found for the current keys
    durations: dict[str, float] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    status_created: str = field(default_factory=utc_now)
    sources: Sources | None = None
    notices: RunNotices | None = None  # spec.notify's webhooks
    # Big files' sha256 by their stat: loaded once per invocation, saved after each use.
    digests: DigestCache = field(default_factory=lambda: DigestCache(STATE_DIR.resolve() / DIGEST_CACHE))

    def observed(self) -> Observed:
        return Observed(dict(self.outputs), frozenset(self.looked_up), tuple(self.jobs), self.sources)

    @property
    def workdir(self) -> Path:
        """The stages' scratch (KUBETUNE_WORKDIR): each stage works in a folder of its own under it."""
        return self.state_dir / "work"


def run_locally(path: Path, *, store: str | None = None, from_stage: str | None = None,
                to_stage: str | None = None) -> int:
    runs = load_runs(path, relative_paths=True)  # InvalidManifest: the CLI reports it as one line, exit 2
    try:  # every webhook URL is found before anything runs
        notices = [RunNotices.of(run) for run in runs]
    except NotifyConfigError as error:
        print(f"kubetune: {path}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    for run, notice in zip(runs, notices, strict=True):
        local = _prepare(run, store)
        local.notices = notice
        try:
            code = _execute(local, from_stage, to_stage)
        finally:
            local.launcher.close()
            if notice is not None:
                notice.close()  # waits a bounded time for what is still being sent
        if code != 0:
            return code
    return 0


def _prepare(run: FineTuneRun, store: str | None) -> LocalRun:
    default_store = (STATE_DIR / "store").resolve()
    uri = store or run.spec.storage.uri or str(default_store)
    if "://" not in uri:
        uri = str(Path(uri).resolve())
    config = StoreConfig.from_spec(run.spec.storage, uri)
    config = StoreConfig(uri=uri, endpoint=config.endpoint, region=config.region, path_style=config.path_style)
    opened = open_store(uri, endpoint=config.endpoint, region=config.region, path_style=config.path_style)
    if isinstance(opened, LocalStore):
        opened.check_writable()
    state_dir = (STATE_DIR / "runs" / run.namespace / run.name).resolve()
    check_run_folder(STATE_DIR / "runs" / run.namespace / run.name, STATE_DIR)  # before anything is made or written
    state_dir.mkdir(parents=True, exist_ok=True)  # after the store opened: a bad URI leaves nothing behind
    return LocalRun(run, config, opened, state_dir, StageLauncher(state_dir))


def _execute(local: LocalRun, from_stage: str | None, to_stage: str | None = None) -> int:
    run = local.run
    forced = set(STAGES[STAGES.index(from_stage):]) if from_stage else set()
    last = STAGES.index(to_stage) if to_stage else len(STAGES) - 1
    view = ProgressView(run.name, sys.stderr)
    print(f"kubetune: running FineTuneRun {run.namespace}/{run.name} (store: {local.store_config.uri})", file=sys.stderr)
    while True:
        step = plan(run.namespace, run.name, run.spec, local.observed())
        action = step.action
        if isinstance(action, Resolve):
            try:
                local.sources = _resolve(local)
            except SourceError as error:
                print(f"kubetune: {run.namespace}/{run.name}: {error}", file=sys.stderr)
                return EXIT_CONFIG
        elif isinstance(action, Lookup):
            local.refs[action.stage] = action.ref
            if action.stage not in forced and not _look_up(local, action.ref, action.stage):
                forced.add(action.stage)  # a damaged output is built afresh, as --from-stage would
            local.looked_up.add(action.ref.key)
        elif isinstance(action, CreateJob):
            if STAGES.index(action.stage) > last:
                record_status(local, step)  # `kubetune status` shows what ran and what was reused
                print(f"kubetune: stopped after the {to_stage} stage (--to-stage); run without it to go on.",
                      file=sys.stderr)
                return 0
            local.refs[action.stage] = action.ref
            record_status(local, step)
            if action.stage in forced:
                local.store.delete_prefix(action.ref.prefix)  # start the stage afresh, checkpoints included
                forced.discard(action.stage)
            if local.notices is not None:
                local.notices.stage_starting(action.stage, local.status, utc_now())
            # The imports of the stages to come start beside this one.
            local.launcher.warm_up(STAGES[STAGES.index(action.stage): last + 1], _stage_env(local))
            code = _run_stage(local, action, view, step)
            if code == EXIT_STOPPED:
                print("kubetune: stopped; run the same command again to resume.", file=sys.stderr)
                return 130
        elif isinstance(action, Done):
            record_status(local, step)
            view.final(step, local.durations)
            _print_summary(local)
            return 0
        elif isinstance(action, Fail):
            record_status(local, step)
            if _bad_input(local, action.stage):
                # The stage's one line, printed as it ended, names the file or field: bad input, nothing to retry.
                return EXIT_CONFIG
            view.final(step, local.durations)
            print(f"kubetune: stage {action.stage} failed: {action.reason}", file=sys.stderr)
            print(f"kubetune: earlier stages' outputs are kept in {local.store_config.uri}; logs: {local.state_dir}",
                  file=sys.stderr)
            return 1
        elif isinstance(action, Idle):
            record_status(local, step)
            print(f"kubetune: {run.name} is suspended (spec.suspend: true); nothing to do.", file=sys.stderr)
            return 0
        else:  # Wait / SuspendJob / ResumeJob need a cluster; local jobs run to completion one at a time.
            raise TypeError(f"unexpected action for the local executor: {action}")


def _bad_input(local: LocalRun, stage: str) -> bool:
    """Whether the stage's last job ended with the jobs' exit code for bad input (a config error)."""
    last = next((job for job in reversed(local.jobs) if job.stage == stage), None)
    return last is not None and last.config_error


def _resolve(local: LocalRun) -> Sources:
    """Every invocation resolves afresh: a local tree or model can change between two runs of the same manifest."""
    config = local.store_config
    try:
        return resolve_sources(
            local.run.spec,
            store_factory=lambda uri: open_store(uri, endpoint=config.endpoint, region=config.region,
                                                 path_style=config.path_style),
            cache=local.digests, hub_cache=default_cache_dir() / "hf",
        )
    finally:
        local.digests.save()


def _look_up(local: LocalRun, ref: StageRef, stage: str, *, just_published: bool = False) -> bool:
    """Record the stage's published output for its key, if there is one; False when one is there but damaged (a
    manifest that is no manifest, a file it lists missing or changed): never reused, the stage runs again."""
    try:
        manifest = read_manifest(local.store, ref.prefix)
        problem = None
        if manifest is not None and manifest.input_key == ref.key and not just_published:
            problem = output_problem(local.store, ref.prefix, manifest, local.digests.sha256)
            local.digests.save()
    except (ManifestError, NotAnObjectError) as error:
        problem = str(error)
    if problem is not None:
        print(f"kubetune: {problem}; building the {stage} stage's output again", file=sys.stderr)
        return False
    if manifest is not None and manifest.input_key == ref.key:
        local.outputs[ref.key] = Output(ref.key, content_digest(manifest))
        local.manifests[manifest.stage] = manifest
    return True


def record_status(local: LocalRun, step: Plan) -> None:
    """Write the run's status as the operator would put it on the resource (read by `kubetune status`)."""
    training = None
    train = local.refs.get("train")
    if train is not None:
        try:
            training = json.loads(local.store.get_bytes(f"{train.prefix}/progress.json"))
        except Exception:  # noqa: BLE001 - no progress yet
            training = None
    jobs = {j.name: ObservedJob(j, *local.job_times.get(j.name, (None, None))) for j in local.jobs}
    manifests = {stage: m for stage, m in local.manifests.items()
                 if stage in local.refs and m.input_key == local.refs[stage].key}
    update = compute_status(StatusInputs(
        spec=local.run.spec, generation=max(local.run.generation, 1), plan=step, now=utc_now(),
        store_uri=local.store_config.uri, jobs=jobs, manifests=manifests, training=training, previous=local.status,
        sources=local.sources,
    ))
    local.status = update.status
    if local.notices is not None:
        local.notices.transitions(update.transitions, update.status, utc_now(), lambda: _gate_failure(local))
    if update.transitions:  # what the operator posts as Events: kept for `kubetune ui`
        append_lines(local.state_dir / "events.jsonl",
                     [json.dumps({"lastTimestamp": utc_now(), "type": t.type, "reason": t.reason,
                                  "message": t.message}) + "\n" for t in update.transitions])
    document = {**local.run.manifest(), "status": update.status}
    document["metadata"]["creationTimestamp"] = local.status_created
    write_state_file(local.state_dir / "status.json", json.dumps(document, indent=2) + "\n")


def _gate_failure(local: LocalRun) -> GateFailure | None:
    evaluate = local.refs.get("evaluate")
    prompts = local.run.spec.to_manifest()["evaluate"]["prompts"]
    return read_gate_failure(local.store, evaluate.prefix, prompts) if evaluate is not None else None


def _run_stage(local: LocalRun, action: CreateJob, view: ProgressView, step: object) -> int:
    stage = action.stage
    if importlib.util.find_spec(f"kubetune.jobs.{stage}") is None:
        raise SystemExit(f"kubetune: the {stage} stage is not built yet in this version of kubetune; "
                         f"stages before it completed and are kept in {local.store_config.uri}.")
    config = RunConfig(
        name=local.run.name,
        namespace=local.run.namespace,
        uid=local.run.uid,
        spec=local.run.spec,
        store=local.store_config,
        stages={s: local.refs[s] for s in STAGES[: STAGES.index(stage) + 1] if s in local.refs},
        sources=local.sources,
    )
    run_json = local.state_dir / f"{stage}.run.json"
    write_state_file(run_json, config.dumps())
    log_path = local.state_dir / f"{stage}.log"
    started = time.monotonic()
    local.job_times[action.name] = (utc_now(), None)
    with _sigterm_raises():
        process = local.launcher.start(stage, run_json, _stage_env(local), log_path)
        try:
            while not _ended(process, PROGRESS_SECONDS):
                view.update(stage, local.store, action.ref.prefix)
        except (KeyboardInterrupt, _Terminated) as stop:
            # Ctrl-C reached the job too (one process group); a SIGTERM (`kill`, `timeout`, a CI cancel) reached only
            # us: pass it on, or the stage would go on running, orphaned. Either way it saves its state and exits.
            if isinstance(stop, _Terminated):
                process.send_signal(signal.SIGTERM)
            print("\nkubetune: stopping; letting the stage save its state…", file=sys.stderr)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            return EXIT_STOPPED
    local.durations[stage] = local.durations.get(stage, 0.0) + time.monotonic() - started
    local.job_times[action.name] = (local.job_times[action.name][0], utc_now())
    code = process.returncode
    view.update(stage, local.store, action.ref.prefix, done=True)
    reason = _last_reason(log_path)
    phase: JobPhase = "Succeeded" if code == 0 else "Failed"
    local.jobs.append(JobState(action.name, stage, action.ref.key, action.attempt, phase,
                               config_error=code == EXIT_CONFIG, message=reason))
    if code == 0:
        _look_up(local, action.ref, stage, just_published=True)
        local.looked_up.add(action.ref.key)
        # Its outputs are in the store now; a failed or stopped stage's scratch stays for a look.
        shutil.rmtree(local.workdir / stage, ignore_errors=True)
    elif code != EXIT_STOPPED:
        print(f"kubetune: {stage} exited with {code}: {reason} (log: {log_path})", file=sys.stderr)
    return code


def _stage_env(local: LocalRun) -> dict[str, str]:
    env = dict(os.environ, KUBETUNE_WORKDIR=str(local.workdir), PYTHONUNBUFFERED="1")
    env.pop("KUBETUNE_TERMINATION_LOG", None)  # a pod's file: a local stage must never write the host's
    return env


def _ended(process: StageProcess, timeout: float) -> bool:
    """Waits up to `timeout` for the stage to end (returning as soon as it does)."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _last_reason(log_path: Path) -> str:
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in reversed(lines):
        if line.startswith("kubetune-job: "):
            return line.split(": ", 2)[-1]
    return lines[-1] if lines else ""


def _print_summary(local: LocalRun) -> None:
    out = sys.stdout
    print(f"\nFineTuneRun {local.run.namespace}/{local.run.name}: Succeeded", file=out)
    for stage in STAGES:
        ref = local.refs.get(stage)
        if ref is None:
            continue
        manifest = read_manifest(local.store, ref.prefix)
        if manifest is None:
            continue
        took = local.durations.get(stage)
        timing = f"{took:7.1f}s" if took is not None else " cached "
        print(f"  {stage:<9} {timing}  {local.store.uri_for(ref.prefix)}", file=out)
        if stage in ("convert", "train"):
            for entry in manifest.files:
                if entry.path.endswith((".gguf", "loss.png")):
                    print(f"      {entry.path}  {format_size(entry.size):>9}  sha256:{entry.sha256[:16]}…", file=out)
        if stage == "evaluate" and manifest.metadata:
            print(f"      {manifest.metadata.get('summary', '')}", file=out)
        if stage == "publish" and "oci" in manifest.metadata:
            print(f"      pushed {manifest.metadata['oci']['reference']}@{manifest.metadata['oci']['digest']}", file=out)


class _Terminated(Exception):
    """SIGTERM arrived while a stage ran."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises _Terminated (in the main thread: elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, previous)  # a second SIGTERM ends kubetune at once
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
