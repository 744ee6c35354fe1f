"""Every Kubernetes permission the operator needs, as RBAC rules: the Helm chart's ClusterRole/Role is tested
against this list, and the integration tests check that the operator's requests stay within it.

Secrets: only `get`, for the webhook URLs of `spec.notify` (operator/notify.py, NOTIFY_RULES, which the chart's
`notify.enabled: false` leaves out); store credentials reach jobs through `secretKeyRef`, and the operator's own store
reads use the credentials mounted into its pod. Pods and Events are only listed, and only for a stage Job whose pods are not all
up: why they cannot be created (the Job controller's FailedCreate Events) or started (the pod's conditions and
container states); a failed job's reason comes from its progress.json in the store.
"""

from __future__ import annotations

from typing import TypedDict

from kubetune.api.types import GROUP, PLURAL


class Rule(TypedDict):
    apiGroups: list[str]
    resources: list[str]
    verbs: list[str]


RULES: tuple[Rule, ...] = (
    # kopf lists and watches runs; it patches them for its annotations and the finalizer (keepOnDelete: false).
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "delete", "patch"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get", "delete"]},
    # The headless Service that gives multi-node training pods stable DNS names for their rendezvous.
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "list"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
)

# Unless the chart's notify.enabled is false: the webhook URLs of spec.notify, one Secret at a time by name (never
# listed or watched).
NOTIFY_RULES: tuple[Rule, ...] = (
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
)

# Only when the operator runs with peering (KUBETUNE_STANDALONE=false, several replicas): kopf's peering objects.
PEERING_RULES: tuple[Rule, ...] = (
    {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings", "clusterkopfpeerings"],
     "verbs": ["get", "list", "watch", "patch"]},
)


def allows(verb: str, group: str, resource: str, rules: tuple[Rule, ...] = RULES + NOTIFY_RULES) -> bool:
    """Whether `rules` grant `verb` on `resource` (a plural, or `plural/subresource`) of API group `group`."""
    return any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
               for rule in rules)
