"""Pod specs as the API server defaults and validates them (core/v1 defaults.go, core/validation ValidatePodSpec):
for Pods and for the pod templates of Jobs and Deployments. The subset that objects we build can trip over;
what is left out is listed in tests/kube/README.md."""

from __future__ import annotations

from typing import Any

from tests.kube import validation as v

Obj = dict[str, Any]

VOLUME_SOURCES = (
    "hostPath", "emptyDir", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "secret", "nfs", "iscsi",
    "glusterfs", "persistentVolumeClaim", "rbd", "flexVolume", "cinder", "cephfs", "flocker", "downwardAPI", "fc",
    "azureFile", "configMap", "vsphereVolume", "quobyte", "azureDisk", "photonPersistentDisk", "projected",
    "portworxVolume", "scaleIO", "storageos", "csi", "ephemeral", "image",
)
ENV_FIELD_PATHS = (
    "metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName", "spec.serviceAccountName",
    "status.hostIP", "status.hostIPs", "status.podIP", "status.podIPs",
)
STANDARD_CONTAINER_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_DEFAULT_MODE = 0o644


# ------------------------------------------------------------------------------------------------------ defaults


def _image_pull_policy(image: str) -> str:
    """Always for `:latest` or no tag (a digest counts as pinned), IfNotPresent otherwise."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def default_pod_spec(spec: Obj) -> None:
    """SetDefaults_PodSpec and the per-container, per-volume defaults (scheme defaulting, before validation)."""
    for key, value in (
        ("restartPolicy", "Always"),
        ("dnsPolicy", "ClusterFirst"),
        ("terminationGracePeriodSeconds", 30),
        ("schedulerName", "default-scheduler"),
        ("securityContext", {}),
        ("enableServiceLinks", True),
    ):
        spec.setdefault(key, value)
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if not isinstance(container, dict):
            continue
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        if isinstance(container.get("image"), str) and container["image"]:
            container.setdefault("imagePullPolicy", _image_pull_policy(container["image"]))
        for port in container.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
        for env in container.get("env") or []:
            field_ref = ((env or {}).get("valueFrom") or {}).get("fieldRef") if isinstance(env, dict) else None
            if isinstance(field_ref, dict):
                field_ref.setdefault("apiVersion", "v1")
    for volume in spec.get("volumes") or []:
        if not isinstance(volume, dict):
            continue
        for source in ("configMap", "secret", "downwardAPI", "projected"):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault("defaultMode", _DEFAULT_MODE)


def default_pod_template(template: Obj) -> None:
    if isinstance(template.get("spec"), dict):
        default_pod_spec(template["spec"])


# ---------------------------------------------------------------------------------------------------- validation


def validate_pod_template(template: Any, path: str) -> list[str]:
    """ValidatePodTemplateSpec: the template's labels and annotations, then its pod spec."""
    if not isinstance(template, dict):
        return [v.required(path)]
    meta = template.get("metadata") or {}
    causes = v.labels(f"{path}.metadata.labels", meta.get("labels"))
    causes += annotation_causes(f"{path}.metadata.annotations", meta.get("annotations"))
    return causes + validate_pod_spec(template.get("spec"), f"{path}.spec")


def annotation_causes(path: str, annotations: Any) -> list[str]:
    """ValidateAnnotations: keys are qualified names (checked lower-cased), 256 KiB in all."""
    if not isinstance(annotations, dict):
        return []
    causes: list[str] = []
    total = 0
    for key, value in annotations.items():
        causes += v.each(path, key, v.qualified_name(str(key).lower()))
        total += len(str(key)) + (len(value) if isinstance(value, str) else 0)
    if total > 256 * 1024:
        causes.append(v.too_long(path, 256 * 1024))
    return causes


def validate_pod_spec(spec: Any, path: str) -> list[str]:
    if not isinstance(spec, dict):
        return [v.required(path)]
    volumes, causes = _volumes(spec.get("volumes") or [], f"{path}.volumes")
    containers = spec.get("containers") or []
    init_containers = spec.get("initContainers") or []
    if not containers:
        causes.append(v.required(f"{path}.containers"))
    seen: set[str] = set()
    for field, listed in (("initContainers", init_containers), ("containers", containers)):
        for index, container in enumerate(listed):
            causes += _container(container, f"{path}.{field}[{index}]", volumes, seen)
    causes += _pod_fields(spec, path)
    return causes


