"""What keeps a Job's pod from running on a real cluster before its container starts, for `JobExecutor`.

* **Admission** refuses the pod's creation when the ServiceAccount it names does not exist in its namespace (the
  ServiceAccount admission plugin; `default` always exists, the ServiceAccount controller makes it) or its
  PriorityClass does not exist (the Priority plugin; `system-cluster-critical` and `system-node-critical` always
  do). The Job controller then records a Warning Event `FailedCreate`, `Error creating: <the API error>`, on the Job,
  creates nothing, and tries again later. The messages are the upstream ones: the API error names the pod by its
  generateName (`pods "<job>-" is forbidden: ...`).
* **Scheduling**: a pod whose `nodeSelector` matches none of the executor's nodes stays Pending with the condition
  `PodScheduled=False`, reason `Unschedulable`, and a `FailedScheduling` Event, until a node that fits appears.
  Only node labels are modelled: no taints, no resources, no affinity.

PriorityClasses and Nodes are not served by the emulator: the executor holds them (`JobExecutor.priority_classes`,
`JobExecutor.nodes`), and a test changes them to make a stuck pod go on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from tests.kube import errors
from tests.kube.emulator import KubeEmulator
from tests.kube.store import now_rfc3339

Obj = dict[str, Any]
SYSTEM_PRIORITY_CLASSES = frozenset({"system-cluster-critical", "system-node-critical"})
DEFAULT_SERVICE_ACCOUNT = "default"
NODE_NAME = "emulated-node"
DEFAULT_NODES: dict[str, dict[str, str]] = {
    NODE_NAME: {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
}


def admission_error(kube: KubeEmulator, namespace: str, generate_name: str, pod_spec: Obj,
                    priority_classes: frozenset[str] | set[str]) -> str | None:
    """The API server's refusal of the pod, or None if it would be created."""
    account = pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount") or DEFAULT_SERVICE_ACCOUNT
    if account != DEFAULT_SERVICE_ACCOUNT and kube.find("serviceaccounts", account, namespace) is None:
        return (f'pods "{generate_name}" is forbidden: error looking up service account {namespace}/{account}: '
                f'serviceaccount "{account}" not found')
    priority = pod_spec.get("priorityClassName")
    if priority and priority not in SYSTEM_PRIORITY_CLASSES and priority not in priority_classes:
        return f'pods "{generate_name}" is forbidden: no PriorityClass with name {priority} was found'
    return None


def node_for(pod_spec: Obj, nodes: Mapping[str, Mapping[str, str]]) -> str | None:
    """The first node (by name) whose labels match the pod's nodeSelector."""
    selector = pod_spec.get("nodeSelector") or {}
    return next((name for name in sorted(nodes) if all(nodes[name].get(k) == v for k, v in selector.items())), None)


def unschedulable_message(nodes: Mapping[str, Mapping[str, str]]) -> str:
    """The scheduler's message when no node matches the pod's node selector."""
    count = len(nodes)
    return (f"0/{count} nodes are available: {count} node(s) didn't match Pod's node affinity/selector. "
            f"preemption: 0/{count} nodes are available: {count} Preemption is not helpful for scheduling.")


def record_event(kube: KubeEmulator, involved: Obj, kind: str, reason: str, message: str, component: str, *,
                 repeats: bool = True) -> None:
    """Post an Event about `involved`, or count one more on the same Event, as client-go's recorder aggregates
    repeats (same object, reason and message). `repeats=False`: the message is new each time (no lookup)."""
    meta = involved["metadata"]
    now = now_rfc3339()
    for event in kube.events(meta["namespace"], involved_name=meta["name"]) if repeats else []:
        if (event.get("reason"), event.get("message"), (event.get("involvedObject") or {}).get("uid")) == (
                reason, message, meta["uid"]):
            with contextlib.suppress(errors.ApiError):
                kube.patch("events", event["metadata"]["name"],
                           {"count": int(event.get("count") or 1) + 1, "lastTimestamp": now}, meta["namespace"])
            return
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        # client-go names Events `<object>.<unix nanoseconds in hex>`; a generateName ending in "." is refused
        "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"]},
        "type": kind,
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    with contextlib.suppress(errors.ApiError):  # the namespace may be going away
        kube.create(event)
