"""`JobExecutor`: plays kubelet + the Job controller for batch/v1 Jobs in the emulator, with local processes.

Each attempt of a Job runs its pod template's first container (`command` + `args`, `env`, `envFrom`) as a local
process in its own process group, with stdout/stderr captured to files. What cannot be reproduced on a laptop is
mapped:

* Volumes cannot be mounted at their `mountPath` (e.g. /etc/kubetune): configMap, secret and emptyDir volumes are
  materialised in the attempt's directory and every occurrence of a mount path in the command, args, env values and
  workingDir is REWRITTEN to the local directory (longest mount path first, whole path segments only) — except a
  path into this checkout (the test's own programs, e.g. when the checkout lives under /tmp and /tmp is a mount).
* The container's `terminationMessagePath` (/dev/termination-log) is rewritten the same way to a per-attempt file.
  The termination message is that file's content, else (for a failed container) the last line on stderr.
* argv[0] `python` / `python3` becomes this interpreter (the job image's Python is our virtualenv here).
* Retries wait `retry_delay * 2**(failures-1)` seconds (capped at 2 s), not the real 10 s exponential backoff.
* Before a pod runs, admission and the scheduler may stop it as on a real cluster (scheduling.py): a ServiceAccount
  or PriorityClass that does not exist gives no pod and a `FailedCreate` Event on the Job (tried again every
  0.5 s); a nodeSelector that matches none of `nodes` leaves the pod Pending and `Unschedulable`. The pods carry
  the Job controller's labels (`batch.kubernetes.io/controller-uid`, `batch.kubernetes.io/job-name`, and the legacy
  `controller-uid`, `job-name`), and the Job's `status.active` / `status.ready` count pods created / running.
* Deleting a Job kills its running process (the real kubelet would only do so once the pod is deleted).
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import contextlib
import os
import re
import secrets
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from tests.kube import errors
from tests.kube.emulator import KubeEmulator
from tests.kube.scheduling import DEFAULT_NODES, admission_error, node_for, record_event, unschedulable_message
from tests.kube.store import WatchEvent, now_rfc3339

Obj = dict[str, Any]
CommandRewriter = Callable[[Obj, list[str]], list[str]]
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_MAX_RETRY_DELAY = 2.0
_ADMISSION_RETRY_S = 0.5  # how often a pod that admission refused or no node fits is tried again


def instant_command(exit_code: int = 0, stderr: str = "", sleep: float = 0.0) -> list[str]:
    """A near-instant container command for load tests: optionally sleeps, prints to stderr, exits with the code."""
    code = f"import sys,time;time.sleep({sleep!r});sys.stderr.write({stderr!r});sys.exit({int(exit_code)})"
    return ["python", "-c", code]


@dataclass
class Attempt:
    """One pod of a Job: where its output went and how it ended."""

    index: int
    pod_name: str
    directory: Path
    argv: list[str] = field(default_factory=list)
    exit_code: int | None = None
    reason: str = ""  # Completed | Error | Suspended | DeadlineExceeded | Deleted | CreateContainerConfigError
    termination_message: str = ""
    disrupted: bool = False  # preempted through JobExecutor.preempt (the pod gets a DisruptionTarget condition)

    @property
    def stdout(self) -> Path:
        return self.directory / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.directory / "stderr.log"


class _Interrupt(Exception):
    """Why a running attempt was stopped from outside."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobExecutor:
    def __init__(
        self,
        kube: KubeEmulator,
        workdir: Path,
        *,
        retry_delay: float = 0.1,
        rewrite_command: CommandRewriter | None = None,
        extra_env: dict[str, str] | None = None,
        idle_pods: bool = False,
        nodes: dict[str, dict[str, str]] | None = None,
        priority_classes: set[str] | None = None,
    ) -> None:
        self.kube = kube
        # In a cluster, pods run on other nodes than the API server and the operator; on one machine, a load test
        # runs them as idle-priority processes so that they take only the CPU the control plane leaves.
        self.idle_pods = idle_pods
        self.workdir = workdir
        self.retry_delay = retry_delay
        self.rewrite_command = rewrite_command
        self.extra_env = dict(extra_env or {})
        # The cluster around the pods (scheduling.py): node name -> labels, and the PriorityClasses that exist.
        # Tests may change both while Jobs run: a waiting pod is tried again.
        self.nodes: dict[str, dict[str, str]] = {n: dict(labels) for n, labels in (nodes or DEFAULT_NODES).items()}
        self.priority_classes: set[str] = set(priority_classes or ())
        # By Job uid, from its first event until its DELETED event (and its task's end): a finished controller stays
        # so that late watch events about its Job can never start a second controller for the same uid.
        self._controllers: dict[str, _JobController] = {}
        self._attempts: dict[tuple[str, str], list[Attempt]] = {}  # (namespace, name) -> attempts, all uids
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._main(ready))
            self._loop.close()

        self._thread = threading.Thread(target=run, name="job-executor", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        """Kill every running process and stop."""
        if self._loop is None or self._thread is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(30)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _main(self, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        events: asyncio.Queue[WatchEvent] = asyncio.Queue()

        def deliver(event: WatchEvent) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        jobs = self.kube.resource("jobs.batch")
        initial, _ = self.kube.store.subscribe(jobs, None, deliver)
        for event in initial:
            events.put_nowait(event)
        ready.set()
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                getting = asyncio.ensure_future(events.get())
                await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stopping.done():
                    getting.cancel()
                    break
                self._dispatch(getting.result())
        finally:
            self.kube.store.unsubscribe(jobs, deliver)
            controllers = list(self._controllers.values())
            for controller in controllers:
                controller.interrupt("Deleted")
            await asyncio.gather(*(c.task for c in controllers if c.task), return_exceptions=True)

    def _dispatch(self, event: WatchEvent) -> None:
        job = event.obj
        uid = job["metadata"]["uid"]
        controller = self._controllers.get(uid)
        if event.type == "DELETED":
            if controller is not None:
                controller.interrupt("Deleted")
                if controller.task is not None:
                    controller.task.add_done_callback(lambda _: self._controllers.pop(uid, None))
            return
        if controller is not None:
            controller.observe(job)  # once its run has ended this changes nothing: a Job is controlled once
            return
        if _finished(job):
            return
        controller = _JobController(self, job)
        self._controllers[uid] = controller
        controller.task = asyncio.ensure_future(controller.run())

    # ----------------------------------------------------------------------------------------------- inspection

    def attempts(self, job_name: str, namespace: str = "default") -> list[Attempt]:
        with self._lock:
            return list(self._attempts.get((namespace, job_name), []))

    def _record(self, namespace: str, name: str, attempt: Attempt) -> None:
        with self._lock:
            self._attempts.setdefault((namespace, name), []).append(attempt)

    def preempt(self, job_name: str, namespace: str = "default", grace_seconds: float | None = None) -> bool:
        """Preempt the Job's running pod: SIGTERM, then SIGKILL after the grace period (default: the pod's
        terminationGracePeriodSeconds); the pod fails with a DisruptionTarget condition. False if nothing runs."""
        loop = self._loop
        if loop is None:
            return False
        for controller in list(self._controllers.values()):
            meta = controller.job["metadata"]
            if (meta["namespace"], meta["name"]) == (namespace, job_name) and controller.running:
                loop.call_soon_threadsafe(controller.interrupt, "Preempted", grace_seconds)
                return True
        return False


def _finished(job: Obj) -> bool:
    return any(
        condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True"
        for condition in (job.get("status") or {}).get("conditions") or []
    )


def _resource_version(obj: Obj) -> int:
    """The emulator's resourceVersions are one global counter, so they order the changes of an object."""
    return int((obj.get("metadata") or {}).get("resourceVersion") or 0)


def _idle_priority(pid: int) -> None:
    """SCHED_IDLE: the process runs only when nothing else of its scheduling group wants the CPU. The pod stays in
    the executor's session because, with autogroup scheduling (Linux's default where
    /proc/sys/kernel/sched_autogroup_enabled is 1), each session is a scheduling group of its own, priorities rank
    processes only inside their group and the groups share the CPUs as equals: pods at nice 19 in sessions of their
    own took the operator's CPU as if they were not niced at all (the load benchmark's hand-off p50 was 8x higher)."""
    with contextlib.suppress(ProcessLookupError):  # an instant job may be gone already
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))


