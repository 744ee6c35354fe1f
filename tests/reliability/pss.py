"""The Kubernetes Pod Security Standards "restricted" profile (which includes "baseline"), as checks on a pod spec.

Written from https://kubernetes.io/docs/concepts/security/pod-security-standards/ (policy version 1.33); each check
names the control it enforces. `violations(pod_spec)` returns one line per broken control, empty when the pod meets
the profile.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Obj = dict[str, Any]

# Restricted: only these volume types.
ALLOWED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                        "projected", "secret"}
VOLUME_META_FIELDS = {"name"}
# Baseline: sysctls outside this set are forbidden.
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
SECCOMP_ALLOWED = {"RuntimeDefault", "Localhost"}


def _containers(pod: Obj) -> Iterator[tuple[str, Obj]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(kind) or []:
            yield f"{kind}[{container.get('name', '?')}]", container


def violations(pod: Obj) -> list[str]:
    found: list[str] = []
    pod_security = pod.get("securityContext") or {}
    # --- baseline ---
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"baseline/host-namespaces: {field} is true")
    if (pod_security.get("windowsOptions") or {}).get("hostProcess"):
        found.append("baseline/hostprocess: pod windowsOptions.hostProcess is true")
    for volume in pod.get("volumes") or []:
        types = set(volume) - VOLUME_META_FIELDS
        if "hostPath" in types:
            found.append(f"baseline/hostpath-volumes: volume {volume.get('name')} is a hostPath")
        if not types <= ALLOWED_VOLUME_TYPES:
            found.append(f"restricted/volume-types: volume {volume.get('name')} has type {sorted(types)}")
    for sysctl in pod_security.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"baseline/sysctls: {sysctl.get('name')} is not a safe sysctl")
    found += _selinux_and_apparmor("pod", pod_security)
    pod_seccomp = (pod_security.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_ALLOWED:
        found.append(f"restricted/seccomp: pod seccompProfile {pod_seccomp}")
    pod_non_root = pod_security.get("runAsNonRoot")
    if pod_non_root is False:
        found.append("restricted/run-as-non-root: pod runAsNonRoot is false")
    if pod_security.get("runAsUser") == 0:
        found.append("restricted/run-as-user: pod runAsUser is 0")
    for where, container in _containers(pod):
        security = container.get("securityContext") or {}
        if security.get("privileged"):
            found.append(f"baseline/privileged: {where} is privileged")
        if (security.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"baseline/hostprocess: {where} windowsOptions.hostProcess is true")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"baseline/host-ports: {where} uses hostPort {port['hostPort']}")
        if security.get("procMount") not in (None, "Default"):
            found.append(f"baseline/proc-mount: {where} procMount {security['procMount']}")
        found += _selinux_and_apparmor(where, security)
        capabilities = security.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"restricted/capabilities: {where} does not drop ALL")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            found.append(f"restricted/capabilities: {where} adds {sorted(added)}")
        if security.get("allowPrivilegeEscalation") is not False:
            found.append(f"restricted/privilege-escalation: {where} allowPrivilegeEscalation is not false")
        non_root = security.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            found.append(f"restricted/run-as-non-root: {where} does not set runAsNonRoot (nor does the pod)")
        if security.get("runAsUser") == 0:
            found.append(f"restricted/run-as-user: {where} runAsUser is 0")
        seccomp = (security.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in SECCOMP_ALLOWED:
            found.append(f"restricted/seccomp: {where} seccompProfile is {seccomp} (pod: {pod_seccomp})")
    return found


def _selinux_and_apparmor(where: str, security: Obj) -> list[str]:
    found = []
    selinux = security.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES:
        found.append(f"baseline/selinux: {where} seLinuxOptions.type {selinux['type']}")
    if selinux.get("user") or selinux.get("role"):
        found.append(f"baseline/selinux: {where} sets seLinuxOptions user/role")
    apparmor = (security.get("appArmorProfile") or {}).get("type")
    if apparmor not in (None, "RuntimeDefault", "Localhost"):
        found.append(f"baseline/apparmor: {where} appArmorProfile {apparmor}")
    return found
