"""The checks kube-apiserver runs when a CustomResourceDefinition is created or updated
(apiextensions-apiserver: pkg/apis/apiextensions/validation, pkg/apiserver/schema, schema/defaulting, schema/cel),
mirrored in our own code so a CRD the server refuses is refused here, with the server's field paths and wording:

- the spec: group, scope, names, versions (exactly one storage version), printer columns, subresources, and on
  update the immutable group/plural/scope/kind and stored versions;
- each schema: structural (types everywhere, no additionalProperties beside properties, metadata only name and
  generateName at the root, `x-kubernetes-*` consistency), forbidden keywords, what may sit at the root with the
  status subresource;
- every `default`, pruned and validated against its own schema *and its CEL rules as written*: nested defaults are
  not applied first (schema/defaulting/validation.go), so `default: {}` on an object whose rule reads `self.x`
  fails with `no such key: x`;
- each rule: rule/message/messageExpression/reason/fieldPath validity, CEL compilation (`cel_check`), oldSelf only
  where old values correlate, and the estimated cost (`cel_cost`): per rule, times the node's cardinality, against
  10,000,000, and the CRD's total against 100,000,000.

A v1 CRD whose versions share one schema is validated as the server's internal version sees it: the schema is
reported at `spec.validation.openAPIV3Schema` (and shared subresources/columns at `spec.subresources`/
`spec.additionalPrinterColumns`); otherwise at `spec.versions[i].schema.openAPIV3Schema`.
"""

from __future__ import annotations

import re
from typing import Any

from tests.kube import fielderrors as fe
from tests.kube.crd_schema import validation_errors
from tests.kube.fielderrors import FieldError

GROUP = "apiextensions.k8s.io"
KIND = "CustomResourceDefinition"
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_COLUMN_TYPES = ["boolean", "date", "integer", "number", "string"]
_COLUMN_FORMATS = ["byte", "date", "date-time", "double", "float", "int32", "int64", "password"]


def check(crd: dict[str, Any], old: dict[str, Any] | None = None) -> None:
    """Apply the server's defaults to `crd` (in place) and raise its 422 Invalid if a server would refuse it."""
    set_defaults(crd)
    field_errors = validate(crd, old)
    if field_errors:
        raise fe.invalid_status(KIND, GROUP, (crd.get("metadata") or {}).get("name", ""), field_errors)


def set_defaults(crd: dict[str, Any]) -> None:
    """The v1 defaults the server sets before validating (SetDefaults_CustomResourceDefinitionSpec)."""
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        return
    names = spec.get("names")
    if isinstance(names, dict) and names.get("kind"):
        names.setdefault("singular", str(names["kind"]).lower())
        names.setdefault("listKind", f"{names['kind']}List")
    spec.setdefault("conversion", {"strategy": "None"})


def validate(crd: dict[str, Any], old: dict[str, Any] | None = None) -> list[FieldError]:
    """Every reason a server would refuse this CRD (on create, or on update from `old`), in the server's words."""
    spec: dict[str, Any] = crd["spec"] if isinstance(crd.get("spec"), dict) else {}
    errors = _metadata_errors(crd, spec)
    errors += _spec_errors(spec)
    if old is not None:
        errors += _update_errors(spec, old)
    return errors


# -------------------------------------------------------------------------------------------------- the spec


def _metadata_errors(crd: dict[str, Any], spec: dict[str, Any]) -> list[FieldError]:
    name = (crd.get("metadata") or {}).get("name") or ""
    names = spec.get("names") or {}
    if not name:
        return [fe.required("metadata.name", "name or generateName is required")]
    problems = [] if len(name) <= 253 and _DNS1123_SUBDOMAIN.match(name) else [_dns1123_subdomain_message()]
    if name != f"{names.get('plural', '')}.{spec.get('group', '')}":
        problems.append('must be spec.names.plural+"."+spec.group')
    return [fe.invalid("metadata.name", name, problem) for problem in problems]


