"""The few Kubernetes API calls the operator makes, as plain JSON over the kubernetes client's connection.

The client's configuration (in-cluster service account with token refresh, or a kubeconfig) handles auth and TLS;
requests go through its low-level `call_api` so objects stay the dicts the builder made (no model round trip).
Every call here is listed in `kubetune.operator.rbac.RULES`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import kubernetes

from kubetune.api import types as t
from kubetune.operator import labels

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
TIMEOUT_S = 30.0


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying: throttled, conflicting with another writer, or the server had a problem."""
        return self.status in (409, 429) or self.status >= 500


# Blocking client calls run in this many threads: the default pool (cores + 4) queues them behind each other when
# hundreds of runs reconcile at once.
API_THREADS = 32


def connect() -> kubernetes.client.ApiClient:
    """In a pod: the service account (token refreshed as it rotates); elsewhere: $KUBECONFIG or ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = API_THREADS  # one connection per API thread
    return kubernetes.client.ApiClient(configuration)


def _run_path(namespace: str, name: str = "") -> str:
    path = f"/apis/{t.GROUP}/{t.VERSION}/namespaces/{quote(namespace)}/{t.PLURAL}"
    return f"{path}/{quote(name)}" if name else path


_PATHS = {
    ("v1", "ConfigMap"): "/api/v1/namespaces/{ns}/configmaps",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services",
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{ns}/jobs",
    ("v1", "Event"): "/api/v1/namespaces/{ns}/events",
}


class KubeApi:
    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self.client = client
        self.instance = socket.gethostname()

    def _call(self, method: str, path: str, *, query: Mapping[str, str] | None = None, body: Any = None,
              content_type: str = "application/json") -> Obj:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        serialized = self.client.param_serialize(
            method, path, query_params=list((query or {}).items()), header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        method_, url, header_params, payload, _ = serialized
        try:
            response = self.client.call_api(method_, url, header_params=header_params, body=payload,
                                            _request_timeout=TIMEOUT_S)
        except kubernetes.client.ApiException as error:  # raised by some transports for non-2xx
            raise ApiError(error.status or 0, str(error.reason), str(error.body)) from error
        data = response.read() or b"{}"
        parsed: Obj = json.loads(data)
        if response.status >= 300:
            raise ApiError(response.status, str(parsed.get("reason") or response.reason),
                           str(parsed.get("message") or ""))
        return parsed

    async def call(self, method: str, path: str, **kwargs: Any) -> Obj:
        return await asyncio.to_thread(self._call, method, path, **kwargs)

    # --- finetuneruns -------------------------------------------------------------------------------------------

    async def get_run(self, namespace: str, name: str) -> Obj | None:
        try:
            return await self.call("GET", _run_path(namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def patch_run_status(self, namespace: str, name: str, patch: Obj) -> Obj:
        return await self.call("PATCH", _run_path(namespace, name) + "/status", body={"status": patch},
                               content_type=MERGE_PATCH)

    # --- jobs, their configmaps and services --------------------------------------------------------------------

    async def list_jobs(self, namespace: str, run: str) -> list[Obj]:
        listed = await self.call("GET", _PATHS[("batch/v1", "Job")].format(ns=quote(namespace)),
                                 query={"labelSelector": f"{labels.RUN}={run}"})
        return list(listed.get("items") or [])

    async def create(self, obj: Obj) -> bool:
        """Create `obj`; False when it already exists (it was created before: names are deterministic)."""
        path = _PATHS[(obj["apiVersion"], obj["kind"])].format(ns=quote(obj["metadata"]["namespace"]))
        try:
            await self.call("POST", path, body=obj)
        except ApiError as error:
            if error.status == 409 and error.reason == "AlreadyExists":
                return False
            raise
        return True

    async def patch_job(self, namespace: str, name: str, patch: Obj) -> Obj:
        path = _PATHS[("batch/v1", "Job")].format(ns=quote(namespace)) + f"/{quote(name)}"
        return await self.call("PATCH", path, body=patch, content_type=MERGE_PATCH)

    # --- events -------------------------------------------------------------------------------------------------

    async def post_event(self, run: Obj, kind: str, reason: str, message: str, now: str) -> None:
        meta = run["metadata"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": t.API_VERSION, "kind": t.KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid", "")},
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": labels.MANAGED_BY},
            "reportingComponent": f"{t.GROUP}/operator",
            "reportingInstance": self.instance[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.create(event)
