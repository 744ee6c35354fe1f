"""The latest FineTuneRuns and stage Jobs the operator has seen, so that a reconcile reads them from memory.

An informer's cache, fed by what the operator sees anyway: kopf's watch events for runs and Jobs, the run a status
write returns and the Job a creation returns. Every object is kept at its highest resourceVersion, so a watch event
that arrives after a newer write (the watch lags behind the operator's own requests) never rolls it back.

The cache answers for a run only while it can be trusted to hold all of the run's Jobs: from a real read (GET of the
run + LIST of its Jobs) in this process, or from the run's ADDED event (a run created while the operator watches has
no Jobs yet: the operator creates them once it has seen the run), until something says that events may have been
missed. That is:

- the first reconcile of a run in this process (operator start, or the run was forgotten);
- a relist by kopf (its initial listing, and after a 410 Gone or a dropped watch: the events of the gap are lost,
  deletions included), seen as events without a type;
- a reconcile that failed (a 409, a 429, a 500: what it wrote may or may not have happened);
- a Job creation answered "already exists": the cache missed a Job;
- the timer's resync of a run that no event moved for a while (reconcile.py).

A real read is merged with what the watch delivered meanwhile by resourceVersion: an event newer than the read wins,
a Job absent from the LIST is kept only if it is newer than the LIST (created after it), and a Job whose DELETED
event came while the LIST was in flight stays deleted. Job creation stays
idempotent (deterministic names, "already exists" is success), so a stale cache can delay a step, never double it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetune.operator import labels

Obj = dict[str, Any]
RunKey = tuple[str, str]  # (namespace, run name)


def version_number(value: object) -> int | None:
    """A resourceVersion as a number, None where the server's is not one (then the latest seen wins). Kubernetes
    calls it opaque; every API server (etcd's revision) and the emulator issue increasing integers."""
    text = str(value or "")
    return int(text) if text.isdigit() else None


def resource_version(obj: Mapping[str, Any]) -> int | None:
    return version_number((obj.get("metadata") or {}).get("resourceVersion"))


def _newer(candidate: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    if current is None:
        return True
    new, old = resource_version(candidate), resource_version(current)
    return new is None or old is None or new >= old


def _not_after(obj: Mapping[str, Any], version: int | None) -> bool:
    """Whether `obj` is no newer than `version`; when either is not a number, assume so (the safe side: a real read
    comes again at the latest with the timer's resync)."""
    seen = resource_version(obj)
    return seen is None or version is None or seen <= version


def run_key(run: Mapping[str, Any]) -> RunKey:
    meta = run.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def run_of_job(job: Mapping[str, Any]) -> RunKey | None:
    meta = job.get("metadata") or {}
    run = (meta.get("labels") or {}).get(labels.RUN)
    return (str(meta.get("namespace") or ""), str(run)) if run else None


@dataclass
class _Entry:
    run: Obj | None = None
    jobs: dict[str, Obj] = field(default_factory=dict)  # by Job name
    # Jobs whose DELETED event came since the last real read, with its resourceVersion: a LIST in flight when it
    # came may still hold them.
    deleted: dict[str, int | None] = field(default_factory=dict)
    trusted: bool = False


class ObjectCache:
    def __init__(self) -> None:
        self._entries: dict[RunKey, _Entry] = {}

    def view(self, key: RunKey) -> tuple[Obj, list[Obj]] | None:
        """The run and its Jobs, or None where only a real read will do."""
        entry = self._entries.get(key)
        if entry is None or not entry.trusted or entry.run is None:
            return None
        return entry.run, list(entry.jobs.values())

    def track(self, key: RunKey) -> None:
        """Start keeping the run's events: called before its real read, so the events that arrive during the read
        are merged with it, not lost."""
        self._entries.setdefault(key, _Entry())

    def adopt(self, key: RunKey, run: Obj) -> bool:
        """Trust a run just created (its ADDED event) with no Jobs, without reading it; False where it is tracked
        already. A Job it has all the same (left by a deleted run of the same name, or made by another operator
        instance in a rolling update) shows when the creation of its Job is answered "already exists", and the next
        pass reads for real."""
        if key in self._entries:
            return False
        self._entries[key] = _Entry(run=run, trusted=True)
        return True

    def fill(self, key: RunKey, run: Obj | None, jobs: list[Obj], listed_at: int | None) -> None:
        """Merge a real read (the run, its Jobs and the LIST's resourceVersion) and trust the run from now on."""
        entry = self._entries.get(key)
        if run is None or entry is None:  # gone, or deleted while it was read: nothing to trust
            self.forget(key)
            return
        if _newer(run, entry.run):
            entry.run = run
        listed = {job["metadata"]["name"]: job for job in jobs}
        for name, job in list(entry.jobs.items()):
            if name not in listed:
                seen_at = resource_version(job)
                if listed_at is None or seen_at is None or seen_at <= listed_at:
                    del entry.jobs[name]  # deleted before the LIST: its DELETED event may never come
        for name, job in listed.items():
            if name in entry.deleted and _not_after(job, entry.deleted[name]):
                continue  # deleted while the LIST was in flight
            if _newer(job, entry.jobs.get(name)):
                entry.jobs[name] = job
        entry.deleted.clear()
        entry.trusted = True

    def distrust(self, key: RunKey) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.trusted = False

    def forget(self, key: RunKey) -> None:
        self._entries.pop(key, None)

    def observe_run(self, event_type: str | None, run: Obj) -> None:
        """A watch event of a run, or the run as a write returned it ("MODIFIED")."""
        key = run_key(run)
        if event_type == "DELETED":
            self.forget(key)
            return
        entry = self._entries.get(key)
        if entry is None:
            return  # not tracked: its first reconcile reads it
        if event_type is None:
            entry.trusted = False  # a relist: events may have been lost
        if _newer(run, entry.run):
            entry.run = run

    def observe_job(self, event_type: str | None, job: Obj) -> None:
        """A watch event of a stage Job, or the Job as its creation returned it ("ADDED")."""
        key = run_of_job(job)
        entry = None if key is None else self._entries.get(key)
        if entry is None:
            return
        name = job["metadata"]["name"]
        if event_type == "DELETED":
            current = entry.jobs.get(name)
            if current is None or _newer(job, current):
                entry.jobs.pop(name, None)
                entry.deleted[name] = resource_version(job)
            return
        if event_type is None:
            entry.trusted = False
        if _newer(job, entry.jobs.get(name)):
            entry.jobs[name] = job
