"""What a reconcile reads from a run's store: stage outputs' manifests and the sources Jobs' sources.json (immutable
once published, so kept per store, prefix and key), JSON files that change (a stage's progress.json), and the failed
stage Jobs' own reports. Reads run in a worker thread: a store is a network service for the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

from kubetune.operator.kube import Obj
from kubetune.operator.labels import PREFIX
from kubetune.operator.observe import has_condition, latest_attempts
from kubetune.operator.runstore import StoreClients
from kubetune.sources import SOURCES_FILE, Sources
from kubetune.stages import StageRef
from kubetune.store import (
    Manifest,
    ManifestError,
    NotAnObjectError,
    ObjectNotFoundError,
    Store,
    StoreError,
    read_manifest,
)

log = logging.getLogger("kubetune.operator")


def _store_errors() -> tuple[type[BaseException], ...]:
    """What reading the store raises when it cannot be read: the store's typed errors, file system errors, and
    botocore's own where one slips through."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # an operator without S3 support
        return (StoreError, OSError)
    return (StoreError, OSError, BotoCoreError, ClientError)


STORE_ERRORS = _store_errors()


class StoreReads:
    def __init__(self) -> None:
        self.clients = StoreClients()
        self._manifests: dict[tuple[str, str, str], Manifest] = {}  # (uri, prefix, key): published, immutable
        self._sources: dict[tuple[str, str, str], Sources] = {}  # the same, for the sources Jobs' sources.json

    async def manifest(self, store: Store, ref: StageRef) -> Manifest | None:
        """The output published at `ref` for its input key; None when there is none (or an unreadable one, which
        the stage's next run replaces)."""
        cache_key = (store.uri_for(ref.prefix), ref.prefix, ref.key)
        if cache_key in self._manifests:
            return self._manifests[cache_key]
        try:
            manifest = await asyncio.to_thread(read_manifest, store, ref.prefix)
        except (ManifestError, NotAnObjectError) as error:  # as `kubetune run` does: the stage runs again
            log.warning("ignoring %s: the stage will run again and publish a valid one", error)
            return None
        if manifest is None or manifest.input_key != ref.key:
            return None
        self._manifests[cache_key] = manifest
        return manifest

    async def sources(self, store: Store, ref: StageRef) -> Sources | None:
        """What the sources Job published at `ref` (its sources.json, checked against its manifest), if anything."""
        cache_key = (store.uri_for(ref.prefix), ref.prefix, ref.key)
        if cache_key in self._sources:
            return self._sources[cache_key]
        manifest = await self.manifest(store, ref)
        entry = next((f for f in manifest.files if f.path == SOURCES_FILE), None) if manifest is not None else None
        if entry is None:
            return None
        try:
            raw = await asyncio.to_thread(store.get_bytes, f"{ref.prefix}/{SOURCES_FILE}")
            if hashlib.sha256(raw).hexdigest() != entry.sha256:
                raise ValueError("it does not match its manifest")
            sources = Sources.from_json(json.loads(raw))
        except (ObjectNotFoundError, NotAnObjectError, ValueError, TypeError, KeyError) as error:
            log.warning("ignoring the sources at %s: %s", store.uri_for(ref.prefix), error)
            return None
        self._sources[cache_key] = sources
        return sources

    @staticmethod
    async def json(store: Store, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(await asyncio.to_thread(store.get_bytes, key))
        except ObjectNotFoundError:
            return None
        except ValueError:
            return None  # caught mid-rewrite on a store without atomic writes: next pass reads it
        return data if isinstance(data, dict) else None

    async def failure_reports(self, store: Store, jobs: list[Obj]) -> dict[str, dict[str, Any]]:
        """progress.json of each stage's last Job that failed: the job's own one-line reason and exit code."""
        reports = {}
        for job in latest_attempts(jobs):
            prefix = (job["metadata"].get("annotations") or {}).get(PREFIX)
            if prefix and has_condition(job, "Failed"):
                report = await self.json(store, f"{prefix}/progress.json")
                if report is not None:
                    reports[job["metadata"]["name"]] = report
        return reports
