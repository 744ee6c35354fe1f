"""The operator's web view (KUBETUNE_WEB_PORT): the cluster's FineTuneRuns and their Events, read from the API server
with the operator's own read permissions (rbac.RULES: runs get/list, events list; nothing more is asked for), and the
runs' stage outputs read from their stores. The pages and the server are kubetune.webview's, shared with `kubetune ui`.

The server answers from its own threads; API calls go through a KubeApi bound to one private event loop (aiohttp
binds a session to its loop), so a slow page never holds up kopf's loop and the reconciles on it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import kubernetes

from kubetune.api import types as t
from kubetune.operator.kube import ApiError, KubeApi, Obj
from kubetune.operator.runstore import NoStoreConfigured, StoreClients, resolve_store
from kubetune.operator.settings import OperatorSettings
from kubetune.store import StoreError
from kubetune.webview.collect import RunReader, summary
from kubetune.webview.model import FetchedFile, NotFound, RunPage, RunSummary
from kubetune.webview.server import WebView

T = TypeVar("T")
API_WAIT_S = 60.0


class ClusterRuns:
    """The runs of the namespaces the operator serves (all of them when it runs cluster-wide)."""

    def __init__(self, settings: OperatorSettings, configuration: kubernetes.client.Configuration) -> None:
        self.settings = settings
        self.kube = KubeApi(configuration)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kubetune-web-api", daemon=True)
        self._thread.start()
        self._stores = StoreClients()

    def close(self) -> None:
        self._call(self.kube.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    def _call(self, call: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(call, self.loop).result(API_WAIT_S)

    def runs(self) -> list[RunSummary]:
        paths = ([f"/apis/{t.GROUP}/{t.VERSION}/namespaces/{ns}/{t.PLURAL}" for ns in self.settings.namespaces]
                 or [f"/apis/{t.GROUP}/{t.VERSION}/{t.PLURAL}"])
        found = [summary(run) for path in paths for run in self._call(self.kube.call("GET", path)).get("items") or []]
        return sorted(found, key=lambda run: (run.namespace, run.name))

    def page(self, namespace: str, name: str) -> RunPage:
        run = self._run(namespace, name)
        uid = str(run["metadata"].get("uid") or "")
        events = self._call(self.kube.list_events(namespace, uid)) if uid else []
        return self._reader(run).page(events)

    def download(self, namespace: str, name: str, stage: str, path: str) -> FetchedFile:
        return self._reader(self._run(namespace, name)).download(stage, path)

    def _run(self, namespace: str, name: str) -> Obj:
        if self.settings.namespaces and namespace not in self.settings.namespaces:
            raise NotFound(f"no run {namespace}/{name} in the namespaces this operator serves")
        try:
            run = self._call(self.kube.get_run(namespace, name))
        except ApiError as error:
            if error.status in (400, 404):  # a name the API refuses (characters a URL let through) is no run
                raise NotFound(f"no run {namespace}/{name}") from None
            raise
        if run is None:
            raise NotFound(f"no run {namespace}/{name}")
        return run

    def _reader(self, run: Obj) -> RunReader:
        try:
            storage = t.StorageSpec.model_validate((run.get("spec") or {}).get("storage") or {})
            config = resolve_store(storage, self.settings)
            return RunReader(run, self._stores.get(config))
        except (NoStoreConfigured, StoreError, ValueError) as error:
            return RunReader(run, None, [f"the run's store: {error}"])


def serve_web(settings: OperatorSettings, configuration: kubernetes.client.Configuration,
              host: str = "0.0.0.0") -> WebView:  # a pod's port, reached through its Service
    """Start the web view on `settings.web_port` in a background thread."""
    return WebView(ClusterRuns(settings, configuration), host, settings.web_port).start()