def _pod_fields(spec: Obj, path: str) -> list[str]:
    causes: list[str] = []
    restart = spec.get("restartPolicy")
    if restart not in ("Always", "OnFailure", "Never"):
        causes.append(v.unsupported(f"{path}.restartPolicy", restart, ("Always", "OnFailure", "Never")))
    dns = spec.get("dnsPolicy")
    if dns not in ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"):
        causes.append(v.unsupported(f"{path}.dnsPolicy", dns, ("ClusterFirst", "ClusterFirstWithHostNet", "Default",
                                                                  "None")))
    causes += v.nonnegative(f"{path}.terminationGracePeriodSeconds", spec.get("terminationGracePeriodSeconds"))
    if spec.get("activeDeadlineSeconds") is not None:
        causes += v.in_range(f"{path}.activeDeadlineSeconds", spec["activeDeadlineSeconds"], 1, 2**31 - 1)
    causes += v.labels(f"{path}.nodeSelector", spec.get("nodeSelector"))
    for field, rule in (
        ("serviceAccountName", v.dns1123_subdomain),
        ("priorityClassName", v.dns1123_subdomain),
        ("hostname", v.dns1123_label),
        ("subdomain", v.dns1123_label),
        ("nodeName", v.dns1123_subdomain),
    ):
        value = spec.get(field)
        if isinstance(value, str) and value:
            causes += v.each(f"{path}.{field}", value, rule(value))
    for index, toleration in enumerate(spec.get("tolerations") or []):
        causes += _toleration(toleration, f"{path}.tolerations[{index}]")
    for index, secret in enumerate(spec.get("imagePullSecrets") or []):
        if not (secret or {}).get("name"):
            causes.append(v.required(f"{path}.imagePullSecrets[{index}].name"))
    causes += _pod_security_context(spec.get("securityContext") or {}, f"{path}.securityContext")
    return causes


def _toleration(toleration: Obj, path: str) -> list[str]:
    causes: list[str] = []
    key, operator, value = toleration.get("key", ""), toleration.get("operator", ""), toleration.get("value", "")
    if key:
        causes += v.each(f"{path}.key", key, v.qualified_name(key))
    elif operator != "Exists":
        causes.append(v.invalid(f"{path}.operator", operator, 'operator must be Exists when `key` is empty, which '
                                                              'means "match all values and all keys"'))
    if operator == "Exists" and value:
        causes.append(v.invalid(f"{path}.operator", toleration, "value must be empty when `operator` is 'Exists'"))
    elif operator in ("", "Equal"):
        causes += v.each(f"{path}.value", value, v.label_value(str(value)))
    elif operator != "Exists":
        causes.append(v.unsupported(f"{path}.operator", operator, ("Equal", "Exists")))
    effect = toleration.get("effect", "")
    if effect not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
        causes.append(v.unsupported(f"{path}.effect", effect, ("NoExecute", "NoSchedule", "PreferNoSchedule")))
    if toleration.get("tolerationSeconds") is not None and effect != "NoExecute":
        causes.append(v.invalid(f"{path}.effect", effect, "effect must be 'NoExecute' when `tolerationSeconds` is set"))
    return causes


def _volumes(volumes: list[Any], path: str) -> tuple[set[str], list[str]]:
    names: set[str] = set()
    causes: list[str] = []
    for index, volume in enumerate(volumes):
        at = f"{path}[{index}]"
        name = (volume or {}).get("name", "")
        if not name:
            causes.append(v.required(f"{at}.name"))
        else:
            causes += v.each(f"{at}.name", name, v.dns1123_label(name))
            if name in names:
                causes.append(v.duplicate(f"{at}.name", name))
            names.add(name)
        sources = [source for source in VOLUME_SOURCES if (volume or {}).get(source) is not None]
        if not sources:
            causes.append(v.required(at, "must specify a volume type"))
        elif len(sources) > 1:
            causes.append(v.forbidden(f"{at}.{sources[1]}", "may not specify more than 1 volume type"))
        else:
            causes += _volume_source(sources[0], volume[sources[0]], f"{at}.{sources[0]}")
    return names, causes


