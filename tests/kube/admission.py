"""Admission of the built-in kinds we create: the API server's defaulting (scheme defaults, then the create
strategy), its validation on create and on update (immutable fields), and Pod Security Admission, mirrored from
kube-apiserver's pkg/apis/*/validation, pkg/apis/*/v1/defaults.go and the registry strategies.

`admit(group_resource, obj, old)` defaults `obj` in place and returns the causes of a 422 Invalid (the server's
`field: Invalid value: ...: message` lines); `enforce_pod_security(...)` raises the 403 Forbidden of PSA.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Callable
from typing import Any

from tests.kube import pod_security, podspec
from tests.kube import validation as v

Obj = dict[str, Any]
GroupResource = tuple[str, str]

NAMESPACES: GroupResource = ("", "namespaces")
PODS: GroupResource = ("", "pods")
SERVICES: GroupResource = ("", "services")
CONFIGMAPS: GroupResource = ("", "configmaps")
SECRETS: GroupResource = ("", "secrets")
EVENTS: GroupResource = ("", "events")
JOBS: GroupResource = ("batch", "jobs")
DEPLOYMENTS: GroupResource = ("apps", "deployments")
RBAC = "rbac.authorization.k8s.io"
ROLES: GroupResource = (RBAC, "roles")
CLUSTER_ROLES: GroupResource = (RBAC, "clusterroles")
ROLE_BINDINGS: GroupResource = (RBAC, "rolebindings")
CLUSTER_ROLE_BINDINGS: GroupResource = (RBAC, "clusterrolebindings")

MAX_DATA_SIZE = 1024 * 1024  # ConfigMap and Secret payloads (core.MaxConfigMapSize, core.MaxSecretSize)
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
JOB_NAME = "batch.kubernetes.io/job-name"
LEGACY_CONTROLLER_UID = "controller-uid"
LEGACY_JOB_NAME = "job-name"
_SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
_FINALIZERS = ("kubernetes", "orphan", "foregroundDeletion")  # standard finalizers that need no domain

# ----------------------------------------------------------------------------------------------------- metadata

_NAME_RULES: dict[GroupResource, Callable[[str], list[str]]] = {
    NAMESPACES: v.dns1123_label,
    SERVICES: v.dns1035_label,
    ROLES: v.path_segment_name,
    CLUSTER_ROLES: v.path_segment_name,
    ROLE_BINDINGS: v.path_segment_name,
    CLUSTER_ROLE_BINDINGS: v.path_segment_name,
}


def name_causes(group_resource: GroupResource, name: str) -> list[str]:
    """The kind's name rule (most kinds: an RFC 1123 subdomain; Services: a DNS-1035 label). The server reports
    these at `metadata.name`."""
    rule = _NAME_RULES.get(group_resource, v.dns1123_subdomain)
    return v.each("metadata.name", name, rule(name))


def metadata_causes(meta: Obj) -> list[str]:
    """ValidateObjectMeta's syntax rules: label keys and values, annotation keys and size, finalizer names, one
    controller among the owner references."""
    causes = v.labels("metadata.labels", meta.get("labels"))
    causes += podspec.annotation_causes("metadata.annotations", meta.get("annotations"))
    finalizers = meta.get("finalizers")
    for finalizer in finalizers if isinstance(finalizers, list) else []:
        messages = v.qualified_name(str(finalizer))
        if not messages and "/" not in str(finalizer) and finalizer not in _FINALIZERS:
            messages = ["name is neither a standard finalizer name nor is it fully qualified"]
        causes += v.each("metadata.finalizers", finalizer, messages)
    refs = meta.get("ownerReferences") or []
    if sum(1 for ref in refs if isinstance(ref, dict) and ref.get("controller")) > 1:
        causes.append(v.invalid("metadata.ownerReferences", refs, "Only one reference can have Controller set to true"))
    return causes


def _immutable(path: str, new: Any, old: Any) -> list[str]:
    return [] if new == old else [v.invalid(path, new, "field is immutable")]


# -------------------------------------------------------------------------------------------------------- Jobs


def default_job(job: Obj, creating: bool) -> None:
    """SetDefaults_Job (batch/v1 defaults.go), then, on create, the strategy's generated selector and labels."""
    spec = job.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = spec["parallelism"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("backoffLimit", 2**31 - 1 if spec.get("backoffLimitPerIndex") is not None else 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    policy = spec.get("podFailurePolicy")
    for rule in (policy.get("rules") or []) if isinstance(policy, dict) else []:
        for pattern in rule.get("onPodConditions") or []:
            pattern.setdefault("status", "True")
    spec.setdefault("podReplacementPolicy", "Failed" if policy else "TerminatingOrFailed")
    template = spec.setdefault("template", {})
    if not isinstance(template, dict):
        return
    template_labels = (template.get("metadata") or {}).get("labels")
    if template_labels and not job["metadata"].get("labels"):
        job["metadata"]["labels"] = dict(template_labels)
    podspec.default_pod_template(template)
    if creating and not spec.get("manualSelector"):
        uid, name = job["metadata"]["uid"], job["metadata"]["name"]
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        for key, value in ((CONTROLLER_UID, uid), (JOB_NAME, name), (LEGACY_CONTROLLER_UID, uid),
                           (LEGACY_JOB_NAME, name)):
            labels.setdefault(key, value)
        spec.setdefault("selector", {"matchLabels": {CONTROLLER_UID: uid}})


def _selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        present = key in labels
        if (operator == "In" and labels.get(key) not in values) or (operator == "NotIn" and labels.get(key) in values):
            return False
        if (operator == "Exists" and not present) or (operator == "DoesNotExist" and present):
            return False
    return True


def _label_selector(selector: Any, path: str) -> list[str]:
    if not isinstance(selector, dict):
        return [v.required(path)]
    causes = v.labels(f"{path}.matchLabels", selector.get("matchLabels"))
    for index, expression in enumerate(selector.get("matchExpressions") or []):
        at = f"{path}.matchExpressions[{index}]"
        operator, values = expression.get("operator"), expression.get("values") or []
        causes += v.each(f"{at}.key", expression.get("key", ""), v.qualified_name(expression.get("key", "")))
        if operator in ("In", "NotIn") and not values:
            causes.append(v.required(f"{at}.values", "must be specified when `operator` is 'In' or 'NotIn'"))
        elif operator in ("Exists", "DoesNotExist") and values:
            causes.append(v.forbidden(f"{at}.values", "may not be specified when `operator` is 'Exists' or "
                                                        "'DoesNotExist'"))
        elif operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            causes.append(v.invalid(f"{at}.operator", operator, "not a valid selector operator"))
    return causes


def _generated_selector(job: Obj) -> list[str]:
    spec, meta = job["spec"], job["metadata"]
    if spec.get("manualSelector") or not isinstance(spec.get("selector"), dict):
        return []
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    expected = {CONTROLLER_UID: meta["uid"], JOB_NAME: meta["name"], LEGACY_CONTROLLER_UID: meta["uid"],
                LEGACY_JOB_NAME: meta["name"]}
    causes = [v.invalid(f"spec.template.metadata.labels[{key}]", labels.get(key, ""), f"must be '{value}'")
              for key, value in expected.items() if labels.get(key) != value]
    if not _selector_matches(spec["selector"], expected):
        causes.append(v.invalid("spec.selector", spec["selector"], "`selector` not auto-generated"))
    return causes


def _pod_failure_policy(spec: Obj, path: str) -> list[str]:
    policy = spec["podFailurePolicy"]
    rules = policy.get("rules") or [] if isinstance(policy, dict) else []
    causes = [v.too_many(f"{path}.rules", len(rules), 20)] if len(rules) > 20 else []
    pod = (spec.get("template") or {}).get("spec") or {}
    names = {c.get("name") for c in [*(pod.get("containers") or []), *(pod.get("initContainers") or [])]}
    actions = ("Count", "FailIndex", "FailJob", "Ignore")
    for index, rule in enumerate(rules):
        at = f"{path}.rules[{index}]"
        action = rule.get("action", "")
        if not action:
            causes.append(v.required(f"{at}.action", "valid values: " + str(list(actions)).replace("'", '"')))
        elif action == "FailIndex" and spec.get("backoffLimitPerIndex") is None:
            causes.append(v.invalid(f"{at}.action", action, "requires the backoffLimitPerIndex to be set"))
        elif action not in actions:
            causes.append(v.unsupported(f"{at}.action", action, actions))
        on_exit, on_conditions = rule.get("onExitCodes"), rule.get("onPodConditions") or []
        if on_exit is not None:
            causes += _on_exit_codes(on_exit, f"{at}.onExitCodes", names)
        if len(on_conditions) > 20:
            causes.append(v.too_many(f"{at}.onPodConditions", len(on_conditions), 20))
        for number, pattern in enumerate(on_conditions):
            where = f"{at}.onPodConditions[{number}]"
            causes += v.each(f"{where}.type", pattern.get("type", ""), v.qualified_name(pattern.get("type", "")))
            if pattern.get("status") not in ("False", "True", "Unknown"):
                causes.append(v.unsupported(f"{where}.status", pattern.get("status"), ("False", "True", "Unknown")))
        if on_exit is not None and on_conditions:
            causes.append(f"{at}: Invalid value: specifying both OnExitCodes and OnPodConditions is not supported")
        if on_exit is None and not on_conditions:
            causes.append(f"{at}: Invalid value: specifying one of OnExitCodes and OnPodConditions is required")
    return causes


def _on_exit_codes(requirement: Obj, path: str, container_names: set[Any]) -> list[str]:
    causes: list[str] = []
    operator = requirement.get("operator", "")
    if not operator:
        causes.append(v.required(f"{path}.operator", 'valid values: ["In" "NotIn"]'))
    elif operator not in ("In", "NotIn"):
        causes.append(v.unsupported(f"{path}.operator", operator, ("In", "NotIn")))
    name = requirement.get("containerName")
    if name is not None and name not in container_names:
        causes.append(v.invalid(f"{path}.containerName", name,
                                "must be one of the container or initContainer names in the pod template"))
    values = requirement.get("values") or []
    if not values:
        causes.append(v.invalid(f"{path}.values", values, "at least one value is required"))
    elif len(values) > 255:
        causes.append(v.too_many(f"{path}.values", len(values), 255))
    seen: set[int] = set()
    for index, value in enumerate(values):
        if operator == "In" and value == 0:
            causes.append(v.invalid(f"{path}.values[{index}]", value, "must not be 0 for the In operator"))
        if value in seen:
            causes.append(v.duplicate(f"{path}.values[{index}]", value))
        seen.add(value)
    if values != sorted(values):
        causes.append(v.invalid(f"{path}.values", values, "must be ordered"))
    return causes


def validate_job_spec(spec: Obj) -> list[str]:
    """validateJobSpec + ValidateJobSpec: counts, completion mode, policies, the pod template, the selector."""
    causes: list[str] = []
    for field in ("parallelism", "completions", "activeDeadlineSeconds", "backoffLimit", "ttlSecondsAfterFinished",
                  "backoffLimitPerIndex", "maxFailedIndexes"):
        causes += v.nonnegative(f"spec.{field}", spec.get(field))
    indexed = spec.get("completionMode") == "Indexed"
    if spec.get("maxFailedIndexes") is not None and spec.get("backoffLimitPerIndex") is None:
        causes.append(v.required("spec.backoffLimitPerIndex", "when maxFailedIndexes is specified"))
    if spec.get("completionMode") not in ("NonIndexed", "Indexed"):
        causes.append(v.unsupported("spec.completionMode", spec.get("completionMode"), ("NonIndexed", "Indexed")))
    elif indexed:
        if spec.get("completions") is None:
            causes.append(v.required("spec.completions", "when completion mode is Indexed"))
        if (spec.get("parallelism") or 0) > 100_000:
            causes.append(v.invalid("spec.parallelism", spec["parallelism"],
                                    "must be less than or equal to 100000 when completion mode is Indexed"))
    else:
        for field in ("backoffLimitPerIndex", "maxFailedIndexes"):
            if spec.get(field) is not None:
                causes.append(v.invalid(f"spec.{field}", spec[field], "requires indexed completion mode"))
    if spec.get("podFailurePolicy") is not None:
        causes += _pod_failure_policy(spec, "spec.podFailurePolicy")
    replacement = spec.get("podReplacementPolicy")
    allowed = ("Failed",) if spec.get("podFailurePolicy") is not None else ("Failed", "TerminatingOrFailed")
    if replacement not in allowed:
        causes.append(v.unsupported("spec.podReplacementPolicy", replacement, allowed))
    causes += podspec.validate_pod_template(spec.get("template"), "spec.template")
    restart = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
    if restart in ("Always", "", None):
        causes.append(v.required("spec.template.spec.restartPolicy", 'valid values: "OnFailure", "Never"'))
    elif restart not in ("OnFailure", "Never"):
        causes.append(v.unsupported("spec.template.spec.restartPolicy", restart, ("OnFailure", "Never")))
    elif spec.get("podFailurePolicy") is not None and restart != "Never":
        causes.append(v.invalid("spec.template.spec.restartPolicy", restart,
                                'only "Never" is supported when podFailurePolicy is specified'))
    causes += _label_selector(spec.get("selector"), "spec.selector")
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if isinstance(spec.get("selector"), dict) and not _selector_matches(spec["selector"], labels):
        causes.append(v.invalid("spec.template.metadata.labels", labels, "`selector` does not match template "
                                                                         "`labels`"))
    return causes


def validate_job(job: Obj) -> list[str]:
    spec = job["spec"]
    causes = _generated_selector(job) + validate_job_spec(spec)
    if spec.get("completionMode") == "Indexed" and (spec.get("completions") or 0) > 0:
        # The controller names each pod's hostname `<job>-<index>`: it must stay a DNS label.
        hostname = f"{job['metadata']['name']}-{spec['completions'] - 1}"
        if v.dns1123_label(hostname):
            causes.append(v.invalid("metadata.name", job["metadata"]["name"],
                                    f"will not able to create pod with invalid DNS label: {hostname}"))
    return causes


def _scheduling_directives_free(template: Any, other: Any) -> Any:
    """`template` with the fields a suspended, never-started Job may change replaced by `other`'s."""
    if not isinstance(template, dict) or not isinstance(other, dict):
        return template
    result = copy.deepcopy(template)
    meta, other_meta = result.setdefault("metadata", {}), other.get("metadata") or {}
    for key in ("labels", "annotations"):
        meta.pop(key, None)
        if key in other_meta:
            meta[key] = other_meta[key]
    spec, other_spec = result.setdefault("spec", {}), other.get("spec") or {}
    for key in ("nodeSelector", "tolerations", "schedulingGates"):
        spec.pop(key, None)
        if key in other_spec:
            spec[key] = other_spec[key]
    affinity = dict(spec.get("affinity") or {})
    affinity.pop("nodeAffinity", None)
    if (other_spec.get("affinity") or {}).get("nodeAffinity") is not None:
        affinity["nodeAffinity"] = other_spec["affinity"]["nodeAffinity"]
    spec.pop("affinity", None)
    if affinity:
        spec["affinity"] = affinity
    return result


def validate_job_update(job: Obj, old: Obj) -> list[str]:
    """ValidateJobSpecUpdate: the template is immutable, except the scheduling directives, labels and annotations
    of a Job that is suspended and never started (status.startTime unset); selector, completionMode,
    podFailurePolicy, backoffLimitPerIndex, managedBy and successPolicy never change; completions only in
    tandem with parallelism for Indexed Jobs (elastic Indexed Jobs)."""
    spec, old_spec = job["spec"], old.get("spec") or {}
    causes = validate_job_spec(spec)
    if spec.get("completionMode") == "Indexed" and spec.get("completions") != old_spec.get("completions"):
        if spec.get("completions") is not None and spec.get("completions") != spec.get("parallelism"):
            causes.append(v.invalid("spec.completions", spec["completions"],
                                    "can only be modified in tandem with spec.parallelism"))
    else:
        causes += _immutable("spec.completions", spec.get("completions"), old_spec.get("completions"))
    causes += _immutable("spec.selector", spec.get("selector"), old_spec.get("selector"))
    old_template = old_spec.get("template")
    if old_spec.get("suspend") and not (old.get("status") or {}).get("startTime"):
        old_template = _scheduling_directives_free(old_template, spec.get("template"))
    causes += _immutable("spec.template", spec.get("template"), old_template)
    for field in ("completionMode", "podFailurePolicy", "backoffLimitPerIndex", "managedBy", "successPolicy"):
        causes += _immutable(f"spec.{field}", spec.get(field), old_spec.get(field))
    return causes


# ------------------------------------------------------------------------------------------------- Deployments


def default_deployment(deployment: Obj) -> None:
    """apps/v1 SetDefaults_Deployment (and the pod template's defaults)."""
    spec = deployment.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    if isinstance(spec.get("template"), dict):
        podspec.default_pod_template(spec["template"])


def validate_deployment(deployment: Obj, old: Obj | None) -> list[str]:
    spec = deployment["spec"]
    causes: list[str] = []
    for field in ("replicas", "minReadySeconds", "revisionHistoryLimit"):
        causes += v.nonnegative(f"spec.{field}", spec.get(field))
    selector = spec.get("selector")
    causes += _label_selector(selector, "spec.selector")
    if isinstance(selector, dict) and not (selector.get("matchLabels") or selector.get("matchExpressions")):
        causes.append(v.invalid("spec.selector", selector, "empty selector is invalid for deployment"))
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if isinstance(selector, dict) and not _selector_matches(selector, labels):
        causes.append(v.invalid("spec.template.metadata.labels", labels,
                                "`selector` does not match template `labels`"))
    causes += podspec.validate_pod_template(spec.get("template"), "spec.template")
    restart = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
    if restart != "Always":
        causes.append(v.unsupported("spec.template.spec.restartPolicy", restart, ("Always",)))
    if old is not None:
        causes += _immutable("spec.selector", selector, (old.get("spec") or {}).get("selector"))
    return causes


# ---------------------------------------------------------------------------------------------------- Services


def default_service(service: Obj, old: Obj | None, allocated: set[str]) -> None:
    """SetDefaults_Service plus what the REST layer allocates: a cluster IP (kept from the old object on update),
    the IP family fields, TCP ports whose targetPort defaults to the port."""
    spec = service.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] in ("ClusterIP", "NodePort", "LoadBalancer"):
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if not port.get("targetPort"):
                port["targetPort"] = port.get("port")
    if spec["type"] == "ExternalName":
        return
    old_spec = (old or {}).get("spec") or {}
    if not spec.get("clusterIP"):
        spec["clusterIP"] = old_spec.get("clusterIP") or _allocate(allocated)
    spec.setdefault("clusterIPs", [spec["clusterIP"]])
    headless_without_selector = spec["clusterIP"] == "None" and not spec.get("selector")
    spec.setdefault("ipFamilyPolicy", "RequireDualStack" if headless_without_selector else "SingleStack")
    spec.setdefault("ipFamilies", ["IPv4", "IPv6"] if headless_without_selector else ["IPv4"])


def _allocate(allocated: set[str]) -> str:
    for host in _SERVICE_CIDR.hosts():
        address = str(host)
        if address not in allocated and not address.endswith(".1"):
            return address
    raise RuntimeError("the emulator's service CIDR is exhausted")


def validate_service(service: Obj, old: Obj | None) -> list[str]:
    spec = service["spec"]
    causes: list[str] = []
    kind = spec.get("type")
    kinds = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
    if kind not in kinds:
        causes.append(v.unsupported("spec.type", kind, kinds))
    headless = spec.get("clusterIP") == "None"
    if headless and kind != "ClusterIP":
        causes.append(v.invalid("spec.clusterIPs[0]", "None", f"may not be set to 'None' for {kind} services"))
    ports = spec.get("ports") or []
    if not ports and kind != "ExternalName" and not headless:
        causes.append(v.required("spec.ports"))
    names: set[str] = set()
    for index, port in enumerate(ports):
        at = f"spec.ports[{index}]"
        name = port.get("name", "")
        if len(ports) > 1 and not name:
            causes.append(v.required(f"{at}.name"))
        elif name:
            causes += v.each(f"{at}.name", name, v.dns1123_label(name))
            if name in names:
                causes.append(v.duplicate(f"{at}.name", name))
            names.add(name)
        causes += v.in_range(f"{at}.port", port.get("port"), 1, 65535)
        if port.get("protocol") not in ("TCP", "UDP", "SCTP"):
            causes.append(v.unsupported(f"{at}.protocol", port.get("protocol"), ("SCTP", "TCP", "UDP")))
        target = port.get("targetPort")
        if isinstance(target, str):
            causes += v.each(f"{at}.targetPort", target, v.port_name(target))
        else:
            causes += v.in_range(f"{at}.targetPort", target, 1, 65535)
        if port.get("nodePort") and kind not in ("NodePort", "LoadBalancer"):
            causes.append(v.forbidden(f"{at}.nodePort", "may not be used when `type` is 'ClusterIP'"))
    causes += v.labels("spec.selector", spec.get("selector"))
    if spec.get("sessionAffinity") not in ("ClientIP", "None"):
        causes.append(v.unsupported("spec.sessionAffinity", spec.get("sessionAffinity"), ("ClientIP", "None")))
    if old is not None and kind != "ExternalName":
        old_ip = (old.get("spec") or {}).get("clusterIP")
        if old_ip and spec.get("clusterIP") != old_ip:
            causes.append(v.invalid("spec.clusterIPs[0]", spec.get("clusterIP"), "may not change once set"))
    return causes


# ------------------------------------------------------------------------------------ ConfigMaps and Secrets


def validate_data(obj: Obj, data_fields: tuple[str, ...], size_path: str) -> list[str]:
    """Keys are config keys, unique across the data fields; the payload is at most 1 MiB."""
    causes: list[str] = []
    seen: set[str] = set()
    total = 0
    for field in data_fields:
        values = obj.get(field) or {}
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            causes += v.each(f"{field}[{key}]", key, v.config_key(str(key)))
            if key in seen:
                causes.append(v.invalid(f"{field}[{key}]", key, "duplicate of key present in another field"))
            seen.add(key)
            total += len(value) if isinstance(value, str) else 0
    if total > MAX_DATA_SIZE:
        causes.append(v.too_long(size_path, MAX_DATA_SIZE))
    return causes


# -------------------------------------------------------------------------------------------------------- RBAC


def validate_rules(rules: Any, namespaced: bool) -> list[str]:
    causes: list[str] = []
    for index, rule in enumerate(rules or []):
        at = f"rules[{index}]"
        if not rule.get("verbs"):
            causes.append(v.required(f"{at}.verbs", "verbs must contain at least one value"))
        urls = rule.get("nonResourceURLs") or []
        if urls:
            if namespaced:
                causes.append(v.invalid(f"{at}.nonResourceURLs", urls,
                                        "namespaced rules cannot apply to non-resource URLs"))
            if rule.get("apiGroups") or rule.get("resources") or rule.get("resourceNames"):
                causes.append(v.invalid(f"{at}.nonResourceURLs", urls,
                                        "rules cannot apply to both regular resources and non-resource URLs"))
            continue
        if not rule.get("apiGroups"):
            causes.append(v.required(f"{at}.apiGroups", "resource rules must supply at least one api group"))
        if not rule.get("resources"):
            causes.append(v.required(f"{at}.resources", "resource rules must supply at least one resource"))
    return causes


def validate_binding(binding: Obj, old: Obj | None, namespaced: bool) -> list[str]:
    causes: list[str] = []
    ref = binding.get("roleRef") or {}
    if ref.get("apiGroup") != RBAC:
        causes.append(v.unsupported("roleRef.apiGroup", ref.get("apiGroup", ""), (RBAC,)))
    kinds = ("ClusterRole", "Role") if namespaced else ("ClusterRole",)
    if ref.get("kind") not in kinds:
        causes.append(v.unsupported("roleRef.kind", ref.get("kind", ""), kinds))
    if not ref.get("name"):
        causes.append(v.required("roleRef.name"))
    else:
        causes += v.each("roleRef.name", ref["name"], v.path_segment_name(ref["name"]))
    for index, subject in enumerate(binding.get("subjects") or []):
        at = f"subjects[{index}]"
        kind, name = subject.get("kind"), subject.get("name", "")
        if not name:
            causes.append(v.required(f"{at}.name"))
        if kind == "ServiceAccount":
            if subject.get("apiGroup"):
                causes.append(v.unsupported(f"{at}.apiGroup", subject["apiGroup"], ("",)))
            if name:
                causes += v.each(f"{at}.name", name, v.dns1123_subdomain(name))
            if not namespaced and not subject.get("namespace"):
                causes.append(v.required(f"{at}.namespace"))
        elif kind in ("User", "Group"):
            if subject.get("apiGroup") != RBAC:
                causes.append(v.unsupported(f"{at}.apiGroup", subject.get("apiGroup", ""), (RBAC,)))
        else:
            causes.append(v.unsupported(f"{at}.kind", kind, ("Group", "ServiceAccount", "User")))
    if old is not None and old.get("roleRef") != binding.get("roleRef"):
        causes.append(v.invalid("roleRef", binding.get("roleRef"), "cannot change roleRef"))
    return causes


# -------------------------------------------------------------------------------------------------- Namespaces


def validate_namespace_labels(namespace: Obj) -> list[str]:
    """Pod Security Admission's check of a namespace's policy labels (a level, and "latest" or "v1.x")."""
    causes: list[str] = []
    labels = namespace["metadata"].get("labels") or {}
    for mode in ("enforce", "audit", "warn"):
        level_key = f"{pod_security.LABEL_PREFIX}{mode}"
        level, version = labels.get(level_key), labels.get(f"{level_key}-version")
        if level is not None and level not in pod_security.LEVELS:
            causes.append(v.invalid(f"metadata.labels[{level_key}]", level,
                                    "must be one of privileged, baseline, restricted"))
        if version is not None and version != "latest" and not re.fullmatch(r"v1\.(0|[1-9][0-9]*)", version):
            causes.append(v.invalid(f"metadata.labels[{level_key}-version]", version, 'must be "latest" or "v1.x"'))
    return causes


# ------------------------------------------------------------------------------------------------------ Events


def validate_event(event: Obj) -> list[str]:
    """ValidateEventCreate for core/v1 (legacyValidateEvent): the Event lives in its object's namespace; one with
    an eventTime also names its reporting controller, instance, action and reason."""
    causes: list[str] = []
    namespace = event["metadata"].get("namespace", "")
    involved = (event.get("involvedObject") or {}).get("namespace", "")
    if not event.get("eventTime"):
        if (involved and involved != namespace) or (not involved and namespace not in ("", "default")):
            causes.append(v.invalid("involvedObject.namespace", involved, "does not match event.namespace"))
        return causes
    if not involved and namespace not in ("default", "kube-system"):
        causes.append(v.invalid("involvedObject.namespace", involved, "does not match event.namespace"))
    controller = event.get("reportingComponent", "")
    if not controller:
        causes.append(v.required("reportingComponent"))
    else:
        causes += v.each("reportingComponent", controller, v.qualified_name(controller))
    for field, limit in (("reportingInstance", 128), ("action", 128), ("reason", 128)):
        value = event.get(field, "")
        if not value:
            causes.append(v.required(field))
        elif len(value) > limit:
            causes.append(v.too_long(field, limit))
    if len(event.get("message", "")) > 1024:
        causes.append(v.too_long("message", 1024))
    return causes


# ------------------------------------------------------------------------------------------------- dispatching


def admit(group_resource: GroupResource, obj: Obj, old: Obj | None, allocated_ips: set[str]) -> list[str]:
    """Default `obj` (in place) and validate it, on create (`old` None) or update. Returns the 422 causes."""
    creating = old is None
    if group_resource == JOBS:
        default_job(obj, creating)
        return validate_job(obj) if creating else validate_job_update(obj, old or {})
    if group_resource == PODS:
        # Creates are validated as the server's defaults would leave them, though stored without those defaults;
        # updates are not validated (the emulator's own tests patch pods freely).
        if not creating or not isinstance(obj.get("spec"), dict):
            return [] if not creating else [v.required("spec")]
        spec = copy.deepcopy(obj["spec"])
        podspec.default_pod_spec(spec)
        return podspec.validate_pod_spec(spec, "spec")
    if group_resource == DEPLOYMENTS:
        default_deployment(obj)
        return validate_deployment(obj, old)
    if group_resource == SERVICES:
        default_service(obj, old, allocated_ips)
        return validate_service(obj, old)
    if group_resource == CONFIGMAPS:
        return validate_data(obj, ("data", "binaryData"), "[]")
    if group_resource == SECRETS:
        return validate_data(obj, ("data",), "data")
    if group_resource == NAMESPACES:
        return validate_namespace_labels(obj)
    if group_resource == EVENTS and creating:
        return validate_event(obj)
    if group_resource in (ROLES, CLUSTER_ROLES):
        return validate_rules(obj.get("rules"), group_resource == ROLES)
    if group_resource in (ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS):
        return validate_binding(obj, old, group_resource == ROLE_BINDINGS)
    return []


def pod_template_of(group_resource: GroupResource, obj: Obj) -> tuple[str, Obj, Obj] | None:
    """(the name of the pod it makes, pod metadata, pod spec) for Pods and the workloads whose templates PSA
    is applied to here; None for other kinds."""
    name = obj["metadata"]["name"]
    if group_resource == PODS:
        return name, obj["metadata"], obj.get("spec") or {}
    if group_resource in (JOBS, DEPLOYMENTS):
        template = (obj.get("spec") or {}).get("template") or {}
        indexed = group_resource == JOBS and obj["spec"].get("completionMode") == "Indexed"
        prefix = f"{name}-0-" if indexed else f"{name}-"  # the controller's generateName
        return prefix, template.get("metadata") or {}, template.get("spec") or {}
    return None


def enforce_pod_security(group_resource: GroupResource, obj: Obj, namespace_labels: dict[str, str]) -> None:
    """On create: the 403 of Pod Security Admission when the namespace enforces a level the pod does not meet."""
    found = pod_template_of(group_resource, obj)
    if found is not None:
        pod_security.enforce(namespace_labels, *found)
