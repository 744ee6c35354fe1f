"""The operator's API client: JSON over one aiohttp session, credentials from the kubernetes configuration, API
errors as ApiError with the server's reason, an unreachable server as status 0."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import kubernetes
import pytest
from aiohttp import web

from kubetune.operator.kube import ApiError, KubeApi

Seen = list[dict[str, Any]]


async def with_server(handler: Callable[[web.Request], Awaitable[web.Response]],
                      body: Callable[[KubeApi], Awaitable[Any]], token: str | None = None) -> Any:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    configuration = kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}")
    if token:
        configuration.api_key = {"BearerToken": f"Bearer {token}"}  # as the kubeconfig and in-cluster loaders set it
    api = KubeApi(configuration)
    try:
        return await body(api)
    finally:
        await api.close()
        await runner.cleanup()


def recording(seen: Seen, status: int = 200, reply: dict[str, Any] | None = None) -> Callable[..., Any]:
    async def handler(request: web.Request) -> web.Response:
        seen.append({"method": request.method, "path": request.path, "query": dict(request.query),
                     "headers": request.headers.copy(), "body": await request.text()})
        return web.json_response(reply if reply is not None else {"kind": "Thing"}, status=status)
    return handler


def test_requests_carry_the_bearer_token_json_and_the_merge_patch_type() -> None:
    seen: Seen = []

    async def calls(api: KubeApi) -> Any:
        listed = await api.list_jobs("team-a", "demo")
        await api.patch_run_status("team-a", "demo", {"phase": "Running"})
        return listed

    listed = asyncio.run(with_server(recording(seen, reply={"metadata": {"resourceVersion": "42"},
                                                            "items": [{"kind": "Job"}]}), calls, token="s3cr3t"))
    assert listed == ([{"kind": "Job"}], "42")  # the Jobs and the resourceVersion they were listed at
    listing, patch = seen
    assert listing["method"] == "GET" and listing["path"] == "/apis/batch/v1/namespaces/team-a/jobs"
    assert listing["query"] == {"labelSelector": "kubetune.dev/run=demo"}
    assert listing["headers"]["Authorization"] == "Bearer s3cr3t"
    assert patch["method"] == "PATCH" and patch["path"].endswith("/finetuneruns/demo/status")
    assert patch["headers"]["Content-Type"] == "application/merge-patch+json"
    assert json.loads(patch["body"]) == {"status": {"phase": "Running"}}


def test_create_returns_the_stored_object_or_none_when_it_already_exists() -> None:
    metadata = {"name": "c", "namespace": "default"}
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}

    async def create(api: KubeApi) -> Any:
        return await api.create(configmap)

    stored = {**configmap, "metadata": {**metadata, "uid": "u-1"}}
    assert asyncio.run(with_server(recording([], 201, stored), create)) == stored
    exists = {"kind": "Status", "reason": "AlreadyExists", "message": "configmaps \"c\" already exists"}
    assert asyncio.run(with_server(recording([], 409, exists), create)) is None


def test_an_error_status_raises_api_error_with_the_servers_reason() -> None:
    async def get(api: KubeApi) -> Any:
        return await api.patch_job("default", "j", {"spec": {"suspend": True}})

    reply = {"kind": "Status", "reason": "Invalid", "message": "spec.template: field is immutable"}
    with pytest.raises(ApiError) as raised:
        asyncio.run(with_server(recording([], 422, reply), get))
    assert (raised.value.status, raised.value.reason) == (422, "Invalid")
    assert "field is immutable" in raised.value.message


def test_an_unreachable_server_is_status_0_and_a_missing_run_is_none() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = KubeApi(kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}"))

    async def get() -> Any:
        try:
            return await api.get_run("default", "demo")
        finally:
            await api.close()

    with pytest.raises(ApiError) as raised:
        asyncio.run(get())
    assert raised.value.status == 0 and raised.value.reason == "Unreachable"
    missing = {"kind": "Status", "reason": "NotFound", "message": "not found"}
    assert asyncio.run(with_server(recording([], 404, missing), lambda api: api.get_run("default", "demo"))) is None
