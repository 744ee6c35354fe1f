"""Field management as kube-apiserver does it (fieldmanager + structured-merge-diff): `metadata.managedFields`,
updated on every write that names a manager, and server-side apply (`application/apply-patch+yaml`).

A field set is a set of leaf paths: a scalar, a list (lists are atomic here) or an empty object. Writes of the
`Update` operation (create, update, merge/JSON patch) give their manager the leaves they changed and take those
leaves from every other manager. An `Apply` makes the manager own exactly the leaves of its configuration: leaves it
applied before and leaves out now are removed from the object unless another manager owns them too; a leaf another
manager owns whose value the apply would change is a conflict (409) unless `force` is set, which moves the
ownership. Applying the value a field already has shares it. FieldsV1 is written as the server writes it
(`{"f:spec": {"f:x": {}}}`, `"."` for the labels and annotations maps).

Not modelled (tests/kube/README.md): list types `map`/`set` (every list is atomic), the reset fields of other
strategies than the status subresource's, managers per API version when a CRD serves several versions.
"""

from __future__ import annotations

import copy
import datetime
import json
from typing import Any

import yaml

from tests.kube import errors
from tests.kube.resources import ResourceType

Path = tuple[str, ...]
Entry = dict[str, Any]
# Never managed: identity and bookkeeping metadata (fieldmanager's stripped fields)
_STRIPPED_META = {
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
}
_MAPS = {("metadata", "labels"), ("metadata", "annotations")}
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_KUBECTL = "kubectl"  # the server upgrades client-side apply only for kubectl's server-side apply manager


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def manager_name(field_manager: str | None, user_agent: str) -> str:
    """managerOrUserAgent: the `fieldManager` query parameter, else the User-Agent up to its first `/`."""
    if field_manager:
        return field_manager
    return user_agent.split("/", 1)[0][:128] or "unknown"


def leaves(obj: Any, has_status: bool, subresource: str = "") -> dict[Path, Any]:
    """The object's leaf paths and their values, without what no manager owns (apiVersion, kind, identity metadata,
    status on the main endpoint of a kind with a status subresource, everything but status through /status)."""
    found: dict[Path, Any] = {}

    def walk(value: Any, path: Path) -> None:
        if isinstance(value, dict) and value:
            for key, child in value.items():
                walk(child, (*path, key))
        else:
            found[path] = value

    for key, value in (obj or {}).items():
        if key in ("apiVersion", "kind"):
            continue
        if subresource == "status" and key != "status":
            continue
        if not subresource and has_status and key == "status":
            continue
        if key == "metadata" and isinstance(value, dict):
            for meta_key, meta_value in value.items():
                if meta_key not in _STRIPPED_META:
                    walk(meta_value, ("metadata", meta_key))
        else:
            walk(value, (key,))
    return found


def encode(paths: set[Path]) -> dict[str, Any]:
    """A field set as FieldsV1 JSON."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for depth, key in enumerate(path):
            node = node.setdefault(f"f:{key}", {})
            if path[: depth + 1] in _MAPS:
                node.setdefault(".", {})
    return root


def decode(fields: Any) -> set[Path]:
    """FieldsV1 JSON back to leaf paths (`.` markers name the map itself and are not leaves)."""
    paths: set[Path] = set()

    def walk(node: dict[str, Any], path: Path) -> None:
        children = [key for key in node if key.startswith("f:")]
        if not children and path:
            paths.add(path)
        for key in children:
            walk(node[key] or {}, (*path, key[2:]))

    walk(fields if isinstance(fields, dict) else {}, ())
    return paths


def _entries(obj: dict[str, Any]) -> list[Entry]:
    return copy.deepcopy((obj.get("metadata") or {}).get("managedFields") or [])


def _same_entry(entry: Entry, manager: str, operation: str, subresource: str) -> bool:
    return (
        entry.get("manager") == manager
        and entry.get("operation") == operation
        and (entry.get("subresource") or "") == subresource
    )


def _set_entry(entries: list[Entry], manager: str, operation: str, api_version: str, subresource: str,
               paths: set[Path]) -> list[Entry]:
    """`entries` with the manager's entry replaced (or added, or removed when it owns nothing)."""
    kept = [entry for entry in entries if not _same_entry(entry, manager, operation, subresource)]
    if not paths:
        return kept
    entry: Entry = {"manager": manager, "operation": operation, "apiVersion": api_version, "time": _now(),
                    "fieldsType": "FieldsV1", "fieldsV1": encode(paths)}
    if subresource:
        entry["subresource"] = subresource
    return [*kept, entry]