def _exit_code(returncode: int) -> int:
    """As a container runtime reports it: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class _JobController:
    """The lifecycle of one Job (by uid): attempts, suspend/resume, deadline, retries, final status."""

    def __init__(self, executor: JobExecutor, job: Obj) -> None:
        self.executor = executor
        self.kube = executor.kube
        self.job = job
        self.task: asyncio.Future[None] | None = None
        self.running = False
        self._changed = asyncio.Event()
        self._interrupt: tuple[str, float | None] | None = None
        self._failed = int((job.get("status") or {}).get("failed") or 0)  # the count survives a new controller
        self._attempt_index = 0

    @property
    def _name(self) -> str:
        return str(self.job["metadata"]["name"])

    @property
    def _namespace(self) -> str:
        return str(self.job["metadata"]["namespace"])

    def observe(self, job: Obj) -> None:
        """A watch event. Events of our own status writes arrive after the write returned the newer object, so an
        event older than what we hold is stale and must not roll our view back; waiters re-check either way."""
        if _resource_version(job) > _resource_version(self.job):
            self.job = job
        self._changed.set()

    def interrupt(self, reason: str, grace: float | None = None) -> None:
        self._interrupt = (reason, grace)
        self._changed.set()

    # ----------------------------------------------------------------------------------------------- status

    def _status(self) -> Obj:
        return dict(self.job.get("status") or {})

    def _write_status(self, **changes: Any) -> None:
        try:
            self.job = self.kube.patch_status("jobs.batch", self._name, changes, self._namespace)
        except errors.ApiError as error:
            if error.code != 404:
                raise
            self.interrupt("Deleted")

    def _condition(self, kind: str, status: str, reason: str, message: str) -> list[Obj]:
        now = now_rfc3339()
        conditions = [c for c in self._status().get("conditions") or [] if c.get("type") != kind]
        return [
            *conditions,
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastProbeTime": now,
                "lastTransitionTime": now,
            },
        ]

    def _finish(self, kind: str, reason: str, message: str, **counts: int) -> None:
        """Write the final condition together with the final counts, in one status update."""
        extra: Obj = {"completionTime": now_rfc3339(), "succeeded": 1} if kind == "Complete" else {}
        self._write_status(
            active=0, ready=0, conditions=self._condition(kind, "True", reason, message), **extra, **counts
        )
        ttl = (self.job.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is not None:
            asyncio.get_running_loop().call_later(float(ttl), self._expire)

    def _expire(self) -> None:
        with contextlib.suppress(errors.ApiError):
            self.kube.delete("jobs.batch", self._name, self._namespace, propagation_policy="Background")

    def _suspended(self) -> bool:
        return any(
            c.get("type") == "Suspended" and c.get("status") == "True" for c in self._status().get("conditions") or []
        )

    # ------------------------------------------------------------------------------------------------ control

    async def run(self) -> None:
        spec = self.job.get("spec") or {}
        while not self._is_interrupted("Deleted"):
            if _finished(self.job):
                return
            spec = self.job.get("spec") or {}
            if spec.get("suspend"):
                if not self._suspended():
                    self._write_status(
                        active=0,
                        ready=0,
                        conditions=self._condition("Suspended", "True", "JobSuspended", "Job suspended"),
                    )
                await self._wait_for_change()
                continue
            if self._suspended():
                self._write_status(
                    startTime=now_rfc3339(),
                    conditions=self._condition("Suspended", "False", "JobResumed", "Job resumed"),
                )
            elif not self._status().get("startTime"):
                self._write_status(startTime=now_rfc3339())
            if self._deadline_exceeded():
                self._finish("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
                return
            attempt = await self._run_attempt()
            if attempt is None or self._is_interrupted("Deleted"):
                return
            if attempt.reason == "Suspended":
                continue
            if attempt.reason == "DeadlineExceeded":
                self._finish("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
                return
            if attempt.exit_code == 0:
                self._finish("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
                return
            if not await self._after_failure(attempt, spec):
                return

    def _is_interrupted(self, reason: str) -> bool:
        return self._interrupt is not None and self._interrupt[0] == reason

    async def _wait_for_change(self, timeout: float | None = None) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _deadline_remaining(self) -> float | None:
        deadline = (self.job.get("spec") or {}).get("activeDeadlineSeconds")
        start = self._status().get("startTime")
        if deadline is None or not start:
            return None
        started = calendar.timegm(time.strptime(start, "%Y-%m-%dT%H:%M:%SZ"))
        return float(deadline) - (time.time() - started)

    def _deadline_exceeded(self) -> bool:
        remaining = self._deadline_remaining()
        return remaining is not None and remaining <= 0

    async def _after_failure(self, attempt: Attempt, spec: Obj) -> bool:
        """Apply podFailurePolicy and backoffLimit; True when the Job retries."""
        action, index = self._policy_action(attempt, spec)
        container = ((spec.get("template") or {}).get("spec") or {}).get("containers", [{}])[0].get("name", "")
        if action == "Ignore":
            self._write_status(active=0, ready=0)
        else:  # FailJob and Count both count the failed pod
            self._failed += 1
            if action == "FailJob":
                self._finish(
                    "Failed",
                    "PodFailurePolicy",
                    f"Container {container} for pod {self._namespace}/{attempt.pod_name} failed with exit code "
                    f"{attempt.exit_code} matching FailJob rule at index {index}",
                    failed=self._failed,
                )
                return False
            if self._failed > int(spec.get("backoffLimit", 6)):
                self._finish(
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    failed=self._failed,
                )
                return False
            self._write_status(failed=self._failed, active=0, ready=0)
        await self._backoff(min(_MAX_RETRY_DELAY, self.executor.retry_delay * 2 ** max(0, self._failed - 1)))
        return True

    async def _backoff(self, delay: float) -> None:
        """Wait before the next attempt. Only a deletion, a suspension or the deadline cuts the wait short; other
        changes (our own status writes among them) do not."""
        until = time.monotonic() + delay
        while (remaining := until - time.monotonic()) > 0 and self._stop_reason() is None:
            await self._wait_for_change(remaining)

    @staticmethod
    def _policy_action(attempt: Attempt, spec: Obj) -> tuple[str, int]:
        """The first podFailurePolicy rule matching the failed attempt: (action, rule index); Count if none."""
        container = ((spec.get("template") or {}).get("spec") or {}).get("containers", [{}])[0].get("name")
        for index, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
            on_codes = rule.get("onExitCodes")
            if on_codes and attempt.exit_code is not None:
                if on_codes.get("containerName") not in (None, container):
                    continue
                listed = attempt.exit_code in (on_codes.get("values") or [])
                if listed == (on_codes.get("operator", "In") == "In"):
                    return str(rule["action"]), index
            for pattern in rule.get("onPodConditions") or []:
                if (
                    attempt.disrupted
                    and pattern.get("type") == "DisruptionTarget"
                    and pattern.get("status", "True") == "True"
                ):
                    return str(rule["action"]), index
        return "Count", -1

    # ------------------------------------------------------------------------------------------------ attempts

    async def _admitted(self) -> str | None:
        """Wait until admission would create the pod, recording the Job controller's FailedCreate Events; the stop
        reason (Deleted, Suspended, DeadlineExceeded) if the Job is stopped first."""
        template_spec = ((self.job.get("spec") or {}).get("template") or {}).get("spec") or {}
        while (refused := admission_error(self.kube, self._namespace, f"{self._name}-", template_spec,
                                          self.executor.priority_classes)) is not None:
            record_event(self.kube, self.job, "Warning", "FailedCreate", f"Error creating: {refused}",
                         "job-controller")
            outcome = await self._interruptible_sleep(_ADMISSION_RETRY_S)
            if outcome is not None:
                return outcome
        return None

    async def _scheduled(self, pod: _Pod) -> str | None:
        """Wait until a node fits the pod (Pending and Unschedulable until then); the stop reason if stopped first."""
        told = False
        while (node := node_for(pod.spec, self.executor.nodes)) is None:
            if not told:
                message = unschedulable_message(self.executor.nodes)
                pod.unschedulable(message)
                record_event(self.kube, pod.object(), "Warning", "FailedScheduling", message, "default-scheduler")
                told = True
            outcome = await self._interruptible_sleep(_ADMISSION_RETRY_S)
            if outcome is not None:
                return outcome
        if told:
            pod.scheduled(node)
        return None

    async def _run_attempt(self) -> Attempt | None:
        stopped = await self._admitted()
        if stopped is not None:
            return None if stopped == "Deleted" else Attempt(0, "", self.executor.workdir, reason=stopped)
        self._attempt_index += 1
        pod_name = f"{self._name}-{''.join(secrets.choice('bcdfghjklmnpqrstvwxz2456789') for _ in range(5))}"
        directory = self.executor.workdir / self._namespace / self._name / f"{self._attempt_index:03d}-{pod_name}"
        directory.mkdir(parents=True, exist_ok=True)
        attempt = Attempt(self._attempt_index, pod_name, directory)
        self.executor._record(self._namespace, self._name, attempt)
        pod = _Pod(self.kube, self.job, pod_name, directory, self.executor.extra_env)
        pod.create(node_for(pod.spec, self.executor.nodes))
        record_event(self.kube, self.job, "Normal", "SuccessfulCreate", f"Created pod: {pod_name}", "job-controller",
                     repeats=False)
        self._write_status(active=1, ready=0)
        stopped = await self._scheduled(pod)
        if stopped is not None:
            attempt.reason = stopped
            pod.delete()
            return None if stopped == "Deleted" else attempt
        while True:  # a missing Secret/ConfigMap keeps the pod waiting, like CreateContainerConfigError
            try:
                argv, env, cwd = pod.prepare()
                break
            except _Missing as missing:
                pod.waiting("CreateContainerConfigError", str(missing))
                outcome = await self._interruptible_sleep(0.5)
                if outcome is not None:
                    attempt.reason = outcome
                    pod.delete()
                    return None if outcome == "Deleted" else attempt
        if self.executor.rewrite_command is not None:
            argv = self.executor.rewrite_command(self.job, argv)
        attempt.argv = argv
        (directory / "command.txt").write_text(shlex.join(argv) + "\n")
        with attempt.stdout.open("wb") as out, attempt.stderr.open("wb") as err:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdout=out,
                    stderr=err,
                    stdin=asyncio.subprocess.DEVNULL,
                    env=env,
                    cwd=cwd,
                    # Its own process group (killed as one), in the executor's session: see _idle_priority.
                    process_group=0,
                )
            except OSError as error:
                err.write(f"container could not start: {error}\n".encode())
                attempt.exit_code, attempt.reason = 128, "ContainerCannotRun"
                attempt.termination_message = f"container could not start: {error}"
                pod.terminated(attempt)
                return attempt
        if self.executor.idle_pods:
            _idle_priority(process.pid)
        self.running = True
        self._write_status(active=1, ready=1)
        pod.running()
        try:
            await self._supervise(process, attempt, pod)
        finally:
            self.running = False
        attempt.exit_code = _exit_code(process.returncode if process.returncode is not None else -9)
        if not attempt.reason:
            attempt.reason = "Completed" if attempt.exit_code == 0 else "Error"
        attempt.termination_message = pod.termination_message(attempt)
        if attempt.reason in ("Suspended", "Deleted", "DeadlineExceeded"):
            pod.delete()
            if attempt.reason == "Suspended":
                self._write_status(
                    active=0, ready=0, conditions=self._condition("Suspended", "True", "JobSuspended", "Job suspended")
                )
        else:
            pod.terminated(attempt)
        return attempt

    async def _interruptible_sleep(self, seconds: float) -> str | None:
        await self._wait_for_change(seconds)
        return self._stop_reason()

    def _stop_reason(self) -> str | None:
        if self._interrupt is not None and self._interrupt[0] == "Deleted":
            return "Deleted"
        if (self.job.get("spec") or {}).get("suspend"):
            return "Suspended"
        if self._deadline_exceeded():
            return "DeadlineExceeded"
        return None

    async def _supervise(self, process: asyncio.subprocess.Process, attempt: Attempt, pod: _Pod) -> None:
        """Wait for the process; stop it (SIGTERM, grace, SIGKILL) when suspended, deleted, out of time, preempted."""
        waiting = asyncio.ensure_future(process.wait())
        while not waiting.done():
            remaining = self._deadline_remaining()
            self._changed.clear()
            changed = asyncio.ensure_future(self._changed.wait())
            await asyncio.wait(
                {waiting, changed},
                timeout=remaining if remaining is None else max(0.0, remaining),
                return_when=asyncio.FIRST_COMPLETED,
            )
            changed.cancel()
            if waiting.done():
                break
            reason = self._stop_reason()
            grace: float | None = None
            if reason is None and self._interrupt is not None and self._interrupt[0] == "Preempted":
                reason, grace = "Preempted", self._interrupt[1]
                self._interrupt = None
                attempt.disrupted = True
                pod.disrupted()
            if reason is None:
                continue
            if reason != "Preempted":
                attempt.reason = reason
            await self._terminate(process, waiting, grace)
        await waiting

    async def _terminate(
        self,
        process: asyncio.subprocess.Process,
        waiting: asyncio.Future[int],
        grace: float | None,
    ) -> None:
        if grace is None:
            template_spec = ((self.job.get("spec") or {}).get("template") or {}).get("spec") or {}
            grace = float(template_spec.get("terminationGracePeriodSeconds", 30))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        done, _ = await asyncio.wait({waiting}, timeout=grace)
        if not done:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


class _Missing(Exception):
    """A Secret or ConfigMap (or a key of it) that the container needs does not exist yet."""


class _Pod:
    """The Pod object of one attempt, and the container's command, env and volumes made local."""

    def __init__(self, kube: KubeEmulator, job: Obj, name: str, directory: Path, extra_env: dict[str, str]) -> None:
        self.kube, self.job, self.name, self.directory = kube, job, name, directory
        self.extra_env = extra_env
        self.namespace: str = job["metadata"]["namespace"]
        template = (job.get("spec") or {}).get("template") or {}
        self.template_meta: Obj = template.get("metadata") or {}
        self.spec: Obj = template.get("spec") or {}
        self.container: Obj = (self.spec.get("containers") or [{}])[0]
        self.termination_file = directory / "termination-log"
        self.node: str | None = None

    # ------------------------------------------------------------------------------------------- pod object

    def create(self, node: str | None) -> None:
        """The Pod object, bound to `node` (None: the scheduler found none yet)."""
        self.node = node
        meta = self.job["metadata"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                # The Job controller's labels besides the template's (the selector it gives the Job uses them).
                "labels": {**(self.template_meta.get("labels") or {}),
                           "batch.kubernetes.io/controller-uid": meta["uid"], "controller-uid": meta["uid"],
                           "batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"]},
                "annotations": dict(self.template_meta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**self.spec, "nodeName": node} if node else dict(self.spec),
        }
        with contextlib.suppress(errors.ApiError):
            self.kube.create(pod)
            self._status({"phase": "Pending"})

    def object(self) -> Obj:
        """Enough of the Pod object to post Events about it."""
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": self.name, "namespace": self.namespace, "uid": (self.kube.find("pods", self.name, self.namespace)
                                                                    or {}).get("metadata", {}).get("uid", "")}}

    def unschedulable(self, message: str) -> None:
        self._status({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
            "lastProbeTime": None, "lastTransitionTime": now_rfc3339()}]})

    def scheduled(self, node: str) -> None:
        """Bound to `node` (what the scheduler's binding subresource does)."""
        self.node = node
        with contextlib.suppress(errors.ApiError):
            self.kube.patch("pods", self.name, {"spec": {"nodeName": node}}, self.namespace)
        self._status({"conditions": [{"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                                      "lastTransitionTime": now_rfc3339()}]})

    def _status(self, status: Obj) -> None:
        with contextlib.suppress(errors.ApiError):
            self.kube.patch_status("pods", self.name, status, self.namespace)

    def waiting(self, reason: str, message: str) -> None:
        self._status(
            {
                "phase": "Pending",
                "containerStatuses": [self._container_status({"waiting": {"reason": reason, "message": message}})],
            }
        )

    def running(self) -> None:
        self._status(
            {
                "phase": "Running",
                "startTime": now_rfc3339(),
                "containerStatuses": [self._container_status({"running": {"startedAt": now_rfc3339()}})],
            }
        )

    def disrupted(self) -> None:
        self._status(
            {
                "conditions": [
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "PreemptionByScheduler",
                        "message": "preempted by the test (JobExecutor.preempt)",
                        "lastTransitionTime": now_rfc3339(),
                    }
                ]
            }
        )

    def terminated(self, attempt: Attempt) -> None:
        state = {
            "terminated": {
                "exitCode": attempt.exit_code,
                "reason": attempt.reason,
                "message": attempt.termination_message,
                "finishedAt": now_rfc3339(),
            }
        }
        self._status(
            {
                "phase": "Succeeded" if attempt.exit_code == 0 else "Failed",
                "containerStatuses": [self._container_status(state)],
            }
        )

    def delete(self) -> None:
        with contextlib.suppress(errors.ApiError):
            self.kube.delete("pods", self.name, self.namespace)

    def _container_status(self, state: Obj) -> Obj:
        return {
            "name": self.container.get("name", ""),
            "image": self.container.get("image", ""),
            "ready": "running" in state,
            "restartCount": 0,
            "state": state,
        }

    def termination_message(self, attempt: Attempt) -> str:
        if self.termination_file.exists():
            message = self.termination_file.read_text(errors="replace").strip()
            if message:
                return message[-4096:]
        if attempt.exit_code == 0:
            return ""
        lines = [line.strip() for line in attempt.stderr.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""

    # ------------------------------------------------------------------------------------ local execution

    def prepare(self) -> tuple[list[str], dict[str, str], str]:
        """argv, environment and working directory of the container, with volumes materialised locally."""
        mounts = self._materialise_volumes()
        mounts[self.container.get("terminationMessagePath") or "/dev/termination-log"] = str(self.termination_file)
        rewrite = _path_rewriter(mounts)
        env = self._environment()
        env = {key: rewrite(value) for key, value in env.items()}
        argv = [
            rewrite(_expand(part, env))
            for part in [*(self.container.get("command") or []), *(self.container.get("args") or [])]
        ]
        if not argv:
            raise _Missing("the container has no command (images' entrypoints are not known here)")
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        scratch = self.directory / "workdir"
        scratch.mkdir(exist_ok=True)
        working_dir = self.container.get("workingDir")
        cwd = rewrite(working_dir) if working_dir else str(scratch)
        if not Path(cwd).is_dir():
            cwd = str(scratch)
        base = {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(scratch),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "HOSTNAME": self.name,
        }
        return argv, {**base, **self.extra_env, **env}, cwd

    def _object_data(self, resource: str, name: str, key: str | None, optional: bool) -> dict[str, str] | None:
        obj = self.kube.find(resource, name, self.namespace)
        if obj is None:
            if optional:
                return None
            raise _Missing(f'{resource.rstrip("s")} "{name}" not found')
        data: dict[str, str] = dict(obj.get("data") or {})
        if resource == "secrets":
            data = {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
        if key is not None and key not in data and not optional:
            raise _Missing(f"couldn't find key {key} in {resource.rstrip('s')} {self.namespace}/{name}")
        return data

    def _environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in self.container.get("envFrom") or []:
            for kind, resource in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
                ref = source.get(kind)
                if ref:
                    data = self._object_data(resource, ref["name"], None, bool(ref.get("optional")))
                    env.update({source.get("prefix", "") + k: v for k, v in (data or {}).items()})
        for var in self.container.get("env") or []:
            if "value" in var:
                env[var["name"]] = _expand(str(var["value"]), env)
                continue
            value_from = var.get("valueFrom") or {}
            for kind, resource in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
                ref = value_from.get(kind)
                if ref:
                    data = self._object_data(resource, ref["name"], ref["key"], bool(ref.get("optional")))
                    if data is not None and ref["key"] in data:
                        env[var["name"]] = data[ref["key"]]
            field_ref = value_from.get("fieldRef")
            if field_ref:
                env[var["name"]] = self._field(field_ref.get("fieldPath", ""))
        return env

    def _field(self, path: str) -> str:
        values = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "spec.nodeName": self.node or "",
            "status.podIP": "127.0.0.1",
            "spec.serviceAccountName": self.spec.get("serviceAccountName", ""),
        }
        if path.startswith("metadata.labels['"):
            return str((self.template_meta.get("labels") or {}).get(path[len("metadata.labels['") : -2], ""))
        return values.get(path, "")

    def _materialise_volumes(self) -> dict[str, str]:
        """mountPath -> local path for every volumeMount of the container."""
        volumes_dir = self.directory / "volumes"
        local: dict[str, Path] = {}
        for volume in self.spec.get("volumes") or []:
            target = volumes_dir / volume["name"]
            target.mkdir(parents=True, exist_ok=True)
            for kind, resource, name_key in (("configMap", "configmaps", "name"), ("secret", "secrets", "secretName")):
                source = volume.get(kind)
                if source is None:
                    continue
                data = self._object_data(resource, source[name_key], None, bool(source.get("optional"))) or {}
                items = source.get("items") or [{"key": key, "path": key} for key in data]
                for item in items:
                    if item["key"] not in data:
                        raise _Missing(f"couldn't find key {item['key']} in {resource.rstrip('s')} {source[name_key]}")
                    path = target / item["path"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(data[item["key"]])
            local[volume["name"]] = target  # emptyDir and anything else: an empty directory
        mounts: dict[str, str] = {}
        for mount in self.container.get("volumeMounts") or []:
            if mount["name"] not in local:
                raise _Missing(f"volume {mount['name']!r} is not defined in the pod spec")
            path = local[mount["name"]] / mount["subPath"] if mount.get("subPath") else local[mount["name"]]
            mounts[mount["mountPath"].rstrip("/") or "/"] = str(path)
        return mounts


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` references to earlier variables; unknown ones stay as written."""
    return _VAR_REF.sub(lambda match: env.get(match.group(1), match.group(0)), value)


def _path_rewriter(mounts: dict[str, str]) -> Callable[[str], str]:
    """Replace mount paths by local paths, longest first, only where they are whole path segments."""
    ordered = sorted(mounts, key=len, reverse=True)
    if not ordered:
        return lambda value: value
    pattern = re.compile(r"(?<![\w.\-/])(" + "|".join(re.escape(path) for path in ordered) + r")(?=/|$|[^\w.\-])")

    def rewrite(value: str) -> str:
        def replace(match: re.Match[str]) -> str:
            # A path into this checkout is the test's own program (the checkout may itself live under a mount
            # point such as /tmp), never a file inside the container's volume: leave it alone.
            whole = _HOST_PATH_END.split(value[match.start():], maxsplit=1)[0]
            if whole == str(CHECKOUT) or whole.startswith(str(CHECKOUT) + os.sep):
                return match.group(0)
            return mounts[match.group(1)]

        return pattern.sub(replace, value)

    return rewrite


_HOST_PATH_END = re.compile(r"[\s:=,;]")
CHECKOUT = Path(__file__).resolve().parents[2]


def job_logs(executor: JobExecutor, job_name: str, namespace: str = "default") -> str:
    """Every attempt's stderr, concatenated with headers (handy in assertion messages)."""
    parts = []
    for attempt in executor.attempts(job_name, namespace):
        parts.append(f"--- attempt {attempt.index} ({attempt.pod_name}) exit={attempt.exit_code} {attempt.reason}")
        if attempt.stderr.exists():
            parts.append(attempt.stderr.read_text(errors="replace"))
    return "\n".join(parts)
