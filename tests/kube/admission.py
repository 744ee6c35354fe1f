"""Admission of the built-in kinds we create: the API server's defaulting (scheme defaults, then the create
strategy), its validation on create and on update (immutable fields), and Pod Security Admission, mirrored from
kube-apiserver's pkg/apis/*/validation, pkg/apis/*/v1/defaults.go and the registry strategies.

`admit(group_resource, obj, old, taken_ips)` defaults `obj` in place and returns the causes of a 422 Invalid (the server's
`field: Invalid value: ...: message` lines); `enforce_pod_security(...)` raises the 403 Forbidden of PSA.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Callable
from typing import Any

from tests.kube import jobs_admission, pod_security, podspec
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


def name_causes(group_resource: GroupResource, name: str, generate_name: str = "") -> list[str]:
    """The kind's name rule (most kinds: an RFC 1123 subdomain; Services: a DNS-1035 label), for the name and for
    a `generateName` prefix (a trailing '-' is allowed there)."""
    rule = _NAME_RULES.get(group_resource, v.dns1123_subdomain)
    causes = []
    if generate_name:
        masked = generate_name[:-1] + "a" if generate_name.endswith("-") else generate_name
        causes += v.each("metadata.generateName", generate_name, rule(masked))
    return causes + v.each("metadata.name", name, rule(name))


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
    causes += v.label_selector(selector, "spec.selector")
    if isinstance(selector, dict) and not (selector.get("matchLabels") or selector.get("matchExpressions")):
        causes.append(v.invalid("spec.selector", selector, "empty selector is invalid for deployment"))
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if isinstance(selector, dict) and not v.selector_matches(selector, labels):
        causes.append(v.invalid("spec.template.metadata.labels", labels,
                                "`selector` does not match template `labels`"))
    causes += podspec.validate_pod_template(spec.get("template"), "spec.template")
    restart = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
    if restart != "Always":
        causes.append(v.unsupported("spec.template.spec.restartPolicy", restart, ("Always",)))
    if old is not None:
        causes += v.immutable("spec.selector", selector, (old.get("spec") or {}).get("selector"))
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
        jobs_admission.default_job(obj, creating)
        return jobs_admission.validate_job(obj) if creating else jobs_admission.validate_job_update(obj, old or {})
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
