"""Which watch events ask for a reconcile. Runs and Jobs write their status many times while nothing changes for
the plan; reconciling on every event would, with hundreds of runs, bury the events that matter in a queue."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.operator.cache import ObjectCache, run_key
from kubetune.operator.observe import observe_job
from kubetune.operator.problems import REPLACE_SUPERSEDED
from kubetune.stages import REFRESH_ANNOTATION


class WatchEvents:
    def __init__(self, cache: ObjectCache) -> None:
        self.cache = cache
        # run -> (uid, generation, replace annotation, refresh annotation) of the last event that asked for a pass
        self._generations: dict[tuple[str, str], tuple[str, int, str | None, str | None]] = {}
        self._job_views: dict[str, tuple[Any, ...] | None] = {}  # Job uid -> what the last event showed of it
        self.awaiting_pods: set[str] = set()  # uids of Jobs checked for missing pods: their pods starting is news

    def run_event_matters(self, event_type: str | None, run: Mapping[str, Any]) -> tuple[bool, bool]:
        """Whether a run's watch event asks for a reconcile: the run is new to this process (created, or listed when
        the operator starts) or has a new generation (its spec changed). Its status writes and label edits do not:
        the reconcile compares the run with what exists, whatever the event, and the timer covers the rest. A run
        created while the operator watches goes into the cache as it is (cache.py: `adopt`), so that its first
        reconcile reads nothing from the API server; the second value says it was."""
        meta = run.get("metadata") or {}
        key = run_key(run)
        if event_type == "DELETED":
            self.forget_run(key)
            return False, False
        # The annotations that replace a Job of the previous spec at once, or resolve the sources again, are the
        # metadata changes that matter.
        annotations = meta.get("annotations") or {}
        seen = (str(meta.get("uid", "")), int(meta.get("generation") or 0),
                annotations.get(REPLACE_SUPERSEDED), annotations.get(REFRESH_ANNOTATION))
        if self._generations.get(key) == seen:
            return False, False
        self._generations[key] = seen
        return True, event_type == "ADDED" and self.cache.adopt(key, dict(run))

    def job_event_matters(self, event_type: str | None, job: Mapping[str, Any]) -> bool:
        """Whether a Job event can move its run on: a Job writes its status many times (pods starting, counters),
        and only a change of its phase (or completion time) can. Its start time alone waits for the next reconcile
        (a running train stage's timer, or the Job's end). Deletions always matter."""
        uid = str((job.get("metadata") or {}).get("uid", ""))
        if event_type == "DELETED" or not uid:
            self._job_views.pop(uid, None)
            self.awaiting_pods.discard(uid)
            return True
        observed = observe_job(job)
        view = None if observed is None else (observed.state.phase, observed.completion_time)
        # While a Job's missing pods are looked into, their coming up is news too.
        pods_came_up = uid in self.awaiting_pods and (observed is None or not observed.starting)
        if pods_came_up:
            self.awaiting_pods.discard(uid)
        if uid in self._job_views and self._job_views[uid] == view and not pods_came_up:
            return False
        self._job_views[uid] = view
        return True

    def forget_run(self, key: tuple[str, str]) -> None:
        self._generations.pop(key, None)