def _volume_source(kind: str, source: Any, path: str) -> list[str]:
    if not isinstance(source, dict):
        return []
    causes: list[str] = []
    if kind == "configMap" and not source.get("name"):
        causes.append(v.required(f"{path}.name"))
    if kind == "secret" and not source.get("secretName"):
        causes.append(v.required(f"{path}.secretName"))
    if kind == "persistentVolumeClaim" and not source.get("claimName"):
        causes.append(v.required(f"{path}.claimName"))
    if kind == "hostPath" and not source.get("path"):
        causes.append(v.required(f"{path}.path"))
    if kind == "emptyDir":
        if source.get("medium", "") not in ("", "Memory") and not str(source.get("medium")).startswith("HugePages"):
            causes.append(v.unsupported(f"{path}.medium", source.get("medium"), ("", "Memory", "HugePages")))
        if source.get("sizeLimit") is not None and v.quantity(source["sizeLimit"]) < 0:
            causes.append(v.forbidden(f"{path}.sizeLimit", "SizeLimit field must be a valid resource quantity"))
    if kind in ("configMap", "secret"):
        mode = source.get("defaultMode")
        if mode is not None and not (isinstance(mode, int) and 0 <= mode <= 0o777):
            causes.append(v.invalid(f"{path}.defaultMode", mode,
                                    "must be a number between 0 and 0777 (octal), both inclusive"))
        for index, item in enumerate(source.get("items") or []):
            at = f"{path}.items[{index}]"
            if not item.get("key"):
                causes.append(v.required(f"{at}.key"))
            causes += _relative_path(f"{at}.path", item.get("path", ""))
    return causes


def _relative_path(path: str, target: str) -> list[str]:
    """validateLocalDescendingPath, with the path required."""
    if not target:
        return [v.required(path)]
    causes = []
    if target.startswith("/"):
        causes.append(v.invalid(path, target, "must be a relative path"))
    if ".." in target.split("/"):
        causes.append(v.invalid(path, target, "must not contain '..'"))
    return causes


def _container(container: Any, path: str, volumes: set[str], seen: set[str]) -> list[str]:
    if not isinstance(container, dict):
        return [v.required(path)]
    causes: list[str] = []
    name = container.get("name", "")
    if not name:
        causes.append(v.required(f"{path}.name"))
    else:
        causes += v.each(f"{path}.name", name, v.dns1123_label(name))
        if name in seen:
            causes.append(v.duplicate(f"{path}.name", name))
        seen.add(name)
    image = container.get("image", "")
    if not image:
        causes.append(v.required(f"{path}.image"))
    elif image.strip() != image:
        causes.append(v.invalid(f"{path}.image", image, "must not have leading or trailing whitespace"))
    for field, allowed in (
        ("imagePullPolicy", ("Always", "IfNotPresent", "Never")),
        ("terminationMessagePolicy", ("File", "FallbackToLogsOnError")),
    ):
        if container.get(field) is not None and container[field] not in allowed:
            causes.append(v.unsupported(f"{path}.{field}", container[field], allowed))
    causes += _ports(container.get("ports") or [], f"{path}.ports")
    for index, env in enumerate(container.get("env") or []):
        causes += _env_var(env, f"{path}.env[{index}]")
    for index, source in enumerate(container.get("envFrom") or []):
        at = f"{path}.envFrom[{index}]"
        refs = [key for key in ("configMapRef", "secretRef") if source.get(key) is not None]
        if len(refs) != 1:
            causes.append(v.invalid(at, "", "must specify one of: `configMapRef` or `secretRef`"))
        for key in refs:
            if not (source[key] or {}).get("name"):
                causes.append(v.required(f"{at}.{key}.name"))
        if source.get("prefix"):
            causes += v.each(f"{at}.prefix", source["prefix"], v.env_var_name(source["prefix"]))
    causes += _volume_mounts(container.get("volumeMounts") or [], f"{path}.volumeMounts", volumes)
    causes += _resources(container.get("resources") or {}, f"{path}.resources")
    causes += _container_security_context(container.get("securityContext") or {}, f"{path}.securityContext")
    return causes


