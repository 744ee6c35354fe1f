"""kopf handlers: thin entry points that all lead to one serialized reconcile of the run (reconcile.py).

- the run was created, its spec changed, or the operator (re)started → reconcile;
- a timer reconciles active runs every few seconds (progress mirroring, missed events); settled runs cost nothing;
- a stage Job (labelled `kubetune.dev/run`) changing phase reconciles its run at once, so the next stage's Job
  starts right after one finishes (its other status writes do not);
- every run and stage Job event feeds the reconciler's cache (cache.py): a reconcile reads them from memory;
- deleting a run with `storage.keepOnDelete: false` removes its store prefix (through a finalizer, only on those
  runs); Jobs and ConfigMaps go with the run through their owner references.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from kubetune.api.types import GROUP, PLURAL, VERSION
from kubetune.operator.kube import ApiError
from kubetune.operator.labels import DOMAIN
from kubetune.operator.labels import RUN as RUN_LABEL
from kubetune.operator.reconcile import Reconciler, is_settled
from kubetune.operator.settings import OperatorSettings
from kubetune.store import StoreError

RESOURCE = (GROUP, VERSION, PLURAL)
FINALIZER = f"{DOMAIN}/artifacts"
# Store reads (blocking boto3 or file calls) run in this many threads; API calls need none (kube.py).
STORE_THREADS = 16


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler, settings: OperatorSettings) -> None:
    """Attach the operator's handlers to `registry` (kopf's default one in production, a fresh one per test)."""

    async def reconcile(namespace: str, name: str, *, urgent: bool = False, fresh: bool = False) -> None:
        try:
            await reconciler.request(namespace, name, urgent=urgent, fresh=fresh)
        except (ApiError, StoreError, OSError) as error:
            reconciler.metrics.reconciles.labels("error").inc()
            raise kopf.TemporaryError(f"reconcile of {namespace}/{name}: {error}",
                                      delay=settings.reconcile_interval) from error

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf's bookkeeping stays in kubetune.dev annotations: the status schema is ours alone.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=DOMAIN)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=DOMAIN, key="last-handled-configuration")
        settings.persistence.finalizer = FINALIZER
        settings.posting.level = logging.WARNING  # our Events tell the story; kopf's only its problems
        settings.scanning.disabled = True  # no CRD/namespace watching: no RBAC for them
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=STORE_THREADS))

    @kopf.on.cleanup(registry=registry)
    async def close_api(**_: Any) -> None:
        await reconciler.events.drain(timeout=10)
        await reconciler.kube.close()

    @kopf.on.event(*RESOURCE, registry=registry)
    async def run_seen(type: str | None, event: Mapping[str, Any], **_: Any) -> None:
        reconciler.cache.observe_run(type, event["object"])

    @kopf.on.resume(*RESOURCE, registry=registry)
    @kopf.on.create(*RESOURCE, registry=registry)
    @kopf.on.update(*RESOURCE, field="spec", registry=registry)
    async def spec_changed(namespace: str | None, name: str, **_: Any) -> None:
        await reconcile(_namespaced(namespace), name)

    @kopf.timer(*RESOURCE, interval=settings.reconcile_interval, registry=registry)
    async def tick(namespace: str | None, name: str, meta: Mapping[str, Any], status: Mapping[str, Any],
                   **_: Any) -> None:
        namespace = _namespaced(namespace)
        if not is_settled(dict(status), int(meta.get("generation") or 0)) and reconciler.timer_due(
                namespace, name, status):
            await reconcile(namespace, name, fresh=reconciler.resync_due(namespace, name))

    @kopf.on.event("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT}, registry=registry)
    async def job_changed(namespace: str | None, labels: Mapping[str, str], type: str | None,
                          event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
        reconciler.cache.observe_job(type, event["object"])
        if reconciler.job_event_matters(type, body):
            await reconcile(_namespaced(namespace), labels[RUN_LABEL], urgent=True)

    @kopf.on.delete(*RESOURCE, registry=registry, when=_deletes_artifacts)
    async def delete_artifacts(namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any) -> None:
        try:
            await reconciler.delete_artifacts(_namespaced(namespace), name, dict(spec))
        except (StoreError, OSError) as error:
            raise kopf.TemporaryError(f"deleting the artifacts of {namespace}/{name}: {error}", delay=10) from error

    @kopf.on.probe(id="runs", registry=registry)
    def runs_known(**_: Any) -> int:
        return reconciler.known_runs()


def _namespaced(namespace: str | None) -> str:
    if namespace is None:
        raise kopf.PermanentError("FineTuneRuns and their Jobs are namespaced")
    return namespace


def _deletes_artifacts(spec: Mapping[str, Any], **_: Any) -> bool:
    return (spec.get("storage") or {}).get("keepOnDelete", True) is False
