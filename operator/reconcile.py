"""One reconcile of a FineTuneRun: observe (its Jobs, the store) → plan → act → status, events, metrics.

The loop is the local executor's (kubetune/local.py) with Kubernetes Jobs: it runs the planner until the plan
asks to wait, doing lookups, creating at most one Job per stage and suspending or resuming Jobs on the way, then
writes the status once, and only if it changed. Reconciles of one run never overlap; requests that arrive while
one runs are folded into one more pass. The run and its Jobs come from the watch-fed cache (cache.py) where it can
be trusted, else from the API server. Beside it: what a pass reads from the store (store_reads.py), how it writes
its outcome (status_write.py), and which watch events ask for a pass (watch_events.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetune.api.types import STAGES, FineTuneRunSpec
from kubetune.api.validate import FineTuneRun, InvalidManifest, parse_run
from kubetune.operator import labels
from kubetune.operator.cache import ObjectCache, run_key, version_number
from kubetune.operator.events import EventRecorder
from kubetune.operator.gate import PriorityGate
from kubetune.operator.jobspec import JobSpecError, build, config_map_name, effective_resources
from kubetune.operator.kube import ApiError, KubeApi, Obj
from kubetune.operator.metrics import Metrics
from kubetune.operator.notify import Notifier
from kubetune.operator.observe import ObservedJob, observe_jobs
from kubetune.operator.problems import REPLACE_SUPERSEDED, Problem, pod_problem, store_problem, superseded_problem
from kubetune.operator.runstore import NoStoreConfigured, resolve_store
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.status import StatusInputs, Transition, failed_plan
from kubetune.operator.status_write import StatusWriter
from kubetune.operator.store_reads import STORE_ERRORS, StoreReads
from kubetune.operator.watch_events import WatchEvents
from kubetune.planner import (
    CreateJob,
    Fail,
    JobState,
    Lookup,
    Observed,
    Output,
    Plan,
    ResumeJob,
    StageView,
    SuspendJob,
    Wait,
    plan,
)
from kubetune.runconfig import StoreConfig
from kubetune.sources import SOURCES, Sources
from kubetune.stages import REFRESH_ANNOTATION, StageRef, resolution_ref
from kubetune.store import (
    Manifest,
    Store,
    StoreError,
    content_digest,
)

log = logging.getLogger("kubetune.operator")

# Lookups and one action per stage, with room to spare; a plan that never settles is a bug, not a reason to spin.
MAX_STEPS = 4 * len(STAGES) + 4
SETTLED_PHASES = ("Succeeded", "Failed")


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_settled(status: Mapping[str, Any] | None, generation: int) -> bool:
    """Finished for this spec: nothing to do until the spec changes."""
    status = status or {}
    return status.get("phase") in SETTLED_PHASES and status.get("observedGeneration") == generation


# A run that no Job event has touched is still reconciled every RESYNC_FACTOR timer intervals.
RESYNC_FACTOR = 10
# Reconciles that make API calls at once; the others wait, urgent ones first (gate.py).
RECONCILES_IN_FLIGHT = 16
# A stage Job's pods normally run within seconds; after this long without them, its Events and pods say why.
POD_START_GRACE_S = 5.0
# Replacing Jobs of a previous spec in one pass, at most (each spec edit while a stage ran left one).
MAX_REPLACEMENTS = 4


@dataclass
class _Serial:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    again: bool = False
    urgent: bool = False
    fresh: bool = False


@dataclass
class _Pass:
    """What one reconcile has observed and done so far."""

    jobs: list[JobState]
    outputs: dict[str, Output] = field(default_factory=dict)
    looked_up: set[str] = field(default_factory=set)
    manifests: dict[str, Manifest] = field(default_factory=dict)
    notes: list[Transition] = field(default_factory=list)  # actions taken, posted as Events
    wrote: bool = False  # created, suspended or resumed a Job, or patched the status
    resolve: StageRef | None = None  # where the sources Job keeps what it resolved
    sources: Sources | None = None  # ... once found there

    def observed(self) -> Observed:
        return Observed(dict(self.outputs), frozenset(self.looked_up), tuple(self.jobs), self.sources, self.resolve)

    def set_phase(self, job_name: str, phase: Any) -> None:
        self.jobs = [replace(j, phase=phase) if j.name == job_name else j for j in self.jobs]


@dataclass(frozen=True)
class _QuietPass:
    """What a reconcile that changed nothing while the train stage ran was given: the run's and its Jobs'
    resourceVersions, and the stage's progress.json (its store and key). Given the same again, a pass changes nothing
    again: the status is a function of these, the spec and the stage outputs, and the stage's output is published
    before its progress.json says Succeeded (the job contract), so a new output comes with a new progress.json."""

    versions: tuple[Any, ...]
    store: Store
    progress_key: str
    progress: dict[str, Any] | None


def _versions(run: Obj, jobs: list[Obj]) -> tuple[Any, ...]:
    return (run["metadata"].get("resourceVersion"),
            tuple(sorted((job["metadata"]["name"], job["metadata"].get("resourceVersion")) for job in jobs)))


class Reconciler:
    def __init__(self, settings: OperatorSettings, kube: KubeApi, metrics: Metrics, *,
                 clock: Callable[[], str] = utc_now) -> None:
        self.settings = settings
        self.kube = kube
        self.metrics = metrics
        self.clock = clock
        self.events = EventRecorder(kube)
        self.notifier = Notifier(kube, metrics, settings, clock)
        self.cache = ObjectCache()
        self.watch_events = WatchEvents(self.cache)
        self.status_writer = StatusWriter(kube, self.cache, metrics, self.events, self.notifier, clock)
        self._gate = PriorityGate(RECONCILES_IN_FLIGHT)
        self.store_reads = StoreReads()
        self._serial: dict[tuple[str, str], _Serial] = {}
        self._reconciled_at: dict[tuple[str, str], float] = {}  # monotonic time of each run's last reconcile
        self._read_at: dict[tuple[str, str], float] = {}  # ... and of its last read from the API server
        self._quiet: dict[tuple[str, str], _QuietPass] = {}  # run -> its last reconcile, if that changed nothing
        # Monotonic times: reconcile the run by then at the latest (a pod check, a grace period ending) ...
        self._due_at: dict[tuple[str, str], float] = {}
        # ... and not before (a store that failed: retried with a growing delay).
        self._retry_at: dict[tuple[str, str], float] = {}
        self._store_trouble: dict[tuple[str, str], tuple[str, int]] = {}  # run -> (reason, failed reconciles)
        self._pod_checks: dict[tuple[str, str], int] = {}  # run -> pod checks of its starting stage Job so far
        self._background: set[asyncio.Task[None]] = set()  # request_soon's (asyncio keeps only weak references)
        # Each run's parsed spec (or why it is invalid) for its uid and generation: the spec of a generation never
        # changes, and validating it (types and CEL rules) cost half the operator's time under load.
        self._parsed: dict[tuple[str, str], tuple[tuple[Any, ...], FineTuneRun | InvalidManifest]] = {}

    async def request(self, namespace: str, name: str, *, urgent: bool = False, fresh: bool = False) -> None:
        """Reconcile now, or once more right after the reconcile of this run that is running. `urgent` (a stage
        Job changed phase) goes ahead of the others waiting for a place among the reconciles in flight; `fresh`
        reads the run and its Jobs from the API server, not from the cache."""
        key = (namespace, name)
        serial = self._serial.setdefault(key, _Serial())
        serial.again = True
        serial.urgent = serial.urgent or urgent
        serial.fresh = serial.fresh or fresh
        if serial.lock.locked():
            if urgent:
                self._gate.hurry(key)  # its pass may be waiting for a place in the normal line
            return
        phase: str | None = None
        async with serial.lock:
            while serial.again:
                serial.again = False
                async with self._gate.slot(urgent=serial.urgent, key=key):
                    serial.urgent = False
                    if serial.fresh:
                        serial.fresh = False
                        self.cache.distrust(key)
                    try:
                        phase = await self.reconcile(namespace, name)
                    except BaseException:
                        self.cache.distrust(key)  # what this pass wrote may or may not have happened
                        self._reconciled_at.pop(key, None)  # the timer's next tick tries again
                        self._quiet.pop(key, None)
                        raise
                self._reconciled_at[key] = time.monotonic()
                self.metrics.reconciles.labels("ok").inc()
        if phase is None or phase in SETTLED_PHASES:
            self.cache.forget(key)  # nothing to do until the spec changes, and that is read for real
        if phase is None and not serial.again:
            self._serial.pop(key, None)  # the run is gone
            self._reconciled_at.pop(key, None)
            self._read_at.pop(key, None)
            self._parsed.pop(key, None)
            self.watch_events.forget_run(key)
            self._quiet.pop(key, None)
            self._due_at.pop(key, None)
            self._retry_at.pop(key, None)
            self._store_trouble.pop(key, None)
            self._pod_checks.pop(key, None)
            self.metrics.run_stalled(namespace, name, None)
            self.metrics.run_progress(namespace, name, None)

    async def request_logged(self, namespace: str, name: str, *, urgent: bool = False, fresh: bool = False) -> None:
        """`request` for the handlers and the timer, which have no one to raise to (kopf retries no event handler): a
        failure is counted and logged, and the timer tries again at its next tick (a failed reconcile leaves its run
        due)."""
        try:
            await self.request(namespace, name, urgent=urgent, fresh=fresh)
        except Exception as error:
            self.metrics.reconciles.labels("error").inc()
            log.warning("reconcile of %s/%s failed, the timer tries again: %s", namespace, name, error,
                        exc_info=not isinstance(error, (ApiError, StoreError, OSError)))

    def request_soon(self, namespace: str, name: str) -> None:
        """`request_logged` in the background: the caller goes on at once."""
        task = asyncio.create_task(self.request_logged(namespace, name))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def timer_due(self, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Whether the timer should reconcile an active run now.

        Job events drive stage hand-offs; the timer is there to mirror training progress from the store, which
        only a running train stage has, and as a slower safety net against missed events. Reconciling every active
        run at the timer's pace would, with hundreds of runs, bury the event-driven reconciles in a queue. Nor is a
        run due while a reconcile of it waits or runs: that pass reads what the tick would.
        """
        key = (namespace, name)
        serial = self._serial.get(key)
        if serial is not None and serial.lock.locked():
            return False
        now = time.monotonic()
        if now < self._retry_at.get(key, now):
            return False
        if now >= self._due_at.get(key, now + 1):
            return True
        if status.get("currentStage") == "train" and status.get("phase") == "Running":
            return True
        last = self._reconciled_at.get((namespace, name))
        return last is None or time.monotonic() - last >= RESYNC_FACTOR * self.settings.reconcile_interval

    def resync_due(self, namespace: str, name: str) -> bool:
        """Whether the timer's reconcile reads the run and its Jobs from the API server: the cache has served them
        for RESYNC_FACTOR to twice as many timer intervals. That bounds what a missed event can hide (a Job deleted
        while the Job watch was down, when no relist event of the run's other Jobs said so). Each run has its own
        period in that range (from its name): runs created together would otherwise all be read again together, a
        burst of LISTs on the API server."""
        read = self._read_at.get((namespace, name))
        spread = 1 + zlib.crc32(f"{namespace}/{name}".encode()) / 2**32
        return read is None or time.monotonic() - read >= RESYNC_FACTOR * self.settings.reconcile_interval * spread

    async def unchanged_since_last_pass(self, namespace: str, name: str) -> bool:
        """Whether a reconcile now would be given what the run's last one was given, when that one changed nothing
        while its train stage ran: the same run and Jobs in the cache, the same progress.json. Then it would change
        nothing either, and the timer's pass costs one read of the store instead of a reconcile (with hundreds of
        runs, passes of running train stages were half of all reconciles, nearly all of them finding nothing new).
        The timer's resync passes (every RESYNC_FACTOR to twice as many intervals) stay whole: they are
        the safety net for what no event says (an output published while its Job's events were lost)."""
        quiet = self._quiet.get((namespace, name))
        cached = self.cache.view((namespace, name))
        if quiet is None or cached is None or _versions(*cached) != quiet.versions:
            return False
        try:
            return await self.store_reads.json(quiet.store, quiet.progress_key) == quiet.progress
        except (StoreError, OSError):
            return False  # the reconcile will meet it and say so

    def run_event_matters(self, event_type: str | None, run: Mapping[str, Any]) -> bool:
        """watch_events.py: `WatchEvents.run_event_matters`; a run adopted into the cache counts as read."""
        matters, adopted = self.watch_events.run_event_matters(event_type, run)
        if adopted:
            self._read_at[run_key(run)] = time.monotonic()  # as good as a read: the timer's resync counts from here
        return matters

    def job_event_matters(self, event_type: str | None, job: Mapping[str, Any]) -> bool:
        return self.watch_events.job_event_matters(event_type, job)

    def known_runs(self) -> int:
        return len(self._serial)

    async def reconcile(self, namespace: str, name: str) -> str | None:
        """Returns the run's phase (None once the run is gone)."""
        body, jobs = await self._read(namespace, name)
        self._quiet.pop((namespace, name), None)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.metrics.run_phase(namespace, name, None)
            self.metrics.run_progress(namespace, name, None)
            return None
        generation = int(body["metadata"].get("generation") or 0)
        previous: dict[str, Any] = body.get("status") or {}
        self.notifier.take_up(body)  # what an earlier pass or operator recorded and did not send
        if is_settled(previous, generation) and _refresh(body) == ((previous.get("sources") or {}).get("refresh") or ""):
            self.metrics.run_phase(namespace, name, previous["phase"])
            self.metrics.run_progress(namespace, name, previous.get("progress"))
            return str(previous["phase"])
        run = self._parse(namespace, name, body)
        if isinstance(run, InvalidManifest):
            return await self._write(body, _invalid_spec_plan(str(run)), _Pass([]), None, "", previous)
        try:
            store_config = resolve_store(run.spec.storage, self.settings)
        except NoStoreConfigured as error:
            first = plan(namespace, name, run.spec, Observed())
            return await self._write(body, failed_plan(first, "dataset", str(error)), _Pass([]), run, "", previous)
        key = (namespace, name)
        self._due_at.pop(key, None)
        self._retry_at.pop(key, None)
        try:
            store = self.store_reads.clients.get(store_config)
            observed_jobs = observe_jobs(jobs, await self.store_reads.failure_reports(store, jobs))
            state = _Pass([job.state for job in observed_jobs], resolve=self._resolution(run, body))
            step = await self._advance(run, store, state)
            step, problem = await self._unblock(run, body, jobs, observed_jobs, store, state, step)
            progress_key = _progress_key(step, previous)
            training = None if progress_key is None else await self.store_reads.json(store, progress_key)
        except STORE_ERRORS as error:
            return await self._store_unavailable(body, store_config, previous, error)
        self._store_answers(key, store_config.uri)
        phase = await self._write(body, step, state, run, store_config.uri, previous, training=training,
                                  times={job.state.name: job for job in observed_jobs}, problem=problem)
        if not state.wrote and progress_key is not None and problem is None and key not in self._due_at:
            self._quiet[key] = _QuietPass(_versions(body, jobs), store, progress_key, training)
        return phase

    async def _read(self, namespace: str, name: str) -> tuple[Obj | None, list[Obj]]:
        """The run and its Jobs: from the cache where it can be trusted (cache.py), else from the API server."""
        key = (namespace, name)
        cached = self.cache.view(key)
        if cached is not None:
            return cached
        self.cache.track(key)
        self._read_at[key] = time.monotonic()
        # Read together: each read is a round trip, and a pass is on a hand-off's path.
        body, (jobs, listed_at) = await asyncio.gather(self.kube.get_run(namespace, name),
                                                       self.kube.list_jobs(namespace, name))
        self.cache.fill(key, body, jobs, version_number(listed_at))
        return body, jobs

    def _parse(self, namespace: str, name: str, body: Obj) -> FineTuneRun | InvalidManifest:
        meta = body["metadata"]
        # Labels change without a new generation, and the parsed run carries them.
        version = (str(meta.get("uid", "")), int(meta.get("generation") or 0),
                   tuple(sorted((meta.get("labels") or {}).items())))
        cached = self._parsed.get((namespace, name))
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            parsed: FineTuneRun | InvalidManifest = parse_run(body)
        except InvalidManifest as error:
            parsed = error
        self._parsed[(namespace, name)] = (version, parsed)
        return parsed

    async def delete_artifacts(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """The finalizer's work for runs with storage.keepOnDelete: false."""
        run = parse_run({"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneRun",
                         "metadata": {"name": name, "namespace": namespace}, "spec": spec})
        store = self.store_reads.clients.get(resolve_store(run.spec.storage, self.settings))
        await asyncio.to_thread(store.delete_prefix, f"{namespace}/{name}")

    # --- observe → plan → act ---------------------------------------------------------------------------------

    async def _advance(self, run: FineTuneRun, store: Store, state: _Pass) -> Plan:
        for _ in range(MAX_STEPS):
            step = plan(run.namespace, run.name, run.spec, state.observed())
            action = step.action
            if isinstance(action, Lookup) and action.stage == SOURCES:
                state.sources = await self.store_reads.sources(store, action.ref)
                state.looked_up.add(action.ref.key)
            elif isinstance(action, Lookup):
                manifest = await self.store_reads.manifest(store, action.ref)
                if manifest is not None:
                    state.outputs[action.ref.key] = Output(action.ref.key, content_digest(manifest))
                    state.manifests[action.stage] = manifest
                state.looked_up.add(action.ref.key)
            elif isinstance(action, CreateJob):
                upstream = {stage: view.ref for stage, view in step.stages.items() if view.ref is not None}
                try:
                    await self._create(run, action, upstream, state)
                except (JobSpecError, NoStoreConfigured) as error:
                    return failed_plan(step, action.stage, str(error))
            elif isinstance(action, SuspendJob):
                state.wrote = True
                self.cache.observe_job("MODIFIED", await self.kube.patch_job(run.namespace, action.job, {
                    "metadata": {"annotations": {labels.SUSPENDED: "true"}}, "spec": {"suspend": True}}))
                state.set_phase(action.job, "Suspended")
                state.notes.append(Transition("Normal", "JobSuspended", f"{action.stage}: suspended Job {action.job}",
                                              action.stage))
            elif isinstance(action, ResumeJob):
                # A Kueue-managed Job goes back to its queue: Kueue suspends it again until it is admitted.
                state.wrote = True
                self.cache.observe_job("MODIFIED", await self.kube.patch_job(run.namespace, action.job, {
                    "metadata": {"annotations": {labels.SUSPENDED: None}}, "spec": {"suspend": False}}))
                state.set_phase(action.job, "Running")
                state.notes.append(Transition("Normal", "JobResumed", f"{action.stage}: resumed Job {action.job}",
                                              action.stage))
            else:
                return step
        raise RuntimeError(f"the plan for {run.namespace}/{run.name} did not settle in {MAX_STEPS} steps")

    async def _create(self, run: FineTuneRun, action: CreateJob, upstream: dict[str, StageRef], state: _Pass) -> None:
        objects = build(run, action, self.settings, upstream, state.sources)
        state.wrote = True
        try:
            # The Job comes last: its ConfigMap (and rendezvous Service) exist before its pods start.
            created = [await self.kube.create(obj) for obj in objects][-1]
        except ApiError as error:
            if error.status not in (400, 422):
                raise  # may pass: the next reconcile creates what is missing (names are deterministic)
            # The server will refuse this spec every time: nothing of the attempt is left behind.
            for obj in objects[:-1]:
                await self.kube.delete(obj["apiVersion"], obj["kind"], run.namespace, obj["metadata"]["name"])
            raise JobSpecError(f"the API server refused the stage's objects: {error.message}") from error
        job = objects[-1]
        queued = bool(job["spec"].get("suspend"))
        state.jobs.append(JobState(action.name, action.stage, action.ref.key, action.attempt,
                                   "Queued" if queued else "Running"))
        if created is None:
            # It existed though the cache did not know it: read for real, once more, so its state is not missed.
            self.cache.distrust((run.namespace, run.name))
            self._serial.setdefault((run.namespace, run.name), _Serial()).again = True
        else:
            self.cache.observe_job("ADDED", created)
            self.job_event_matters("ADDED", created)  # this pass has seen the new Job: its ADDED event is no news
            self.metrics.job_created(action.stage, action.attempt)
            retry = f", attempt {action.attempt}" if action.attempt > 1 else ""
            state.notes.append(Transition("Normal", "JobCreated", f"{action.stage}: created Job {action.name}{retry}",
                                          action.stage))

    def _resolution(self, run: FineTuneRun, body: Obj) -> StageRef:
        image = effective_resources(run.spec.resources, SOURCES).image or self.settings.job_image
        return resolution_ref(run.namespace, run.name, run.spec, uid=run.uid, image=image, refresh=_refresh(body))

    # --- status and events ------------------------------------------------------------------------------------

    async def _write(
        self, body: Obj, step: Plan, state: _Pass, run: FineTuneRun | None, store_uri: str,
        previous: dict[str, Any], *, training: dict[str, Any] | None = None, times: dict[str, Any] | None = None,
        problem: Problem | None = None,
    ) -> str:
        spec = run.spec if run is not None else FineTuneRunSpec()
        inputs = StatusInputs(
            spec=spec, generation=int(body["metadata"].get("generation") or 0), plan=step, now=self.clock(),
            store_uri=store_uri, jobs=times or {}, manifests=state.manifests, training=training, previous=previous,
            problem=problem, sources=state.sources, refresh=_refresh(body),
        )
        phase, patched = await self.status_writer.write(body, inputs, spec.notify if run is not None else None, state.notes)
        state.wrote = state.wrote or patched
        return phase

    # --- what holds a run up ------------------------------------------------------------------------------------

    async def _store_unavailable(self, body: Obj, config: StoreConfig, previous: dict[str, Any],
                                 error: BaseException) -> str:
        """The store cannot be read: say so on the run (once, not per retry) and try again later, each time
        waiting twice as long, up to the timer's resync period. One log line when it starts, none per retry."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        problem = store_problem(error, config.uri)
        self.store_reads.clients.drop(config)  # a fresh client next time: it reads credentials (mounted, rotated) again
        reason, failures = self._store_trouble.get(key, ("", 0))
        cap = RESYNC_FACTOR * self.settings.reconcile_interval
        if reason != problem.reason:
            log.warning("%s/%s: %s (retrying every %.0f s at most)", *key, problem.message, cap)
        self._store_trouble[key] = (problem.reason, failures + 1)
        self._retry_at[key] = time.monotonic() + min(cap, self.settings.reconcile_interval * 2 ** failures)
        self.metrics.store_errors.labels(problem.reason).inc()
        return await self.status_writer.write_store_problem(body, previous, problem)

    def _store_answers(self, key: tuple[str, str], store_uri: str) -> None:
        trouble = self._store_trouble.pop(key, None)
        if trouble is not None:
            log.info("%s/%s: the store %s answers again after %d failed reconciles", *key, store_uri, trouble[1])

    async def _unblock(self, run: FineTuneRun, body: Obj, jobs: list[Obj], observed_jobs: list[ObservedJob],
                       store: Store, state: _Pass, step: Plan) -> tuple[Plan, Problem | None]:
        """What holds up the stage the plan waits for, if anything: a Job of the previous spec (replaced after the
        grace period, or at once on the run's annotation; then the plan goes on) or pods that cannot start."""
        key = (run.namespace, run.name)
        for _ in range(MAX_REPLACEMENTS):
            action = step.action
            view = None
            if isinstance(action, Wait):
                view = step.sources if action.stage == SOURCES else step.stages.get(action.stage)
            if view is None or view.job is None or view.ref is None:
                break
            if view.job.key == view.ref.key:
                observed = next((j for j in observed_jobs if j.state.name == view.job.name), None)
                if observed is not None and observed.starting:
                    return step, await self._pods_problem(run, view.job.stage, observed)
                break
            if run.spec.suspend:
                break  # a suspended run waits on purpose: its old Job is suspended, not in the way
            raw = next((job for job in jobs if job["metadata"]["name"] == view.job.name), None)
            problem = await self._supersede(run, body, raw, view.job, state)
            if problem is not None:
                return step, problem
            step = await self._advance(run, store, state)
        self._pod_checks.pop(key, None)
        return step, None

    async def _supersede(self, run: FineTuneRun, body: Obj, raw: Obj | None, job: JobState,
                         state: _Pass) -> Problem | None:
        """A Job of the previous spec still holds its stage: replace it once the grace period (counted from when a
        reconcile first saw it superseded, kept on the Job) is over or the run asks for it; else say when."""
        key = (run.namespace, run.name)
        asked = (body["metadata"].get("annotations") or {}).get(REPLACE_SUPERSEDED) == "true"
        now_text = self.clock()
        since = ((raw or {}).get("metadata", {}).get("annotations") or {}).get(labels.SUPERSEDED_AT)
        if since is None and not asked:
            state.wrote = True
            self.cache.observe_job("MODIFIED", await self.kube.patch_job(
                run.namespace, job.name, {"metadata": {"annotations": {labels.SUPERSEDED_AT: now_text}}}))
            since = now_text
        now = datetime.fromisoformat(now_text)
        try:
            deadline = datetime.fromisoformat(since or now_text) + timedelta(seconds=self.settings.superseded_job_grace)
        except ValueError:  # edited by hand: count from now
            deadline = now + timedelta(seconds=self.settings.superseded_job_grace)
        if not asked and now < deadline:
            self._due_at[key] = time.monotonic() + (deadline - now).total_seconds()
            return superseded_problem(job.stage, job.name, job.phase, deadline.strftime("%Y-%m-%dT%H:%M:%SZ"))
        trigger = "annotation" if asked else "grace"
        await self.kube.delete("batch/v1", "Job", run.namespace, job.name)
        await self.kube.delete("v1", "ConfigMap", run.namespace, config_map_name(job.name))
        subdomain = ((((raw or {}).get("spec") or {}).get("template") or {}).get("spec") or {}).get("subdomain")
        if subdomain:  # the rendezvous Service of a multi-node train Job
            await self.kube.delete("v1", "Service", run.namespace, subdomain)
        state.wrote = True
        state.jobs = [j for j in state.jobs if j.name != job.name]
        self.cache.distrust(key)  # the next pass reads the Jobs for real
        self.metrics.superseded_replaced.labels(job.stage, trigger).inc()
        why = (f'the run is annotated {REPLACE_SUPERSEDED}="true"' if asked
               else f"the grace period of {self.settings.superseded_job_grace:.0f} s is over")
        log.info("%s/%s: deleted Job %s of the previous spec (%s)", *key, job.name, why)
        state.notes.append(Transition("Normal", "SupersededJobReplaced",
                                      f"{job.stage}: deleted Job {job.name} of the previous spec ({why})", job.stage))
        return None

    async def _pods_problem(self, run: FineTuneRun, stage: str, job: ObservedJob) -> Problem | None:
        """Why the running stage Job's pods are not up, once they had time to start: the Job's Events when pods are
        missing, the pods themselves when they exist. Looked at again with a growing delay until they are up."""
        key = (run.namespace, run.name)
        cap = RESYNC_FACTOR * self.settings.reconcile_interval
        age = _seconds_since(job.created, self.clock())
        if age is None or age < POD_START_GRACE_S:
            self._due_at[key] = time.monotonic() + POD_START_GRACE_S - (age or 0.0)
            return None
        self.watch_events.awaiting_pods.add(job.uid)
        pods = await self.kube.list_job_pods(run.namespace, job.uid) if job.pods_active else []
        events = await self.kube.list_events(run.namespace, job.uid) if job.pods_active < job.pods_wanted else []
        checks = self._pod_checks[key] = self._pod_checks.get(key, 0) + 1
        self._due_at[key] = time.monotonic() + min(cap, self.settings.reconcile_interval * 2 ** (checks - 1))
        return pod_problem(stage, job.state.name, pods, events)


def _seconds_since(stamp: str | None, now: str) -> float | None:
    if not stamp:
        return None
    try:
        return (datetime.fromisoformat(now) - datetime.fromisoformat(stamp)).total_seconds()
    except ValueError:
        return None


def _progress_key(step: Plan, previous: dict[str, Any]) -> str | None:
    """The train stage's progress.json, to mirror while the stage runs and once more when it finished."""
    view = step.stages["train"]
    if view.ref is None:
        return None
    before = (previous.get("stages") or {}).get("train") or {}
    if view.phase in ("Succeeded", "Cached") and (before.get("phase"), before.get("inputKey")) == (
            view.phase, view.ref.key):
        return None
    return f"{view.ref.prefix}/progress.json"


def _refresh(body: Obj) -> str:
    """The run's kubetune.dev/refresh annotation: a new value resolves the sources again."""
    return str((body["metadata"].get("annotations") or {}).get(REFRESH_ANNOTATION, ""))


def _invalid_spec_plan(reason: str) -> Plan:
    return Plan(Fail("dataset", f"invalid spec: {reason}"), {stage: StageView("Pending") for stage in STAGES})
