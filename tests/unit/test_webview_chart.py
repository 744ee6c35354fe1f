"""The chart's web view: off by default; on, the operator listens on web.port and a Service of its own reaches it,
one the metrics ServiceMonitor does not select. Its access is the operator's (no RBAC rule of its own)."""

from __future__ import annotations

from typing import Any

from kubetune.operator.rbac import RULES
from kubetune.operator.settings import OperatorSettings
from tests.unit.test_chart_render import container, of_kind, plain_env, values


def web_services(value_set: str) -> list[dict[str, Any]]:
    return [s for s in of_kind(value_set, "Service") if s["metadata"]["name"].endswith("-web")]


def test_by_default_the_web_view_is_off_with_no_port_and_no_service() -> None:
    assert OperatorSettings.from_env(plain_env("defaults")).web_port == 0
    assert web_services("defaults") == []
    assert "web" not in {p["name"] for p in container("defaults")["ports"]}


def test_enabled_the_operator_serves_it_on_web_port_behind_its_own_service() -> None:
    port = values("all-on")["web"]["port"]
    assert OperatorSettings.from_env(plain_env("all-on")).web_port == port
    assert {"name": "web", "containerPort": port, "protocol": "TCP"} in container("all-on")["ports"]
    (service,) = web_services("all-on")
    assert service["spec"]["ports"] == [{"name": "web", "port": port, "targetPort": "web", "protocol": "TCP"}]
    assert service["spec"]["type"] == values("all-on")["web"]["service"]["type"]
    pod_labels = of_kind("all-on", "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (monitor,) = of_kind("all-on", "ServiceMonitor")
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_what_the_view_reads_the_operator_may_already_read_and_it_asks_for_no_write() -> None:
    for verb, resource in (("get", "finetuneruns"), ("list", "finetuneruns"), ("list", "events")):
        group = "" if resource == "events" else "kubetune.dev"
        assert any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in RULES)
