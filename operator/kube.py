"""The few Kubernetes API calls the operator makes, as plain JSON over one asynchronous HTTP session.

The kubernetes client's configuration (in-cluster service account with token refresh, or a kubeconfig) supplies the
server, credentials and TLS settings; requests go out on the event loop through aiohttp (what kopf itself uses), so
hundreds of runs reconciling at once wait on sockets, not on a thread pool and the GIL: with the blocking client
in 32 threads, a call spent twice as long waiting for a thread as on the wire. Objects stay the dicts the builder
made (no model round trip). Every call here is listed in `kubetune.operator.rbac.RULES`.
"""

from __future__ import annotations

import json
import secrets
import socket
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import kubernetes
from kubernetes.client.rest import should_bypass_proxies

from kubetune.api import types as t
from kubetune.operator import labels

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
TIMEOUT_S = 30.0
# Connections to the API server at once; more requests wait for one (the API server's own fairness limits apply).
API_CONNECTIONS = 32
# Set by the Job controller on every pod it creates (Kubernetes 1.27+; `controller-uid` before).
JOB_CONTROLLER_UID = "batch.kubernetes.io/controller-uid"


class ApiError(Exception):
    """The API server answered with an error status, or could not be reached (status 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def connect() -> kubernetes.client.Configuration:
    """In a pod: the service account (token refreshed as it rotates); elsewhere: $KUBECONFIG or ~/.kube/config."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    return configuration


def ssl_context(configuration: kubernetes.client.Configuration) -> ssl.SSLContext | bool:
    """The TLS settings the kubernetes client would use (CA, client certificate, verification, server name)."""
    if not configuration.host.startswith("https://"):
        return False
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert,
                                         cadata=configuration.ca_cert_data)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif configuration.assert_hostname is False:
        context.check_hostname = False
    return context


def _proxy(configuration: kubernetes.client.Configuration) -> str | None:
    """The configured HTTP(S) proxy unless `no_proxy` exempts the API server (SOCKS proxies are not supported)."""
    proxy = configuration.proxy
    if not proxy or should_bypass_proxies(configuration.host, configuration.no_proxy or ""):
        return None
    return str(proxy)


def _run_path(namespace: str, name: str = "") -> str:
    path = f"/apis/{t.GROUP}/{t.VERSION}/namespaces/{quote(namespace)}/{t.PLURAL}"
    return f"{path}/{quote(name)}" if name else path


_PATHS = {
    ("v1", "ConfigMap"): "/api/v1/namespaces/{ns}/configmaps",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services",
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{ns}/jobs",
    ("v1", "Event"): "/api/v1/namespaces/{ns}/events",
    ("v1", "Pod"): "/api/v1/namespaces/{ns}/pods",
}


class KubeApi:
    def __init__(self, configuration: kubernetes.client.Configuration) -> None:
        self.configuration = configuration
        self.instance = socket.gethostname()
        self._session: aiohttp.ClientSession | None = None
        self._proxy = _proxy(configuration)

    def _open_session(self) -> aiohttp.ClientSession:
        """The session of the running event loop, opened on first use (aiohttp binds a session to its loop)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=API_CONNECTIONS, ssl=ssl_context(self.configuration))
            self._session = aiohttp.ClientSession(connector=connector,
                                                  timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        # Read per request (as the client's own auth settings do): the in-cluster configuration refreshes the
        # service account token as it rotates.
        token = self.configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["authorization"] = token
        return headers

    async def call(self, method: str, path: str, *, query: Mapping[str, str] | None = None, body: Any = None,
                   content_type: str = "application/json") -> Obj:
        data = None if body is None else json.dumps(body).encode()
        try:
            async with self._open_session().request(
                method, self.configuration.host + path, params=dict(query or {}), data=data,
                headers=self._headers(content_type if body is not None else None),
                proxy=self._proxy, server_hostname=self.configuration.tls_server_name or None,
            ) as response:
                payload = await response.read()
                status, reason = response.status, response.reason or ""
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ApiError(0, "Unreachable", f"{method} {path}: {type(error).__name__}: {error}") from error
        try:
            parsed: Obj = json.loads(payload or b"{}")
        except ValueError:
            parsed = {"message": payload[:200].decode("utf-8", "replace")}
        if status >= 300:
            raise ApiError(status, str(parsed.get("reason") or reason), str(parsed.get("message") or ""))
        return parsed

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

    async def list_jobs(self, namespace: str, run: str) -> tuple[list[Obj], str]:
        """The run's Jobs and the resourceVersion the list was read at."""
        listed = await self.call("GET", _PATHS[("batch/v1", "Job")].format(ns=quote(namespace)),
                                 query={"labelSelector": f"{labels.RUN}={run}"})
        return list(listed.get("items") or []), str((listed.get("metadata") or {}).get("resourceVersion") or "")

    async def create(self, obj: Obj) -> Obj | None:
        """Create `obj` and return it as stored; None when it already exists (it was created before: names are
        deterministic)."""
        path = _PATHS[(obj["apiVersion"], obj["kind"])].format(ns=quote(obj["metadata"]["namespace"]))
        try:
            return await self.call("POST", path, body=obj)
        except ApiError as error:
            if error.status == 409 and error.reason == "AlreadyExists":
                return None
            raise

    async def patch_job(self, namespace: str, name: str, patch: Obj) -> Obj:
        path = _PATHS[("batch/v1", "Job")].format(ns=quote(namespace)) + f"/{quote(name)}"
        return await self.call("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete an object, its dependents in the background (a Job's pods stop after it is gone); False when it
        was gone already."""
        path = _PATHS[(api_version, kind)].format(ns=quote(namespace)) + f"/{quote(name)}"
        try:
            await self.call("DELETE", path, body={"apiVersion": "v1", "kind": "DeleteOptions",
                                                  "propagationPolicy": "Background"})
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    # --- why a Job's pods do not run -------------------------------------------------------------------------------

    async def list_job_pods(self, namespace: str, job_uid: str) -> list[Obj]:
        """The pods of one Job, by the label the Job controller puts on them."""
        listed = await self.call("GET", _PATHS[("v1", "Pod")].format(ns=quote(namespace)),
                                 query={"labelSelector": f"{JOB_CONTROLLER_UID}={job_uid}"})
        return list(listed.get("items") or [])

    async def list_events(self, namespace: str, uid: str) -> list[Obj]:
        """The Events about one object (a Job: its controller's SuccessfulCreate / FailedCreate)."""
        listed = await self.call("GET", _PATHS[("v1", "Event")].format(ns=quote(namespace)),
                                 query={"fieldSelector": f"involvedObject.uid={uid}"})
        return list(listed.get("items") or [])

    # --- events -------------------------------------------------------------------------------------------------

    async def post_event(self, run: Obj, kind: str, reason: str, message: str, now: str) -> None:
        await self.create(event_manifest(run, kind, reason, message, now, self.instance))


def event_manifest(run: Obj, kind: str, reason: str, message: str, now: str, instance: str) -> Obj:
    """A core/v1 Event about `run`, as posted by `instance` (this operator's host). Pure."""
    meta = run["metadata"]
    return {
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
        "reportingInstance": instance[:128],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
