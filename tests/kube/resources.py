"""Resource types the emulator serves: built-in kinds plus those registered by CustomResourceDefinitions."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.kube import errors

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    """One served group/version/plural, as listed in discovery."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    has_status: bool = False  # the /status subresource exists
    has_generation: bool = False  # metadata.generation is kept and bumped on spec changes
    is_custom: bool = False  # served from a CRD (strategic merge patch is not supported, like the real server)
    storage: bool = True  # the CRD's storage version: objects are stored with this apiVersion
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    printer_columns: tuple[dict[str, Any], ...] = field(default=(), compare=False, hash=False)  # CRD version's

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> tuple[str, str]:
        """The storage identity: all versions of one group/plural share their objects."""
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:
        """`plural.group` as used in API error messages (`jobs.batch`, `configmaps`)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def names(self) -> set[str]:
        """Every spelling kubectl accepts for this resource."""
        return {self.plural, self.singular or self.kind.lower(), self.kind.lower(), *self.short_names}


def _builtin(group: str, version: str, plural: str, kind: str, namespaced: bool = True, **kwargs: Any) -> ResourceType:
    return ResourceType(group, version, plural, kind, namespaced, singular=kind.lower(), **kwargs)


BUILTIN_TYPES: tuple[ResourceType, ...] = (
    _builtin("", "v1", "namespaces", "Namespace", False, short_names=("ns",), has_status=True),
    _builtin("", "v1", "pods", "Pod", short_names=("po",), categories=("all",), has_status=True),
    _builtin("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _builtin("", "v1", "secrets", "Secret"),
    _builtin("", "v1", "services", "Service", short_names=("svc",), categories=("all",), has_status=True),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _builtin("", "v1", "events", "Event", short_names=("ev",)),
    _builtin("batch", "v1", "jobs", "Job", categories=("all",), has_status=True, has_generation=True),
    # What the Helm chart creates (tests/kube/admission.py validates them)
    _builtin("apps", "v1", "deployments", "Deployment", short_names=("deploy",), categories=("all",), has_status=True,
             has_generation=True),
    _builtin("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _builtin("events.k8s.io", "v1", "events", "Event", short_names=("ev",)),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
    _builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        short_names=("crd", "crds"),
        has_status=True,
        has_generation=True,
    ),
)


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The served versions of a CustomResourceDefinition that `crd_validation.check` accepted."""
    spec = crd["spec"]
    names = spec["names"]
    group, plural, kind = spec["group"], names["plural"], names["kind"]
    versions = spec["versions"]
    return [
        ResourceType(
            group=group,
            version=version["name"],
            plural=plural,
            kind=kind,
            namespaced=spec["scope"] == "Namespaced",
            singular=names.get("singular") or kind.lower(),
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            has_status="status" in (version.get("subresources") or {}),
            has_generation=True,
            is_custom=True,
            storage=bool(version.get("storage")),
            schema=(version.get("schema") or {}).get("openAPIV3Schema"),
            printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
        )
        for version in versions
        if version.get("served", True)
    ]


class ResourceRegistry:
    """What is served, by group/version (discovery, routing) and by name (the Python API)."""

    def __init__(self, types: Iterable[ResourceType] = BUILTIN_TYPES) -> None:
        self._by_gvp: dict[tuple[str, str, str], ResourceType] = {}
        self._crd_types: dict[str, list[ResourceType]] = {}  # CRD name -> its served types
        for rtype in types:
            self._by_gvp[(rtype.group, rtype.version, rtype.plural)] = rtype

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self._by_gvp.values()))

    def register_crd(self, crd_name: str, types: list[ResourceType]) -> None:
        self.unregister_crd(crd_name)
        self._crd_types[crd_name] = types
        for rtype in types:
            self._by_gvp[(rtype.group, rtype.version, rtype.plural)] = rtype

    def unregister_crd(self, crd_name: str) -> list[ResourceType]:
        types = self._crd_types.pop(crd_name, [])
        for rtype in types:
            self._by_gvp.pop((rtype.group, rtype.version, rtype.plural), None)
        return types

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_gvp.get((group, version, plural))

    def storage_type(self, group_resource: tuple[str, str]) -> ResourceType | None:
        for rtype in self._by_gvp.values():
            if rtype.group_resource == group_resource and rtype.storage:
                return rtype
        return None

    def for_object(self, obj: dict[str, Any]) -> ResourceType:
        """The type of an object by its apiVersion and kind."""
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        group, _, version = api_version.rpartition("/")
        for rtype in self._by_gvp.values():
            if rtype.group == group and rtype.version == version and rtype.kind == kind:
                return rtype
        raise errors.bad_request(f"no resource is served for apiVersion={api_version!r} kind={kind!r}")

    def resolve(self, name: str) -> ResourceType:
        """kubectl-style: `jobs`, `job`, `Job`, `jobs.batch`, `jobs.v1.batch`, a short name; storage version wins."""
        name = name.strip()
        base, _, qualifier = name.partition(".")
        candidates = [
            rtype
            for rtype in self._by_gvp.values()
            if base.lower() in rtype.names()
            and (not qualifier or qualifier in (rtype.group, f"{rtype.version}.{rtype.group}"))
        ]
        if not qualifier:  # unqualified names prefer the core group, like kubectl (`events` is v1 Event)
            core = [rtype for rtype in candidates if rtype.group == ""]
            candidates = core or candidates
        groups = {rtype.group for rtype in candidates}
        if not candidates:
            raise KeyError(f"no resource type is named {name!r}")
        if len(groups) > 1:
            raise KeyError(f"{name!r} is ambiguous between groups {sorted(groups)}; qualify it like plural.group")
        return min(candidates, key=lambda rtype: not rtype.storage)

    def groups(self) -> dict[str, list[str]]:
        """Non-core groups -> served versions, preferred (storage) version first."""
        result: dict[str, list[str]] = {}
        for rtype in sorted(self._by_gvp.values(), key=lambda r: (r.group, not r.storage, r.version)):
            if rtype.group and rtype.version not in result.setdefault(rtype.group, []):
                result[rtype.group].append(rtype.version)
        return result

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rtype for rtype in self._by_gvp.values() if rtype.group == group and rtype.version == version]