def _dns1123_subdomain_message() -> str:
    return (
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
        "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    )


def _dns1035_message() -> str:
    return (
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
        "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
        "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
    )


def _is_dns1035(value: str) -> bool:
    return len(value) <= 63 and _DNS1035_LABEL.match(value) is not None


def _spec_errors(spec: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    group = spec.get("group") or ""
    if not group:
        errors.append(fe.required("spec.group"))
    elif not (len(group) <= 253 and _DNS1123_SUBDOMAIN.match(group)):
        errors.append(fe.invalid("spec.group", group, _dns1123_subdomain_message()))
    elif "." not in group:
        errors.append(fe.invalid("spec.group", group, "should be a domain with at least one dot"))
    scope = spec.get("scope") or ""
    if not scope:
        errors.append(fe.required("spec.scope"))
    elif scope not in ("Cluster", "Namespaced"):
        errors.append(fe.not_supported("spec.scope", scope, ["Cluster", "Namespaced"]))
    if spec.get("preserveUnknownFields") is True:
        detail = (
            "cannot set to true, set x-kubernetes-preserve-unknown-fields to true in spec.versions[*].schema instead"
        )
        errors.append(fe.invalid("spec.preserveUnknownFields", True, detail))
    versions = [version if isinstance(version, dict) else {} for version in spec.get("versions") or []]
    errors += _versions_errors(versions)
    errors += _names_errors(spec.get("names") or {})
    errors += _per_version_errors(versions)
    return errors


def _versions_errors(versions: list[dict[str, Any]]) -> list[FieldError]:
    errors = []
    seen: set[str] = set()
    unique = True
    for position, version in enumerate(versions):
        name = version.get("name") or ""
        unique = unique and name not in seen
        seen.add(name)
        if not _is_dns1035(name):
            errors.append(fe.invalid(f"spec.versions[{position}].name", name, _dns1035_message()))
        if not (version.get("schema") or {}).get("openAPIV3Schema"):
            errors.append(fe.required(f"spec.versions[{position}].schema.openAPIV3Schema"))
    if not unique:
        errors.append(fe.invalid("spec.versions", versions, "must contain unique version names"))
    if sum(1 for version in versions if version.get("storage")) != 1:
        errors.append(fe.invalid("spec.versions", versions, "must have exactly one version marked as storage version"))
    return errors


def _names_errors(names: dict[str, Any]) -> list[FieldError]:
    errors = [
        fe.required(f"spec.names.{key}") for key in ("plural", "singular", "kind", "listKind") if not names.get(key)
    ]
    for key in ("plural", "singular"):
        value = names.get(key) or ""
        if value and not _is_dns1035(value):
            errors.append(fe.invalid(f"spec.names.{key}", value, _dns1035_message()))
    for key in ("kind", "listKind"):
        value = names.get(key) or ""
        if value and not _is_dns1035(value.lower()):
            detail = "may have mixed case, but should otherwise match: " + _dns1035_message()
            errors.append(fe.invalid(f"spec.names.{key}", value, detail))
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        errors.append(fe.invalid("spec.names.listKind", names["listKind"], "kind and listKind may not be the same"))
    for key in ("shortNames", "categories"):
        for position, value in enumerate(names.get(key) or []):
            if not _is_dns1035(str(value)):
                errors.append(fe.invalid(f"spec.names.{key}[{position}]", value, _dns1035_message()))
    return errors


def _shared(versions: list[dict[str, Any]], key: str) -> bool:
    """All versions set one identical value: the server's internal version holds it once, at the spec's top level."""
    values = [version.get(key) for version in versions]
    return bool(values) and all(value and value == values[0] for value in values)


def _per_version_errors(versions: list[dict[str, Any]]) -> list[FieldError]:
    errors: list[FieldError] = []
    status_anywhere = any("status" in (version.get("subresources") or {}) for version in versions)
    for position, version in enumerate(versions):
        prefix = f"spec.versions[{position}]"
        if not _shared(versions, "schema"):
            status = "status" in (version.get("subresources") or {})
            errors += validation_errors(
                (version.get("schema") or {}).get("openAPIV3Schema"), f"{prefix}.schema", status
            )
        if not _shared(versions, "subresources"):
            errors += _subresources_errors(version.get("subresources"), f"{prefix}.subresources")
        if not _shared(versions, "additionalPrinterColumns"):
            errors += _columns_errors(version.get("additionalPrinterColumns"), f"{prefix}.additionalPrinterColumns")
    if versions and _shared(versions, "schema"):
        errors += validation_errors(versions[0]["schema"].get("openAPIV3Schema"), "spec.validation", status_anywhere)
    if versions and _shared(versions, "subresources"):
        errors += _subresources_errors(versions[0]["subresources"], "spec.subresources")
    if versions and _shared(versions, "additionalPrinterColumns"):
        errors += _columns_errors(versions[0]["additionalPrinterColumns"], "spec.additionalPrinterColumns")
    return errors


def _columns_errors(columns: Any, path: str) -> list[FieldError]:
    errors = []
    for position, column in enumerate(columns or []):
        where = f"{path}[{position}]"
        if not column.get("name"):
            errors.append(fe.required(f"{where}.name"))
        kind = column.get("type") or ""
        if not kind:
            errors.append(fe.required(f"{where}.type", "must be one of " + ",".join(_COLUMN_TYPES)))
        elif kind not in _COLUMN_TYPES:
            errors.append(fe.invalid(f"{where}.type", kind, "must be one of " + ",".join(_COLUMN_TYPES)))
        if column.get("format") and column["format"] not in _COLUMN_FORMATS:
            errors.append(
                fe.invalid(f"{where}.format", column["format"], "must be one of " + ",".join(_COLUMN_FORMATS))
            )
        errors += _json_path_errors(column.get("jsonPath") or "", f"{where}.JSONPath")
    return errors


def _json_path_errors(json_path: str, path: str) -> list[FieldError]:
    if not json_path:
        return [fe.required(path)]
    if not json_path.startswith("."):
        return [fe.invalid(path, json_path, "must be a simple json path starting with .")]
    return []


def _subresources_errors(subresources: Any, path: str) -> list[FieldError]:
    scale = (subresources or {}).get("scale")
    if not isinstance(scale, dict):
        return []
    errors = []
    for key, under in (("specReplicasPath", ".spec."), ("statusReplicasPath", ".status.")):
        where, value = f"{path}.scale.{key}", scale.get(key) or ""
        found = _json_path_errors(value, where)
        if found:
            errors += found
        elif not value.startswith(under):
            errors.append(fe.invalid(where, value, f"should be a json path under {under.rstrip('.')}"))
    selector = scale.get("labelSelectorPath")
    if selector and (_json_path_errors(selector, "") or not selector.startswith((".spec.", ".status."))):
        detail = "should be a json path under either .spec or .status"
        errors.append(fe.invalid(f"{path}.scale.labelSelectorPath", selector, detail))
    return errors


def _update_errors(spec: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    old_spec = old.get("spec") or {}
    errors = []
    immutable = [("spec.group", spec.get("group"), old_spec.get("group"))]
    names, old_names = spec.get("names") or {}, old_spec.get("names") or {}
    immutable.append(("spec.names.plural", names.get("plural"), old_names.get("plural")))
    established = any(
        condition.get("type") == "Established" and condition.get("status") == "True"
        for condition in (old.get("status") or {}).get("conditions") or []
    )
    if established:
        immutable += [
            ("spec.scope", spec.get("scope"), old_spec.get("scope")),
            ("spec.names.kind", names.get("kind"), old_names.get("kind")),
        ]
    for path, new_value, old_value in immutable:
        if new_value != old_value:
            errors.append(fe.invalid(path, new_value, "field is immutable"))
    served = {version.get("name") for version in spec.get("versions") or []}
    for position, stored in enumerate((old.get("status") or {}).get("storedVersions") or []):
        if stored not in served:
            errors.append(fe.invalid(f"status.storedVersions[{position}]", stored, "must appear in spec.versions"))
    return errors
