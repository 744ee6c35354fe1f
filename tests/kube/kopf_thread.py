"""Run a real kopf operator in a background thread against the emulator (for in-process integration tests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

import kopf


def login_to(url: str, registry: kopf.OperatorRegistry) -> None:
    """Make `registry`'s operator connect to `url` over plain HTTP without credentials."""

    @kopf.on.login(registry=registry)
    def _login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True, default_namespace="default")


@contextmanager
def kopf_operator(
    registry: kopf.OperatorRegistry,
    *,
    namespaces: Collection[str] = ("default",),
    ready_timeout: float = 30.0,
    stop_timeout: float = 30.0,
    **operator_kwargs: Any,
) -> Iterator[threading.Thread]:
    """`kopf.operator(standalone=True, ...)` in a thread; yields once kopf reports ready, stops it on exit.
    Register a login handler first (see `login_to`). An error that kills the operator is re-raised on exit."""
    ready, stop = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(
                kopf.operator(
                    registry=registry,
                    standalone=True,
                    namespaces=list(namespaces),
                    ready_flag=ready,
                    stop_flag=stop,
                    **operator_kwargs,
                )
            )
        except BaseException as error:  # noqa: BLE001 - reported to the test thread
            failures.append(error)
            ready.set()

    thread = threading.Thread(target=run, name="kopf-operator", daemon=True)
    thread.start()
    if not ready.wait(ready_timeout) or failures:
        stop.set()
        raise RuntimeError("kopf did not become ready") from (failures[0] if failures else None)
    try:
        yield thread
    finally:
        stop.set()
        thread.join(stop_timeout)
        if thread.is_alive():
            raise RuntimeError(f"kopf did not stop within {stop_timeout}s")
        if failures:
            raise RuntimeError("kopf failed while running") from failures[0]
