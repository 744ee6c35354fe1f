"""The HTTP face of the emulator: Kubernetes URL routing, discovery, CRUD, watch streams, injected faults."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.kube import errors, managed, openapi, patching, selectors, tables
from tests.kube.faults import Fault, FaultKind, FaultPlan
from tests.kube.resources import ALL_VERBS, ResourceType
from tests.kube.store import ObjectStore, WatchEvent

SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-kubetune-emulator",
    "gitCommit": "",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_TRUE = ("true", "1")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _line(event_type: str, obj: Any) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True)
class Target:
    """What a resource URL addresses."""

    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str

    @property
    def label(self) -> str:
        """The resource as counted and matched by faults: `plural` or `plural/subresource`."""
        return f"{self.rtype.plural}/{self.subresource}" if self.subresource else self.rtype.plural


class ApiServer:
    def __init__(self, store: ObjectStore, faults: FaultPlan, bookmark_interval: float = 5.0) -> None:
        self.store = store
        self.faults = faults
        self.bookmark_interval = bookmark_interval

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except errors.ApiError as error:
            return _json(error.status(), error.code, error.headers)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [part for part in request.path.split("/") if part]
        if request.method == "GET" and parts[:1] == ["openapi"]:
            self.faults.on_request("get", "discovery")
            return self._openapi(request, parts[1:])
        if request.method == "GET":
            discovery = self._discovery(parts)
            if discovery is not None:
                self.faults.on_request("get", "discovery")
                return _json(discovery)
        target = self._route(parts)
        verb = self._verb(request, target)
        fault = self.faults.on_request(verb, target.label)
        if fault is not None and fault.kind not in (FaultKind.WATCH_GONE, FaultKind.WATCH_DROP):
            raise fault.error(target.rtype.qualified, target.name or "")
        if verb == "watch":
            return await self._watch(request, target, fault)
        return await self._serve(request, verb, target)

    # --------------------------------------------------------------------------------------------- discovery

    def _discovery(self, parts: list[str]) -> dict[str, Any] | None:
        registry = self.store.registry
        with self.store.lock:
            if not parts:
                paths = ["/api", "/api/v1", "/apis", "/openapi/v2", "/openapi/v3", "/version"]
                for group, versions in registry.groups().items():
                    paths += [f"/apis/{group}"] + [f"/apis/{group}/{version}" for version in versions]
                return {"paths": sorted(paths)}
            if parts == ["version"]:
                return SERVER_VERSION
            if parts == ["api"]:
                return {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
                }
            if parts == ["apis"]:
                return {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [self._group(group, versions) for group, versions in registry.groups().items()],
                }
            if len(parts) == 2 and parts[0] == "apis":
                served = registry.groups().get(parts[1])
                if served is None:
                    raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
                return {"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1], served)}
            if (parts[0] == "api" and len(parts) == 2) or (parts[0] == "apis" and len(parts) == 3):
                group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
                types = registry.in_group_version(group, version)
                if not types:
                    raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
                return {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": types[0].api_version,
                    "resources": self._resource_list(types),
                }
        return None

    def _openapi(self, request: web.Request, parts: list[str]) -> web.Response:
        """`/openapi/v2`, the `/openapi/v3` index and its per-group-version documents (tests/kube/openapi.py)."""
        if parts == ["v2"]:
            if openapi.OPENAPI_V2_PROTOBUF in request.headers.get("Accept", ""):
                return web.Response(body=openapi.v2_document_protobuf(), content_type=openapi.OPENAPI_V2_PROTOBUF)
            return _json(openapi.v2_document_json())
        registry = self.store.registry
        with self.store.lock:
            by_gv: dict[str, list[ResourceType]] = {}
            for rtype in registry:
                by_gv.setdefault(openapi.v3_path(rtype.group, rtype.version), []).append(rtype)
        if parts == ["v3"]:
            index = {
                path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={openapi.document_hash(self._gv_doc(types))}"}
                for path, types in sorted(by_gv.items())
            }
            return _json({"paths": index})
        types = by_gv.get("/".join(parts[1:])) if parts[:1] == ["v3"] else None
        if not types:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        return _json(self._gv_doc(types))

    @staticmethod
    def _gv_doc(types: list[ResourceType]) -> dict[str, Any]:
        return openapi.group_version_document(types)

    @staticmethod
    def _group(group: str, versions: list[str]) -> dict[str, Any]:
        entries = [{"groupVersion": f"{group}/{version}", "version": version} for version in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    @staticmethod
    def _resource_list(types: list[ResourceType]) -> list[dict[str, Any]]:
        resources = []
        for rtype in sorted(types, key=lambda r: r.plural):
            resources.append(
                {
                    "name": rtype.plural,
                    "singularName": rtype.singular,
                    "namespaced": rtype.namespaced,
                    "kind": rtype.kind,
                    "verbs": list(ALL_VERBS),
                    "shortNames": list(rtype.short_names),
                    "categories": list(rtype.categories),
                }
            )
            if rtype.has_status:
                resources.append(
                    {
                        "name": f"{rtype.plural}/status",
                        "singularName": "",
                        "namespaced": rtype.namespaced,
                        "kind": rtype.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return resources

    # ----------------------------------------------------------------------------------------------- routing

    def _route(self, parts: list[str]) -> Target:
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        lookup = self.store.registry.lookup
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            scoped = lookup(group, version, rest[2])
            if scoped is not None and scoped.namespaced:  # not e.g. /api/v1/namespaces/<name>/status
                namespace, rest = rest[1], rest[2:]
        rtype = lookup(group, version, rest[0])
        if rtype is None or len(rest) > 3 or (namespace is not None and not rtype.namespaced):
            raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")
        return Target(rtype, namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else "")

    @staticmethod
    def _verb(request: web.Request, target: Target) -> str:
        named = target.name is not None
        verbs = {
            ("GET", True): "get",
            ("PUT", True): "update",
            ("PATCH", True): "patch",
            ("DELETE", True): "delete",
            ("POST", False): "create",
            ("DELETE", False): "deletecollection",
            ("GET", False): "watch" if request.query.get("watch", "").lower() in _TRUE else "list",
        }
        verb = verbs.get((request.method, named))
        if verb is None or (target.subresource and verb not in ("get", "update", "patch")):
            raise errors.ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}")
        return verb

    # ------------------------------------------------------------------------------------------------- CRUD

    async def _serve(self, request: web.Request, verb: str, target: Target) -> web.Response:
        store, rtype, namespace, name = self.store, target.rtype, target.namespace, target.name or ""
        as_table = tables.wants_table(request.headers.get("Accept", ""))
        if verb == "get":
            obj = store.get(rtype, namespace, name)
            return _json(tables.table(rtype, [obj], obj["metadata"]["resourceVersion"]) if as_table else obj)
        if verb == "list":
            listed = self._list(request, target)
            if as_table:
                return _json(tables.table(rtype, listed["items"], listed["metadata"]["resourceVersion"],
                                          listed["metadata"].get("continue")))
            return _json(listed)
        query = request.query
        if query.get("dryRun"):  # refused loudly rather than persisted: a test must not believe nothing was written
            raise errors.bad_request("the emulator does not model dryRun (tests/kube/README.md)")
        manager = managed.manager_name(query.get("fieldManager"), request.headers.get("User-Agent", ""))
        strict = query.get("fieldValidation", "") == "Strict"
        if verb == "create":
            return _json(store.create(rtype, namespace, await self._body(request), manager=manager, strict=strict), 201)
        if verb == "update":
            body = await self._body(request)
            return _json(store.update(rtype, namespace, name, body, target.subresource, manager=manager, strict=strict))
        if verb == "patch":
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type == patching.APPLY_PATCH:
                body = managed.parse_apply_body(await request.read())
                manager = query.get("fieldManager", "")  # apply never falls back to the user agent
            else:
                body = await self._body(request)
            force = query.get("force", "").lower() in _TRUE
            patched = store.patch(
                rtype, namespace, name, body, content_type, target.subresource,
                manager=manager, strict=strict, force=force,
            )
            return _json(patched)
        options = await self._delete_options(request)
        if options.get("dryRun"):
            raise errors.bad_request("the emulator does not model dryRun (tests/kube/README.md)")
        if verb == "delete":
            return _json(store.delete(rtype, namespace, name, options))
        deleted = [
            store.delete(rtype, obj["metadata"].get("namespace"), obj["metadata"]["name"], options)
            for obj in self._matching(request, target)
        ]
        return _json({"apiVersion": rtype.api_version, "kind": f"{rtype.kind}List", "metadata": {}, "items": deleted})

    @staticmethod
    async def _body(request: web.Request) -> Any:
        try:
            return await request.json(loads=json.loads)
        except json.JSONDecodeError as error:
            raise errors.bad_request(f"the request body is not JSON: {error}") from None

    async def _delete_options(self, request: web.Request) -> dict[str, Any]:
        options = (await self._body(request) if request.can_read_body else None) or {}
        for key in ("propagationPolicy", "gracePeriodSeconds"):
            if key in request.query:
                options[key] = request.query[key]
        return options if isinstance(options, dict) else {}

    def _matching(self, request: web.Request, target: Target) -> list[dict[str, Any]]:
        by_labels = selectors.label_selector(request.query.get("labelSelector"))
        by_fields = selectors.field_selector(request.query.get("fieldSelector"))
        return [
            obj for obj in self.store.iter_objects(target.rtype, target.namespace) if by_labels(obj) and by_fields(obj)
        ]

    def _list(self, request: web.Request, target: Target) -> dict[str, Any]:
        """LIST with selectors and chunking (`limit` + an opaque `continue` token that pins the first page's rv)."""
        with self.store.lock:
            snapshot_rv = self.store.resource_version
            items = self._matching(request, target)
        token = request.query.get("continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token))
                snapshot_rv, after = state["rv"], tuple(state["after"])
            except (ValueError, KeyError, TypeError):
                raise errors.bad_request("invalid continue token") from None
            items = [obj for obj in items if (obj["metadata"].get("namespace", ""), obj["metadata"]["name"]) > after]
        metadata: dict[str, Any] = {"resourceVersion": str(snapshot_rv)}
        limit = int(request.query.get("limit") or 0)
        if limit and len(items) > limit:
            items = items[:limit]
            last = items[-1]["metadata"]
            state = {"rv": snapshot_rv, "after": [last.get("namespace", ""), last["name"]]}
            metadata["continue"] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
            metadata["remainingItemCount"] = 0
        rtype = target.rtype
        return {"apiVersion": rtype.api_version, "kind": f"{rtype.kind}List", "metadata": metadata, "items": items}

    # ------------------------------------------------------------------------------------------------ watch

    async def _watch(self, request: web.Request, target: Target, fault: Fault | None) -> web.StreamResponse:
        rtype, query = target.rtype, request.query
        since = query.get("resourceVersion")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        if fault is not None and fault.kind is FaultKind.WATCH_GONE and fault.after_seconds <= 0:
            return await self._send_error(request, response, fault.error(rtype.qualified, ""))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()

        def deliver(event: WatchEvent) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        try:
            initial, last_rv = self.store.subscribe(rtype, since, deliver)
        except errors.ApiError as error:
            if error.code != 410:
                raise
            return await self._send_error(request, response, error)
        try:
            await response.prepare(request)
            stream = _WatchFilter(self.store, target, query.get("labelSelector"), query.get("fieldSelector"),
                                  tables.wants_table(request.headers.get("Accept", "")))
            for event in initial:
                await stream.send(response, event)
            if query.get("sendInitialEvents", "").lower() in _TRUE and since in (None, "", "0"):
                await response.write(self._bookmark(rtype, last_rv, initial_events_end=True))
            await self._stream(request, response, queue, stream, fault, last_rv)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unsubscribe(rtype, deliver)
        return response

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        queue: asyncio.Queue[WatchEvent],
        stream: _WatchFilter,
        fault: Fault | None,
        last_rv: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        timeout = float(request.query.get("timeoutSeconds") or 0)
        deadline = loop.time() + timeout if timeout > 0 else math.inf
        strike_at = loop.time() + fault.after_seconds if fault is not None else math.inf
        bookmarks = request.query.get("allowWatchBookmarks", "").lower() in _TRUE
        next_bookmark = loop.time() + self.bookmark_interval
        while True:
            wake = min(deadline, strike_at, next_bookmark if bookmarks else math.inf)
            try:
                event = await asyncio.wait_for(queue.get(), None if wake == math.inf else max(0.0, wake - loop.time()))
            except TimeoutError:
                now = loop.time()
                if now >= strike_at and fault is not None:
                    if fault.kind is FaultKind.WATCH_DROP:
                        assert request.transport is not None
                        request.transport.abort()  # no final chunk: the client sees a broken stream
                        raise ConnectionResetError("injected watch drop") from None
                    await response.write(_line("ERROR", fault.error(stream.target.rtype.qualified, "").status()))
                    return
                if now >= deadline:
                    return
                await response.write(self._bookmark(stream.target.rtype, last_rv))
                next_bookmark = now + self.bookmark_interval
                continue
            last_rv = event.rv
            await stream.send(response, event)

    @staticmethod
    def _bookmark(rtype: ResourceType, rv: int, initial_events_end: bool = False) -> bytes:
        metadata: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_events_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        return _line("BOOKMARK", {"apiVersion": rtype.api_version, "kind": rtype.kind, "metadata": metadata})

    @staticmethod
    async def _send_error(
        request: web.Request, response: web.StreamResponse, error: errors.ApiError
    ) -> web.StreamResponse:
        """Watch errors arrive in-stream with HTTP 200, as on the real server."""
        await response.prepare(request)
        await response.write(_line("ERROR", error.status()))
        return response


class _WatchFilter:
    """Namespace/label/field filtering of one watch, with the real server's membership transitions:
    an object that starts matching arrives as ADDED, one that stops matching as DELETED. Asked for Tables (`kubectl
    get -w`), each event carries a one-row Table, the column definitions only in the stream's first, as the server
    sends them."""

    def __init__(
        self, store: ObjectStore, target: Target, labels: str | None, fields: str | None, as_table: bool = False
    ) -> None:
        self.store, self.target = store, target
        self._labels, self._fields = selectors.label_selector(labels), selectors.field_selector(fields)
        self._as_table, self._headers_sent = as_table, False

    def _matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        namespace = self.target.namespace
        if namespace is not None and obj["metadata"].get("namespace") != namespace:
            return False
        return self._labels(obj) and self._fields(obj)

    async def send(self, response: web.StreamResponse, event: WatchEvent) -> None:
        now = self._matches(event.obj)
        before = event.type != "ADDED" and self._matches(event.old)
        event_type = event.type
        if event.type == "MODIFIED" and now != before:
            event_type = "ADDED" if now else "DELETED"
        if not (now or before):
            return
        obj = self.store.present(self.target.rtype, event.obj)
        if self._as_table:
            obj = tables.table(self.target.rtype, [obj], obj["metadata"]["resourceVersion"])
            if self._headers_sent:
                obj["columnDefinitions"] = None
            self._headers_sent = True
        await response.write(_line(event_type, obj))
