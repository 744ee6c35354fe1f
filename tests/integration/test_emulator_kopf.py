"""Real kopf runs against the emulator: it discovers, lists, watches, handles and patches status,
and keeps working through injected watch faults."""

from __future__ import annotations

import time
from typing import Any

import kopf
import pytest

from tests.fixtures.kube import kube  # noqa: F401 - the fixture, until tests/conftest.py registers the plugin
from tests.kube.emulator import KubeEmulator
from tests.kube.kopf_thread import kopf_operator, login_to
from tests.kube.samples import widget, widget_crd

pytestmark = pytest.mark.integration


def doubling_operator(kube: KubeEmulator) -> kopf.OperatorRegistry:  # noqa: F811
    """A tiny operator: on create and on spec change, status.doubled = 2 * spec.size."""
    registry = kopf.OperatorRegistry()
    login_to(kube.url, registry)

    @kopf.on.create("example.dev", "v1", "widgets", registry=registry)
    @kopf.on.update("example.dev", "v1", "widgets", registry=registry)
    def double(spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
        patch.status["doubled"] = spec["size"] * 2

    return registry


def doubled(expected: int) -> Any:
    return lambda obj: obj is not None and (obj.get("status") or {}).get("doubled") == expected


def test_kopf_handles_a_created_object_and_patches_its_status(kube: KubeEmulator) -> None:  # noqa: F811
    kube.apply_crd(widget_crd())
    with kopf_operator(doubling_operator(kube)):
        kube.create(widget("w1", size=4))
        kube.wait_for("widgets", "w1", doubled(8), timeout=20)
        kube.patch("widgets", "w1", {"spec": {"size": 5}})
        obj = kube.wait_for("widgets", "w1", doubled(10), timeout=20)
    assert obj is not None and obj["metadata"]["generation"] == 2
    counts = kube.faults.request_counts()
    assert counts[("list", "widgets")] >= 1 and counts[("watch", "widgets")] >= 1


def test_kopf_survives_watch_410_and_dropped_watch_connections(kube: KubeEmulator) -> None:  # noqa: F811
    """Faults strike watch requests as they are made: kopf's first four watches of widgets each break after 0.3 s
    (two with an in-stream 410, two cut off), while objects are created and changed throughout."""
    kube.apply_crd(widget_crd())
    kube.faults.inject("watch_gone", times=2, resources={"widgets"}, after_seconds=0.3)
    kube.faults.inject("watch_drop", times=2, resources={"widgets"}, after_seconds=0.3)
    with kopf_operator(doubling_operator(kube)):
        kube.create(widget("w1", size=1))
        for size in (2, 3, 4):
            kube.wait_for("widgets", "w1", lambda obj: "doubled" in (obj or {}).get("status", {}), timeout=30)
            kube.patch("widgets", "w1", {"spec": {"size": size}})
        kube.wait_for("widgets", "w1", doubled(8), timeout=30)
        deadline = time.monotonic() + 30
        while kube.faults.request_counts()[("watch", "widgets")] < 5 and time.monotonic() < deadline:
            time.sleep(0.1)  # until kopf re-established its watch after the last faulty one
        kube.create(widget("w2", size=6))
        kube.patch("widgets", "w1", {"spec": {"size": 5}})
        kube.wait_for("widgets", "w2", doubled(12), timeout=30)
        kube.wait_for("widgets", "w1", doubled(10), timeout=30)
    injected = kube.faults.injected_counts()
    assert injected[("watch_gone", "watch", "widgets")] == 2 and injected[("watch_drop", "watch", "widgets")] == 2
    assert kube.faults.request_counts()[("watch", "widgets")] >= 5


def test_kopf_run_as_a_subprocess_connects_through_kubeconfig(kube: KubeEmulator, tmp_path: Any) -> None:  # noqa: F811
    """The same operator as a `kopf run` process that finds the emulator through KUBECONFIG."""
    import os
    import subprocess
    import sys

    kube.apply_crd(widget_crd())
    source = tmp_path / "operator.py"
    source.write_text(
        "import kopf\n"
        "@kopf.on.create('example.dev', 'v1', 'widgets')\n"
        "def double(spec, patch, **_):\n"
        "    patch.status['doubled'] = spec['size'] * 2\n"
    )
    env = {**os.environ, "KUBECONFIG": str(kube.write_kubeconfig(tmp_path / "kubeconfig"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "kopf", "run", "--standalone", "-n", "default", str(source)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        kube.create(widget("w1", size=21))
        kube.wait_for("widgets", "w1", doubled(42), timeout=60)
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode(errors="replace")
    assert "Handler 'double' succeeded" in output, output