def _without(entries: list[Entry], taken: set[Path], keep: tuple[str, str, str]) -> list[Entry]:
    """Every other entry loses the `taken` leaves; entries left owning nothing are dropped, as the server drops them."""
    result = []
    for entry in entries:
        if _same_entry(entry, *keep):
            result.append(entry)
            continue
        owned = decode(entry.get("fieldsV1"))
        rest = {path for path in owned if not any(_covers(other, path) for other in taken)}
        if rest == owned:
            result.append(entry)
        elif rest:
            result.append({**entry, "fieldsV1": encode(rest)})
    return result


def _covers(path: Path, other: Path) -> bool:
    """One leaf path is the other, or an ancestor or descendant of it (setting one replaces the other)."""
    shorter = min(len(path), len(other))
    return path[:shorter] == other[:shorter]


def track_update(old: dict[str, Any] | None, new: dict[str, Any], manager: str, api_version: str, has_status: bool,
                 subresource: str = "") -> None:
    """An `Update` write by `manager`: sets `new`'s managedFields (in place) from the leaves the write changed.
    A write that sets managedFields itself (kubectl's upgrade of client-side apply's entries) keeps them."""
    meta = new.setdefault("metadata", {})
    old_entries = _entries(old) if old is not None else []
    if old is not None and "managedFields" in meta and meta["managedFields"] != old_entries:
        if not meta["managedFields"]:
            meta.pop("managedFields")  # an empty list resets them
        return
    before = leaves(old, has_status, subresource) if old is not None else {}
    after = leaves(new, has_status, subresource)
    changed = {path for path, value in after.items() if before.get(path, _MISSING) != value}
    removed = set(before) - set(after)
    if not changed and not removed:
        if old_entries:
            meta["managedFields"] = old_entries
        return
    entries = _without(old_entries, changed | removed, (manager, "Update", subresource))
    mine = next((e for e in entries if _same_entry(e, manager, "Update", subresource)), None)
    owned = (decode(mine.get("fieldsV1")) if mine else set()) | changed
    owned = {path for path in owned if path in after}
    entries = _set_entry(entries, manager, "Update", api_version, subresource, owned)
    entries = [entry for entry in entries if _still_present(entry, after)]
    if entries:
        meta["managedFields"] = entries
    else:
        meta.pop("managedFields", None)


_MISSING = object()


def _still_present(entry: Entry, after: dict[Path, Any]) -> bool:
    return any(path in after for path in decode(entry.get("fieldsV1")))


def parse_apply_body(raw: bytes) -> dict[str, Any]:
    """The apply configuration (YAML or JSON); a bad body is a 400 as the server's `error decoding YAML`."""
    try:
        body = yaml.safe_load(raw.decode())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise errors.bad_request(f"error decoding YAML: {error}") from None
    if not isinstance(body, dict):
        raise errors.bad_request("error decoding YAML: the apply configuration is not an object")
    return body


def check_configuration(config: Any, rtype: ResourceType, namespace: str | None, name: str, unknown: list[str]
                        ) -> None:
    """What fieldmanager refuses before merging: another version, managedFields, another name, and (`unknown`, the
    custom resource's undeclared fields) a configuration structured-merge-diff cannot type, a plain error (500)."""
    if not isinstance(config, dict):
        raise errors.bad_request("error decoding YAML: the apply configuration is not an object")
    if config.get("apiVersion") != rtype.api_version:
        raise errors.bad_request(
            "Incorrect version specified in apply patch. "
            f"Specified patch version: {config.get('apiVersion')}, expected: {rtype.api_version}"
        )
    if config.get("kind") != rtype.kind:
        raise errors.bad_request(f"kind {config.get('kind')!r} does not match the endpoint's {rtype.kind!r}")
    meta = config.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    if meta.get("managedFields") is not None:
        raise errors.bad_request("metadata.managedFields must be nil")
    if meta.get("name", name) != name:
        raise errors.bad_request("the name of the object does not match the name in the URL")
    if unknown:
        where = f"{namespace or ''}/{name}; {rtype.group}/{rtype.version}, Kind={rtype.kind}"
        fields = ", ".join(f".{path}: field not declared in schema" for path in unknown)
        raise errors.ApiError(500, "", f"failed to create typed patch object ({where}): {fields}")


