"""`KubeEmulator`: the API server in a background thread (its own asyncio loop) plus a thread-safe Python API."""

from __future__ import annotations

import asyncio
import builtins
import copy
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import yaml
from aiohttp import web

from tests.kube import errors, patching, selectors
from tests.kube.faults import FaultPlan
from tests.kube.resources import ResourceType
from tests.kube.server import ApiServer
from tests.kube.store import ObjectStore, WatchEvent

Obj = dict[str, Any]
_PATCH_TYPES = {"merge": patching.MERGE_PATCH, "json": patching.JSON_PATCH, "strategic": patching.STRATEGIC_MERGE_PATCH}


class KubeEmulator:
    """A local Kubernetes API server for tests.

    >>> with KubeEmulator() as kube:
    ...     kube.apply_crd_file("crds/finetuneruns.yaml")
    ...     kube.write_kubeconfig(tmp_path / "kubeconfig")

    Python API calls bypass HTTP (they are not counted and faults never hit them); resources are named kubectl-style
    (`jobs`, `job`, `jobs.batch`, `ftr`, `finetuneruns.kubetune.dev`).
    """

    def __init__(self, *, history_size: int = 10_000, seed: int = 0, bookmark_interval: float = 5.0) -> None:
        self.store = ObjectStore(history_size=history_size)
        self.faults = FaultPlan(seed)
        self._server = ApiServer(self.store, self.faults, bookmark_interval)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bookmark_interval(self) -> float:
        return self._server.bookmark_interval

    @bookmark_interval.setter
    def bookmark_interval(self, seconds: float) -> None:
        self._server.bookmark_interval = seconds

    def start(self) -> Self:
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_site())
            except BaseException as error:  # noqa: BLE001 - reported to the starting thread
                failure.append(error)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="kube-emulator", daemon=True)
        self._thread.start()
        started.wait(timeout=30)
        if failure:
            raise RuntimeError("the Kubernetes emulator did not start") from failure[0]
        return self

    async def _start_site(self) -> None:
        self._runner = web.AppRunner(self._server.app(), handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @staticmethod
    async def _shutdown(runner: web.AppRunner) -> None:
        """Close the site, then end whatever is left (open watch streams) so the loop closes cleanly."""
        await runner.cleanup()
        leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is None or runner is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(runner), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=30)
        self._loop = self._runner = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig for clients (kopf, kubernetes, kubectl): plain HTTP, no credentials."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "emulator",
            "preferences": {},
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {}}],
            "contexts": [
                {"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}
            ],
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # ----------------------------------------------------------------------------------------------- Python API

    def resource(self, name: str) -> ResourceType:
        with self.store.lock:
            return self.store.registry.resolve(name)

    def _namespace(self, rtype: ResourceType, namespace: str | None) -> str | None:
        return namespace if rtype.namespaced else None

    def create(self, obj: Obj, namespace: str | None = None) -> Obj:
        with self.store.lock:
            rtype = self.store.registry.for_object(obj)
        namespace = namespace or (obj.get("metadata") or {}).get("namespace")
        return copy.deepcopy(self.store.create(rtype, self._namespace(rtype, namespace), obj))

    def apply_crd(self, crd: Obj) -> Obj:
        """Create a CustomResourceDefinition (or replace an existing one of the same name)."""
        crds = self.resource("customresourcedefinitions.apiextensions.k8s.io")
        name = crd["metadata"]["name"]
        if self.store.find(crds, None, name) is None:
            return copy.deepcopy(self.store.create(crds, None, crd))
        return copy.deepcopy(self.store.update(crds, None, name, {**crd, "metadata": {**crd["metadata"]}}))

    def apply_crd_file(self, path: Path | str) -> list[Obj]:
        """Every CustomResourceDefinition document in a YAML file (e.g. the generated one in `crds/`)."""
        documents = [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc]
        crds = [doc for doc in documents if doc.get("kind") == "CustomResourceDefinition"]
        if not crds:
            raise ValueError(f"{path} holds no CustomResourceDefinition")
        return [self.apply_crd(crd) for crd in crds]

    def find(self, resource: str, name: str, namespace: str | None = "default") -> Obj | None:
        rtype = self.resource(resource)
        obj = self.store.find(rtype, self._namespace(rtype, namespace), name)
        return None if obj is None else copy.deepcopy(self.store.present(rtype, obj))

    def get(self, resource: str, name: str, namespace: str | None = "default") -> Obj:
        obj = self.find(resource, name, namespace)
        if obj is None:
            raise errors.not_found(self.resource(resource).qualified, name)
        return obj

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Obj]:
        """All objects of a resource (in one namespace, or every namespace when None), sorted by namespace/name."""
        rtype = self.resource(resource)
        by_labels, by_fields = selectors.label_selector(label_selector), selectors.field_selector(field_selector)
        return [
            copy.deepcopy(obj)
            for obj in self.store.iter_objects(rtype, self._namespace(rtype, namespace))
            if by_labels(obj) and by_fields(obj)
        ]

    def update(self, obj: Obj, subresource: str = "") -> Obj:
        with self.store.lock:
            rtype = self.store.registry.for_object(obj)
        meta = obj["metadata"]
        namespace = self._namespace(rtype, meta.get("namespace"))
        return copy.deepcopy(self.store.update(rtype, namespace, meta["name"], obj, subresource))

    def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        namespace: str | None = "default",
        *,
        patch_type: str = "merge",
        subresource: str = "",
    ) -> Obj:
        """`patch_type`: merge | json | strategic."""
        rtype = self.resource(resource)
        namespace = self._namespace(rtype, namespace)
        return copy.deepcopy(self.store.patch(rtype, namespace, name, patch, _PATCH_TYPES[patch_type], subresource))

    def patch_status(self, resource: str, name: str, status: Obj, namespace: str | None = "default") -> Obj:
        """Merge-patch `status`, through the status subresource where the resource has one."""
        rtype = self.resource(resource)
        subresource = "status" if rtype.has_status else ""
        return self.patch(resource, name, {"status": status}, namespace, subresource=subresource)

    def delete(
        self,
        resource: str,
        name: str,
        namespace: str | None = "default",
        *,
        propagation_policy: str | None = None,
    ) -> Obj:
        rtype = self.resource(resource)
        options = {"propagationPolicy": propagation_policy} if propagation_policy else {}
        return copy.deepcopy(self.store.delete(rtype, self._namespace(rtype, namespace), name, options))

    def events(self, namespace: str | None = None, involved_name: str | None = None) -> builtins.list[Obj]:
        """Core v1 and events.k8s.io/v1 Events, oldest first, optionally about one object (by name)."""
        found = self.list("events", namespace) + self.list("events.events.k8s.io", namespace)

        def about(event: Obj) -> str | None:
            return (event.get("involvedObject") or event.get("regarding") or {}).get("name")

        found = [event for event in found if involved_name is None or about(event) == involved_name]
        return sorted(found, key=lambda event: int(event["metadata"]["resourceVersion"]))

    def wait_for(
        self,
        resource: str,
        name: str,
        predicate: Callable[[Obj | None], bool],
        namespace: str | None = "default",
        timeout: float = 10.0,
    ) -> Obj | None:
        """Block until `predicate(object or None)` holds; returns the object. Raises TimeoutError with the last state."""
        rtype = self.resource(resource)
        namespace = self._namespace(rtype, namespace)
        deadline = time.monotonic() + timeout
        with self.store.changed:
            while True:
                obj = self.store.find(rtype, namespace, name)
                current = None if obj is None else copy.deepcopy(self.store.present(rtype, obj))
                if predicate(current):
                    return current
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{rtype.qualified} {namespace}/{name} did not reach the state; last: {current}")
                self.store.changed.wait(remaining)

    @contextmanager
    def watch(self, resource: str, since: str | None = None) -> Iterator[queue.Queue[WatchEvent]]:
        """Thread-side watch of every namespace: a queue of WatchEvent (initial state first, as ADDED)."""
        rtype = self.resource(resource)
        events: queue.Queue[WatchEvent] = queue.Queue()
        with self.store.lock:
            initial, _ = self.store.subscribe(rtype, since, events.put)
            for event in initial:
                events.put(event)
        try:
            yield events
        finally:
            self.store.unsubscribe(rtype, events.put)

    def compact(self) -> int:
        """Drop the watch history: watches from any earlier resourceVersion now get 410 Gone."""
        return self.store.compact()
