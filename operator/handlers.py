"""kopf handlers: thin entry points that all lead to one serialized reconcile of the run (reconcile.py).

- a run new to this process (created, or listed when the operator starts) or with a new generation (its spec
  changed) → reconcile. The reconcile is level-based (it compares the run with what exists), so kopf keeps no
  last-handled state of its own: no diff base, no per-handler progress for these (see `_NoDiffBase`);
- a timer (timer.py, one task for all runs) reconciles active runs every few seconds when something is new (training
  progress in the store), as a safety net for missed events, and to retry a failed reconcile; settled runs cost
  nothing;
- a stage Job (labelled `kubetune.dev/run`) changing phase reconciles its run at once, so the next stage's Job
  starts right after one finishes (its other status writes do not);
- every run and stage Job event feeds the reconciler's cache (cache.py): a reconcile reads them from memory;
- deleting a run with `storage.keepOnDelete: false` removes its store prefix (through a finalizer, only on those
  runs); Jobs and ConfigMaps go with the run through their owner references.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from kubetune.api.types import GROUP, PLURAL, VERSION
from kubetune.operator.labels import DOMAIN
from kubetune.operator.labels import RUN as RUN_LABEL
from kubetune.operator.reconcile import Reconciler
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.timer import RunTimer
from kubetune.store import StoreError

RESOURCE = (GROUP, VERSION, PLURAL)
FINALIZER = f"{DOMAIN}/artifacts"
# Store reads (blocking boto3 or file calls) run in this many threads; API calls need none (kube.py).
STORE_THREADS = 16


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler, settings: OperatorSettings) -> None:
    """Attach the operator's handlers to `registry` (kopf's default one in production, a fresh one per test)."""

    timer = RunTimer(reconciler, settings.reconcile_interval)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf's bookkeeping (the artifacts handler's progress) stays in kubetune.dev annotations: the status schema
        # is ours alone.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=DOMAIN)
        settings.persistence.diffbase_storage = _NoDiffBase()
        settings.persistence.finalizer = FINALIZER
        settings.posting.level = logging.WARNING  # our Events tell the story; kopf's only its problems
        settings.scanning.disabled = True  # no CRD/namespace watching: no RBAC for them
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=STORE_THREADS))
        timer.start()

    @kopf.on.cleanup(registry=registry)
    async def close_api(**_: Any) -> None:
        await timer.stop()
        await reconciler.events.drain(timeout=10)
        await reconciler.notifier.close(timeout=5)
        await reconciler.kube.close()

    @kopf.on.event(*RESOURCE, registry=registry)
    async def run_changed(type: str | None, event: Mapping[str, Any], namespace: str | None, name: str,
                          **_: Any) -> None:
        reconciler.cache.observe_run(type, event["object"])
        timer.observe(type, event["object"])
        if reconciler.run_event_matters(type, event["object"]):
            # Without holding up kopf's processing of the event (and of the run's next events): the reconcile waits
            # for its turn at the gate, and it needs nothing from kopf.
            reconciler.request_soon(_namespaced(namespace), name)

    @kopf.on.event("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT}, registry=registry)
    async def job_changed(namespace: str | None, labels: Mapping[str, str], type: str | None,
                          event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
        reconciler.cache.observe_job(type, event["object"])
        if reconciler.job_event_matters(type, body):
            await reconciler.request_logged(_namespaced(namespace), labels[RUN_LABEL], urgent=True)

    @kopf.on.delete(*RESOURCE, registry=registry, when=_deletes_artifacts)
    async def delete_artifacts(namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any) -> None:
        try:
            await reconciler.delete_artifacts(_namespaced(namespace), name, dict(spec))
        except (StoreError, OSError) as error:
            raise kopf.TemporaryError(f"deleting the artifacts of {namespace}/{name}: {error}", delay=10) from error

    @kopf.on.probe(id="runs", registry=registry)
    def runs_known(**_: Any) -> int:
        return reconciler.known_runs()


class _NoDiffBase(kopf.DiffBaseStorage):
    """The same empty "last handled state" for every object, stored nowhere.

    kopf diffs each event's object against a stored essence to tell creations from updates, deep-copying the
    object (run or Job) twice on every event: ~10% of the operator's event loop under load. No handler here needs
    it (the reconcile is level-based, `Reconciler.run_event_matters` tells new runs and spec changes by their
    generation), and the one handler kopf still tracks, deleting the artifacts, is driven by the deletion
    timestamp and the finalizer, not by the diff."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


def _namespaced(namespace: str | None) -> str:
    if namespace is None:
        raise kopf.PermanentError("FineTuneRuns and their Jobs are namespaced")
    return namespace


def _deletes_artifacts(spec: Mapping[str, Any], **_: Any) -> bool:
    return (spec.get("storage") or {}).get("keepOnDelete", True) is False
