"""Pod Security Admission: the Pod Security Standards' "baseline" and "restricted" checks at version "latest",
enforced where a namespace is labelled `pod-security.kubernetes.io/enforce` (k8s.io/pod-security-admission/policy).

A refusal reads like the server's: `pods "x" is forbidden: violates PodSecurity "restricted:latest": <reason>
(<detail>), ...`: the baseline checks' failures, then the restricted ones', each in the order of their IDs. The real server enforces on Pods and only warns for workload
templates; the emulator has no real Job controller creating pods, so it refuses a Job's or Deployment's template
in an enforcing namespace with the message the controller's pod creation would get (the pod named by the
controller's generateName prefix)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from tests.kube import errors
from tests.kube.podspec import VOLUME_SOURCES

Obj = dict[str, Any]
Check = Callable[[Obj, Obj], list[str]]

LABEL_PREFIX = "pod-security.kubernetes.io/"
ENFORCE_LABEL = f"{LABEL_PREFIX}enforce"
ENFORCE_VERSION_LABEL = f"{LABEL_PREFIX}enforce-version"
LEVELS = ("privileged", "baseline", "restricted")

_BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP",
    "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
_SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
})
_SELINUX_TYPES = ("", "container_t", "container_init_t", "container_kvm_t", "container_engine_t")
_RESTRICTED_VOLUMES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret")
_APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _containers(spec: Obj) -> Iterator[Obj]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        yield from (c for c in spec.get(field) or [] if isinstance(c, dict))


def _context(container: Obj) -> Obj:
    return container.get("securityContext") or {}


def _quoted(names: list[str]) -> str:
    return ", ".join(json.dumps(name) for name in names)


def _who(names: list[str], noun: str = "container") -> str:
    return f'{noun}{"s" if len(names) > 1 else ""} {_quoted(names)}'


def _setters(pod_bad: bool, containers: list[str]) -> str:
    """`pod`, `container "a"`, `pod and containers "a", "b"`: who set a forbidden value."""
    parts = (["pod"] if pod_bad else []) + ([_who(containers)] if containers else [])
    return " and ".join(parts)


# ------------------------------------------------------------------------------------------------ the checks


def _allow_privilege_escalation(_meta: Obj, spec: Obj) -> list[str]:
    bad = [c.get("name", "") for c in _containers(spec) if _context(c).get("allowPrivilegeEscalation") is not False]
    return [f"{_who(bad)} must set securityContext.allowPrivilegeEscalation=false"] if bad else []


def _app_armor(meta: Obj, spec: Obj) -> list[str]:
    details = []
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith(_APPARMOR_ANNOTATION) and value != "runtime/default" and not value.startswith("localhost/"):
            details.append(f"{key}={json.dumps(value)}")
    if ((spec.get("securityContext") or {}).get("appArmorProfile") or {}).get("type") == "Unconfined":
        details.append('pod must not set securityContext.appArmorProfile.type to "Unconfined"')
    bad = [c.get("name", "") for c in _containers(spec)
           if (_context(c).get("appArmorProfile") or {}).get("type") == "Unconfined"]
    if bad:
        details.append(f'{_who(bad)} must not set securityContext.appArmorProfile.type to "Unconfined"')
    return details


def _added_capabilities(spec: Obj, allowed: frozenset[str]) -> list[str]:
    details = []
    for container in _containers(spec):
        added = [cap for cap in (_context(container).get("capabilities") or {}).get("add") or [] if cap not in allowed]
        if added:
            details.append(f'container {json.dumps(container.get("name", ""))} must not include {_quoted(added)} '
                           f"in securityContext.capabilities.add")
    return details


def _capabilities_baseline(_meta: Obj, spec: Obj) -> list[str]:
    return _added_capabilities(spec, _BASELINE_CAPABILITIES)


def _capabilities_restricted(_meta: Obj, spec: Obj) -> list[str]:
    no_drop = [c.get("name", "") for c in _containers(spec)
               if "ALL" not in ((_context(c).get("capabilities") or {}).get("drop") or [])]
    details = [f'{_who(no_drop)} must set securityContext.capabilities.drop=["ALL"]'] if no_drop else []
    return details + _added_capabilities(spec, frozenset({"NET_BIND_SERVICE"}))


def _host_namespaces(_meta: Obj, spec: Obj) -> list[str]:
    return [", ".join(f"{key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key))] if any(
        spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")) else []


def _host_path_volumes(_meta: Obj, spec: Obj) -> list[str]:
    bad = [volume.get("name", "") for volume in spec.get("volumes") or [] if volume.get("hostPath") is not None]
    return [_who(bad, "volume")] if bad else []


def _host_ports(_meta: Obj, spec: Obj) -> list[str]:
    details = []
    for container in _containers(spec):
        ports = [str(p["hostPort"]) for p in container.get("ports") or [] if p.get("hostPort")]
        if ports:
            details.append(f'container {json.dumps(container.get("name", ""))} uses '
                           f'hostPort{"s" if len(ports) > 1 else ""} {", ".join(ports)}')
    return details


def _host_process(_meta: Obj, spec: Obj) -> list[str]:
    contexts = [spec.get("securityContext") or {}, *(_context(c) for c in _containers(spec))]
    if any((context.get("windowsOptions") or {}).get("hostProcess") for context in contexts):
        return ["pod or containers must not set securityContext.windowsOptions.hostProcess=true"]
    return []


def _privileged(_meta: Obj, spec: Obj) -> list[str]:
    bad = [c.get("name", "") for c in _containers(spec) if _context(c).get("privileged")]
    return [f"{_who(bad)} must not set securityContext.privileged=true"] if bad else []


def _proc_mount(_meta: Obj, spec: Obj) -> list[str]:
    details = []
    for container in _containers(spec):
        mount = _context(container).get("procMount")
        if mount not in (None, "Default"):
            details.append(f'container {json.dumps(container.get("name", ""))} must not set '
                           f"securityContext.procMount to {json.dumps(mount)}")
    return details


def _restricted_volumes(_meta: Obj, spec: Obj) -> list[str]:
    by_type: dict[str, list[str]] = {}
    for volume in spec.get("volumes") or []:
        kinds = [kind for kind in VOLUME_SOURCES if volume.get(kind) is not None and kind not in _RESTRICTED_VOLUMES]
        if kinds:
            by_type.setdefault(kinds[0], []).append(volume.get("name", ""))
    return [f'{_who(names, "volume")} {"use" if len(names) > 1 else "uses"} restricted volume type {json.dumps(kind)}'
            for kind, names in by_type.items()]


def _run_as_non_root(_meta: Obj, spec: Obj) -> list[str]:
    pod_value = (spec.get("securityContext") or {}).get("runAsNonRoot")
    explicit_false = [c.get("name", "") for c in _containers(spec) if _context(c).get("runAsNonRoot") is False]
    details = []
    if pod_value is False or explicit_false:
        details.append(f"{_setters(pod_value is False, explicit_false)} must not set "
                       f"securityContext.runAsNonRoot=false")
    if pod_value is None:  # nothing at pod level: each container must say so itself
        unset = [c.get("name", "") for c in _containers(spec) if _context(c).get("runAsNonRoot") is None]
        if unset:
            details.append(f"pod or {_who(unset)} must set securityContext.runAsNonRoot=true")
    return details


def _run_as_user(_meta: Obj, spec: Obj) -> list[str]:
    pod_root = (spec.get("securityContext") or {}).get("runAsUser") == 0
    bad = [c.get("name", "") for c in _containers(spec) if _context(c).get("runAsUser") == 0]
    return [f"{_setters(pod_root, bad)} must not set runAsUser=0"] if pod_root or bad else []


def _se_linux(_meta: Obj, spec: Obj) -> list[str]:
    details = []
    contexts = [("pod", spec.get("securityContext") or {})] + [
        (f'container {json.dumps(c.get("name", ""))}', _context(c)) for c in _containers(spec)]
    for who, context in contexts:
        options = context.get("seLinuxOptions") or {}
        forbidden = [f"{key} {json.dumps(options[key])}" for key in ("user", "role") if options.get(key)]
        if options.get("type", "") not in _SELINUX_TYPES:
            forbidden.insert(0, f'type {json.dumps(options["type"])}')
        if forbidden:
            details.append(f"{who} set forbidden securityContext.seLinuxOptions: {', '.join(forbidden)}")
    return details


def _seccomp_type(context: Obj) -> Any:
    return (context.get("seccompProfile") or {}).get("type")


def _seccomp_baseline(_meta: Obj, spec: Obj) -> list[str]:
    pod_bad = _seccomp_type(spec.get("securityContext") or {}) == "Unconfined"
    bad = [c.get("name", "") for c in _containers(spec) if _seccomp_type(_context(c)) == "Unconfined"]
    if pod_bad or bad:
        return [f'{_setters(pod_bad, bad)} must not set securityContext.seccompProfile.type to "Unconfined"']
    return []


def _seccomp_restricted(meta: Obj, spec: Obj) -> list[str]:
    details = _seccomp_baseline(meta, spec)
    pod_type = _seccomp_type(spec.get("securityContext") or {})
    if pod_type not in ("RuntimeDefault", "Localhost"):
        unset = [c.get("name", "") for c in _containers(spec) if _seccomp_type(_context(c)) is None]
        if unset:
            details.append(f'pod or {_who(unset)} must set securityContext.seccompProfile.type to "RuntimeDefault" '
                           f'or "Localhost"')
    return details


def _sysctls(_meta: Obj, spec: Obj) -> list[str]:
    bad = [s.get("name", "") for s in (spec.get("securityContext") or {}).get("sysctls") or []
           if s.get("name") not in _SAFE_SYSCTLS]
    return [", ".join(bad)] if bad else []


# (check ID, reason, level, the baseline check it replaces at restricted); messages list the baseline checks, then
# the restricted ones, each by ID (as Go's sort.Strings orders them)
_CHECKS: tuple[tuple[str, str, str, str, Check], ...] = (
    ("allowPrivilegeEscalation", "allowPrivilegeEscalation != false", "restricted", "", _allow_privilege_escalation),
    ("appArmorProfile", "forbidden AppArmor profile", "baseline", "", _app_armor),
    ("capabilities_baseline", "non-default capabilities", "baseline", "", _capabilities_baseline),
    ("capabilities_restricted", "unrestricted capabilities", "restricted", "capabilities_baseline",
     _capabilities_restricted),
    ("hostNamespaces", "host namespaces", "baseline", "", _host_namespaces),
    ("hostPathVolumes", "hostPath volumes", "baseline", "", _host_path_volumes),
    ("hostPorts", "hostPort", "baseline", "", _host_ports),
    ("hostProcess", "hostProcess", "baseline", "", _host_process),
    ("privileged", "privileged", "baseline", "", _privileged),
    ("procMount", "procMount", "baseline", "", _proc_mount),
    ("restrictedVolumes", "restricted volume types", "restricted", "hostPathVolumes", _restricted_volumes),
    ("runAsNonRoot", "runAsNonRoot != true", "restricted", "", _run_as_non_root),
    ("runAsUser", "runAsUser=0", "restricted", "", _run_as_user),
    ("seLinuxOptions", "seLinuxOptions", "baseline", "", _se_linux),
    ("seccompProfile_baseline", "seccompProfile", "baseline", "", _seccomp_baseline),
    ("seccompProfile_restricted", "seccompProfile", "restricted", "seccompProfile_baseline", _seccomp_restricted),
    ("sysctls", "forbidden sysctls", "baseline", "", _sysctls),
)


def violations(level: str, meta: Obj, spec: Obj) -> list[str]:
    """`reason (detail; detail)` for each failed check of `level` (nothing for privileged)."""
    if level not in ("baseline", "restricted"):
        return []
    active = sorted((check for check in _CHECKS if check[2] == "baseline" or level == "restricted"),
                    key=lambda check: (check[2] == "restricted", check[0]))
    replaced = {check[3] for check in active if check[3]}
    found = []
    for check_id, reason, _level, _replaces, check in active:
        if check_id in replaced:
            continue
        details = check(meta, spec)
        if details:
            found.append(f"{reason} ({'; '.join(details)})")
    return found


def enforce(namespace_labels: dict[str, str], pod_name: str, pod_meta: Obj, pod_spec: Obj) -> None:
    """Raise the server's 403 when the namespace enforces a level the pod does not meet."""
    level = namespace_labels.get(ENFORCE_LABEL, "privileged")
    found = violations(level, pod_meta, pod_spec)
    if found:
        version = namespace_labels.get(ENFORCE_VERSION_LABEL, "latest")
        raise errors.ApiError(
            403, "Forbidden",
            f'pods "{pod_name}" is forbidden: violates PodSecurity "{level}:{version}": ' + ", ".join(found),
            details={"name": pod_name, "kind": "pods"},
        )