def apply(live: dict[str, Any] | None, config: dict[str, Any], manager: str, force: bool, has_status: bool,
          subresource: str = "") -> dict[str, Any]:
    """Server-side apply of `config` by `manager` onto `live` (None: the object does not exist yet). Returns the
    object to write, its managedFields set; raises the server's 409 when another manager owns a leaf that changes."""
    api_version = config.get("apiVersion", "")
    applied = leaves(config, has_status, subresource)
    base = copy.deepcopy(live) if live is not None else {"apiVersion": api_version, "kind": config.get("kind")}
    entries = _entries(base)
    current = leaves(base, has_status, subresource)
    conflicts: dict[str, list[str]] = {}
    taken: set[Path] = set()
    for path, value in applied.items():
        if current.get(path, _MISSING) == value:
            continue
        taken.add(path)
        for entry in entries:
            if _same_entry(entry, manager, "Apply", subresource):
                continue
            if any(_covers(owned, path) for owned in decode(entry.get("fieldsV1"))):
                conflicts.setdefault(_manager_label(entry), []).append("." + ".".join(path))
    if conflicts and not force and manager == _KUBECTL:
        conflicts = _beyond_last_applied(conflicts, base, has_status)
    if conflicts and not force:
        raise _conflict_error(conflicts)
    merged = base
    previous = next((decode(e.get("fieldsV1")) for e in entries if _same_entry(e, manager, "Apply", subresource)),
                    set())
    others = set().union(*(decode(e.get("fieldsV1")) for e in entries
                           if not _same_entry(e, manager, "Apply", subresource)))
    for path in sorted(previous - set(applied)):
        if not any(_covers(owned, path) for owned in others):
            _remove(merged, path)
    for path, value in applied.items():
        _put(merged, path, copy.deepcopy(value))
    entries = _without(entries, taken, (manager, "Apply", subresource))
    entries = _set_entry(entries, manager, "Apply", api_version, subresource, set(applied))
    merged.setdefault("metadata", {})["managedFields"] = entries
    annotations = merged["metadata"].get("annotations") or {}
    if manager == _KUBECTL and LAST_APPLIED in annotations:  # lastAppliedUpdater: keep client-side apply's view
        shown = copy.deepcopy(config)
        (shown.get("metadata") or {}).get("annotations", {}).pop(LAST_APPLIED, None)
        annotations[LAST_APPLIED] = json.dumps(shown, separators=(",", ":"), sort_keys=True)
    return merged


def _beyond_last_applied(conflicts: dict[str, list[str]], live: dict[str, Any], has_status: bool
                         ) -> dict[str, list[str]]:
    """lastAppliedManager: kubectl's server-side apply may take the fields that client-side apply's annotation
    still describes (its value is the live one) without a conflict; only the other conflicts remain."""
    raw = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    try:
        last_applied = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        last_applied = None
    if not isinstance(last_applied, dict):
        return conflicts
    current = leaves(live, has_status)
    allowed = {"." + ".".join(path) for path, value in leaves(last_applied, has_status).items()
               if current.get(path, _MISSING) == value}
    remaining = {label: [path for path in paths if path not in allowed] for label, paths in conflicts.items()}
    return {label: paths for label, paths in remaining.items() if paths}


def _manager_label(entry: Entry) -> str:
    """printManager: the quoted name, its subresource, and for an Update the API version and time."""
    label = json.dumps(entry.get("manager", ""))
    if entry.get("subresource"):
        label += f' with subresource {json.dumps(entry["subresource"])}'
    if entry.get("operation") == "Update":
        label += f' using {entry.get("apiVersion", "")}'
        if entry.get("time"):
            label += f' at {entry["time"]}'
    return label


def _conflict_error(conflicts: dict[str, list[str]]) -> errors.ApiError:
    """NewConflictError: one conflict on one line, several grouped by manager (managers sorted), a path a line."""
    count = sum(len(paths) for paths in conflicts.values())
    if count == 1:
        [(label, [path])] = conflicts.items()
        summary = f"Apply failed with 1 conflict: conflict with {label}: {path}"
    else:
        lines = []
        for label in sorted(conflicts):
            lines.append(f"conflicts with {label}:")
            lines += [f"- {path}" for path in conflicts[label]]
        summary = f"Apply failed with {count} conflicts: " + "\n".join(lines)
    causes = [
        {"reason": "FieldManagerConflict", "message": f"conflict with {label}", "field": path}
        for label, paths in conflicts.items()
        for path in paths
    ]
    return errors.ApiError(409, "Conflict", summary, details={"causes": causes})


def _put(obj: dict[str, Any], path: Path, value: Any) -> None:
    node = obj
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def _remove(obj: dict[str, Any], path: Path) -> None:
    """Drop a leaf and the objects it leaves empty."""
    trail = [obj]
    for key in path[:-1]:
        child = trail[-1].get(key)
        if not isinstance(child, dict):
            return
        trail.append(child)
    trail[-1].pop(path[-1], None)
    for depth in range(len(path) - 2, -1, -1):
        if trail[depth + 1]:
            break
        trail[depth].pop(path[depth], None)