def _ports(ports: list[Obj], path: str) -> list[str]:
    causes: list[str] = []
    names: set[str] = set()
    for index, port in enumerate(ports):
        at = f"{path}[{index}]"
        name = port.get("name")
        if name:
            causes += v.each(f"{at}.name", name, v.port_name(name))
            if name in names:
                causes.append(v.duplicate(f"{at}.name", name))
            names.add(name)
        if port.get("containerPort") is None:
            causes.append(v.required(f"{at}.containerPort"))
        else:
            causes += v.in_range(f"{at}.containerPort", port["containerPort"], 1, 65535)
        if port.get("hostPort"):
            causes += v.in_range(f"{at}.hostPort", port["hostPort"], 1, 65535)
        if port.get("protocol") not in ("TCP", "UDP", "SCTP"):
            causes.append(v.unsupported(f"{at}.protocol", port.get("protocol"), ("SCTP", "TCP", "UDP")))
    return causes


def _env_var(env: Obj, path: str) -> list[str]:
    causes: list[str] = []
    name = env.get("name", "")
    if not name:
        causes.append(v.required(f"{path}.name"))
    else:
        causes += v.each(f"{path}.name", name, v.env_var_name(name))
    source = env.get("valueFrom")
    if source is None:
        return causes
    if env.get("value"):
        causes.append(v.invalid(f"{path}.valueFrom", "", "may not be specified when `value` is not empty"))
    kinds = [key for key in ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef") if source.get(key)]
    if len(kinds) != 1:
        detail = "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"
        if len(kinds) > 1:
            detail = "may not have more than one field specified at a time"
        return [*causes, v.invalid(f"{path}.valueFrom", "", detail)]
    kind = kinds[0]
    at = f"{path}.valueFrom.{kind}"
    ref = source[kind]
    if kind == "fieldRef":
        causes += _field_ref(ref, at)
    elif kind in ("configMapKeyRef", "secretKeyRef"):
        if not ref.get("name"):
            causes.append(v.required(f"{at}.name"))
        if not ref.get("key"):
            causes.append(v.required(f"{at}.key"))
        else:
            causes += v.each(f"{at}.key", ref["key"], v.config_key(ref["key"]))
    elif not ref.get("resource"):
        causes.append(v.required(f"{at}.resource"))
    return causes


def _field_ref(ref: Obj, path: str) -> list[str]:
    """validateObjectFieldSelector with the env var's supported paths (labels/annotations by key only)."""
    causes = [] if ref.get("apiVersion") else [v.required(f"{path}.apiVersion")]
    field_path = ref.get("fieldPath", "")
    if not field_path:
        return [*causes, v.required(f"{path}.fieldPath")]
    for prefix in ("metadata.labels", "metadata.annotations"):
        if field_path.startswith(prefix + "['") and field_path.endswith("']"):
            key = field_path[len(prefix) + 2:-2]
            return causes + v.each(f"{path}.fieldPath", key, v.qualified_name(key.lower()))
    if field_path not in ENV_FIELD_PATHS:
        allowed = ("metadata.annotations", "metadata.labels", *ENV_FIELD_PATHS)
        causes.append(v.unsupported(f"{path}.fieldPath", field_path, allowed))
    return causes


def _volume_mounts(mounts: list[Obj], path: str, volumes: set[str]) -> list[str]:
    causes: list[str] = []
    paths: set[str] = set()
    for index, mount in enumerate(mounts):
        at = f"{path}[{index}]"
        name = mount.get("name", "")
        if not name:
            causes.append(v.required(f"{at}.name"))
        elif name not in volumes:
            causes.append(v.not_found(f"{at}.name", name))
        mount_path = mount.get("mountPath", "")
        if not mount_path:
            causes.append(v.required(f"{at}.mountPath"))
        elif mount_path in paths:
            causes.append(v.invalid(f"{at}.mountPath", mount_path, "must be unique"))
        paths.add(mount_path)
        if mount.get("subPath"):
            causes += _relative_path(f"{at}.subPath", mount["subPath"])
    return causes


def _resources(resources: Obj, path: str) -> list[str]:
    """Resource names, quantities, requests <= limits, and extended resources (integers, requests == limits)."""
    causes: list[str] = []
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    for field, values in (("limits", limits), ("requests", requests)):
        for name, value in values.items():
            at = f"{path}.{field}[{name}]"
            if name not in STANDARD_CONTAINER_RESOURCES and "/" not in name and not name.startswith("hugepages-"):
                causes.append(v.invalid(at, name, "must be a standard resource for containers"))
            elif "/" in name:
                causes += v.each(at, name, v.qualified_name(name))
            amount = v.quantity(value)
            if amount < 0:
                causes.append(v.invalid(at, value, "must be greater than or equal to 0"))
            if "/" in name and amount != amount.to_integral_value():
                causes.append(v.invalid(at, value, "must be an integer"))
    for name, value in requests.items():
        at = f"{path}.requests[{name}]"
        if name in limits and v.quantity(value) > v.quantity(limits[name]):
            causes.append(v.invalid(at, value, f"must be less than or equal to {name} limit of {limits[name]}"))
        elif "/" in name and name not in limits:
            causes.append(v.forbidden(f"{path}.limits", f"Limit must be set for non overcommitable resources"
                                                        f" ({name})"))
        elif "/" in name and v.quantity(value) != v.quantity(limits[name]):
            causes.append(v.invalid(at, value, f"must be equal to {name} limit of {limits[name]}"))
    return causes


def _seccomp(profile: Any, path: str) -> list[str]:
    if not isinstance(profile, dict):
        return []
    kind = profile.get("type")
    if kind not in ("RuntimeDefault", "Unconfined", "Localhost"):
        return [v.unsupported(f"{path}.type", kind, ("Localhost", "RuntimeDefault", "Unconfined"))]
    if kind == "Localhost" and not profile.get("localhostProfile"):
        return [v.required(f"{path}.localhostProfile", "must be set when seccomp type is Localhost")]
    if kind != "Localhost" and profile.get("localhostProfile"):
        return [v.invalid(f"{path}.localhostProfile", profile["localhostProfile"],
                          "can only be set when seccomp type is Localhost")]
    return []


def _ids(context: Obj, path: str) -> list[str]:
    causes: list[str] = []
    for field in ("runAsUser", "runAsGroup", "fsGroup"):
        causes += v.nonnegative(f"{path}.{field}", context.get(field))
    return causes


def _pod_security_context(context: Obj, path: str) -> list[str]:
    causes = _ids(context, path) + _seccomp(context.get("seccompProfile"), f"{path}.seccompProfile")
    for index, sysctl in enumerate(context.get("sysctls") or []):
        if not sysctl.get("name"):
            causes.append(v.required(f"{path}.sysctls[{index}].name"))
    return causes


def _container_security_context(context: Obj, path: str) -> list[str]:
    causes = _ids(context, path) + _seccomp(context.get("seccompProfile"), f"{path}.seccompProfile")
    if context.get("allowPrivilegeEscalation") is False:
        if context.get("privileged"):
            causes.append(v.invalid(path, context, "cannot set `allowPrivilegeEscalation` to false and "
                                                   "`privileged` to true"))
        if "CAP_SYS_ADMIN" in ((context.get("capabilities") or {}).get("add") or []):
            causes.append(v.invalid(path, context, "cannot set `allowPrivilegeEscalation` to false and "
                                                   "`capabilities.Add` CAP_SYS_ADMIN"))
    proc_mount = context.get("procMount")
    if proc_mount is not None and proc_mount not in ("Default", "Unmasked"):
        causes.append(v.unsupported(f"{path}.procMount", proc_mount, ("Default", "Unmasked")))
    return causes
