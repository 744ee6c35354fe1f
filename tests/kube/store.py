"""The emulator's state: objects with Kubernetes semantics, watch history and garbage collection.

Thread-safe: one re-entrant lock guards everything; both the HTTP server's loop and the tests' threads call in.
Stored objects are never mutated in place (every write stores a new dict), so watch events and readers can hold
references to them without copying.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tests.kube import admission, crd_validation, errors, managed, patching, schema, validation
from tests.kube.decoding import refuse_unknown_on_decode, strict_decoding_error, unknown_fields
from tests.kube.resources import ResourceRegistry, ResourceType, types_from_crd

Obj = dict[str, Any]
GroupResource = tuple[str, str]
Deliver = Callable[["WatchEvent"], None]

CRD_GR: GroupResource = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACES_GR: GroupResource = ("", "namespaces")
SECRETS_GR: GroupResource = ("", "secrets")
JOBS_GR: GroupResource = ("batch", "jobs")
FOREGROUND = "foregroundDeletion"
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the real server's alphabet for generateName suffixes


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    """A change as watchers see it; `old` is the previous state (for selector membership changes)."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    old: Obj | None
    group_resource: GroupResource


def _spec_part(obj: Obj, has_status: bool) -> Obj:
    """What `generation` tracks: everything except metadata (and status, where it is a subresource)."""
    ignored = ("metadata", "status") if has_status else ("metadata",)
    return {key: value for key, value in obj.items() if key not in ignored}


def _validate_metadata(meta: Obj) -> list[str]:
    causes = []
    for field in ("labels", "annotations"):
        values = meta.get(field) or {}
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            causes.append(f"metadata.{field}: Invalid value: values must be strings")
    for index, ref in enumerate(meta.get("ownerReferences") or []):
        missing = [key for key in ("apiVersion", "kind", "name", "uid") if not ref.get(key)]
        if missing:
            causes.append(f"metadata.ownerReferences[{index}]: Required value: {', '.join(missing)}")
    if not isinstance(meta.get("finalizers") or [], list):
        causes.append("metadata.finalizers: Invalid value: must be a list")
    return causes + admission.metadata_causes(meta)


def _encode_string_data(secret: Obj) -> None:
    """Secrets: `stringData` is write-only and lands base64-encoded in `data`, as on the real server."""
    string_data = secret.pop("stringData", None) or {}
    data = secret.setdefault("data", {})
    for key, value in string_data.items():
        data[key] = base64.b64encode(str(value).encode()).decode()


class ObjectStore:
    def __init__(self, registry: ResourceRegistry | None = None, history_size: int = 10_000) -> None:
        self.registry = registry or ResourceRegistry()
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified on every change (for the Python API's waits)
        self._history_size = history_size
        self._rv = 0
        self._objects: dict[GroupResource, dict[str, dict[str, Obj]]] = {}  # gr -> namespace ("" = cluster) -> name
        self._by_uid: dict[str, tuple[GroupResource, str, str]] = {}
        self._dependents: dict[str, set[str]] = {}  # owner uid -> dependent uids
        self._history: dict[GroupResource, deque[WatchEvent]] = {}
        self._compacted: dict[GroupResource, int] = {}  # the newest rv dropped from the history
        self._subscribers: dict[GroupResource, list[Deliver]] = {}
        namespace_type = self.registry.resolve("namespaces")
        for name in INITIAL_NAMESPACES:
            self.create(namespace_type, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # ----------------------------------------------------------------------------------------------- reading

    @property
    def resource_version(self) -> int:
        return self._rv

    def present(self, rtype: ResourceType, obj: Obj) -> Obj:
        """The object as served at `rtype`'s version (no conversion between CRD versions, like strategy None)."""
        if obj.get("apiVersion") == rtype.api_version:
            return obj
        return {**obj, "apiVersion": rtype.api_version}

    def find(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None:
        with self.lock:
            return self._objects.get(rtype.group_resource, {}).get(namespace or "", {}).get(name)

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.find(rtype, namespace, name)
        if obj is None:
            raise errors.not_found(rtype.qualified, name)
        return self.present(rtype, obj)

    def iter_objects(self, rtype: ResourceType, namespace: str | None) -> Iterator[Obj]:
        """Objects sorted by (namespace, name); a snapshot, safe to consume without the lock."""
        with self.lock:
            by_namespace = self._objects.get(rtype.group_resource, {})
            namespaces = [namespace or ""] if namespace is not None or not rtype.namespaced else sorted(by_namespace)
            snapshot = [
                by_namespace[ns][name] for ns in namespaces if ns in by_namespace for name in sorted(by_namespace[ns])
            ]
        return (self.present(rtype, obj) for obj in snapshot)

    # ----------------------------------------------------------------------------------------------- writing

    def _commit(self, gr: GroupResource, event_type: str, new: Obj, old: Obj | None) -> Obj:
        """Record one change: bump the global resourceVersion, store, index, append to history, notify."""
        self._rv += 1
        new = {**new, "metadata": {**new["metadata"], "resourceVersion": str(self._rv)}}
        meta = new["metadata"]
        namespace, name, uid = meta.get("namespace", ""), meta["name"], meta["uid"]
        by_name = self._objects.setdefault(gr, {}).setdefault(namespace, {})
        for ref in (old or {}).get("metadata", {}).get("ownerReferences") or []:
            self._dependents.get(ref["uid"], set()).discard(uid)
        if event_type == "DELETED":
            by_name.pop(name, None)
            self._by_uid.pop(uid, None)
        else:
            by_name[name] = new
            self._by_uid[uid] = (gr, namespace, name)
            for ref in meta.get("ownerReferences") or []:
                self._dependents.setdefault(ref["uid"], set()).add(uid)
        event = WatchEvent(self._rv, event_type, new, old, gr)
        history = self._history.setdefault(gr, deque())
        if len(history) >= self._history_size:
            self._compacted[gr] = history.popleft().rv
        history.append(event)
        for deliver in list(self._subscribers.get(gr, ())):
            deliver(event)
        self.changed.notify_all()
        return new

    def create(
        self, rtype: ResourceType, namespace: str | None, body: Any, *, manager: str | None = None, strict: bool = False
    ) -> Obj:
        """POST. `manager` (HTTP requests: fieldManager or the user agent) gets the object's fields in managedFields;
        `strict` is fieldValidation=Strict."""
        if not isinstance(body, dict):
            raise errors.bad_request("the body of a create must be a JSON object")
        if strict:
            refuse_unknown_on_decode(rtype, body)
        obj = copy.deepcopy(body)
        for key, expected in (("apiVersion", rtype.api_version), ("kind", rtype.kind)):
            if obj.setdefault(key, expected) != expected:
                raise errors.bad_request(f"{key} {obj[key]!r} does not match the endpoint's {expected!r}")
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        with self.lock:
            if rtype.namespaced:
                namespace = namespace or meta.get("namespace") or "default"
                if meta.setdefault("namespace", namespace) != namespace:
                    raise errors.bad_request("the namespace of the object does not match the namespace of the URL")
                ns_obj = self._objects.get(NAMESPACES_GR, {}).get("", {}).get(namespace)
                if ns_obj is None:
                    raise errors.not_found("namespaces", namespace)
                if ns_obj["metadata"].get("deletionTimestamp"):
                    raise errors.ApiError(403, "Forbidden", f"namespace {namespace} is being terminated")
            else:
                meta.pop("namespace", None)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
            name = meta.get("name") or ""
            if not name:
                raise validation.invalid_status(
                    rtype.kind, rtype.group, "", ["metadata.name: Required value: name or generateName is required"]
                )
            causes = admission.name_causes(rtype.group_resource, name, meta.get("generateName") or "")
            causes += _validate_metadata(meta)
            if self.find(rtype, namespace, name) is not None:
                raise errors.already_exists(rtype.qualified, name)
            for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
                meta.pop(key, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            if rtype.has_generation:
                meta["generation"] = 1
            if rtype.has_status:
                obj.pop("status", None)
            causes += self._admit(rtype, obj, None)
            if causes:
                raise validation.invalid_status(rtype.kind, rtype.group, name, causes)
            if manager:
                managed.track_update(None, obj, manager, rtype.api_version, rtype.has_status)
            if rtype.namespaced:  # validating admission runs after validation: 422 comes before PSA's 403
                ns_labels = self._objects[NAMESPACES_GR][""][namespace or ""]["metadata"].get("labels") or {}
                admission.enforce_pod_security(rtype.group_resource, obj, ns_labels)
            if rtype.group_resource == CRD_GR:
                self._register_crd(obj)
            created = self._commit(rtype.group_resource, "ADDED", obj, None)
            owners = [ref["uid"] for ref in meta.get("ownerReferences") or []]
            if owners and not any(uid in self._by_uid for uid in owners):  # GC: all owners are already gone
                self._remove(created)
                self._collect_garbage(created)
            return self.present(rtype, created)

    def _admit(self, rtype: ResourceType, obj: Obj, old: Obj | None, subresource: str = "") -> list[str]:
        """Kind-specific defaulting and validation (mutates `obj`, a private copy)."""
        if rtype.is_custom:
            return schema.admit(rtype.schema, obj, old) if rtype.schema else []
        if subresource == "status":
            return []
        if rtype.group_resource == SECRETS_GR:
            _encode_string_data(obj)
        if rtype.group_resource == CRD_GR:
            crd_validation.check(obj, old)  # kube-apiserver's CRD registration checks: raises its 422
            return []
        taken_ips = set()
        if rtype.group_resource == admission.SERVICES:  # a new Service gets a cluster IP no other one has
            taken_ips = {(svc.get("spec") or {}).get("clusterIP", "") for svc in self._iter_group_resource(admission.SERVICES)}
        return admission.admit(rtype.group_resource, obj, old, taken_ips)

    def _register_crd(self, crd: Obj) -> None:
        spec = crd["spec"]
        self.registry.register_crd(crd["metadata"]["name"], types_from_crd(crd))
        crd["status"] = {
            "acceptedNames": spec["names"],
            "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")],
            "conditions": [
                {
                    "type": kind,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": now_rfc3339(),
                }
                for kind, reason, message in (
                    ("NamesAccepted", "NoConflicts", "no conflicts found"),
                    ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                )
            ],
        }

    def update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str = "",
        *,
        manager: str | None = None,
        strict: bool = False,
    ) -> Obj:
        """PUT: replaces the object (or only its status through the status subresource)."""
        if not isinstance(body, dict):
            raise errors.bad_request("the body of an update must be a JSON object")
        if strict:
            refuse_unknown_on_decode(rtype, body)
        with self.lock:
            old = self._existing(rtype, namespace, name, subresource)
            body_meta = body.get("metadata") or {}
            if body_meta.get("name", name) != name:
                raise errors.bad_request("the name of the object does not match the name in the URL")
            expected_rv = body_meta.get("resourceVersion")
            if expected_rv and expected_rv != old["metadata"]["resourceVersion"]:
                raise errors.conflict(rtype.qualified, name)
            return self._write(rtype, old, copy.deepcopy(body), subresource, manager)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        content_type: str,
        subresource: str = "",
        *,
        manager: str | None = None,
        strict: bool = False,
        force: bool = False,
    ) -> Obj:
        """PATCH: merge, JSON, strategic merge (built-in kinds) or server-side apply (`body` is then the parsed
        apply configuration; a missing object is created)."""
        with self.lock:
            if content_type == patching.APPLY_PATCH:
                return self._apply(rtype, namespace, name, body, subresource, manager, force)
            stored = self._existing(rtype, namespace, name, subresource)
            old = self.present(rtype, stored)
            if content_type == patching.MERGE_PATCH:
                new = patching.merge_patch(old, body)
            elif content_type == patching.JSON_PATCH:
                new = patching.json_patch(old, body)
            elif content_type == patching.STRATEGIC_MERGE_PATCH and not rtype.is_custom:
                new = patching.strategic_merge_patch(old, body)
            else:
                raise errors.ApiError(415, "UnsupportedMediaType", f"the media type {content_type!r} is not supported")
            if not isinstance(new, dict):
                raise errors.bad_request("the patched object is not a JSON object")
            expected_rv = ((body.get("metadata") or {}) if isinstance(body, dict) else {}).get("resourceVersion")
            if expected_rv and expected_rv != old["metadata"]["resourceVersion"]:
                raise errors.conflict(rtype.qualified, name)
            unknown = unknown_fields(rtype, new) if strict else []
            if unknown:  # the patched object does not decode strictly: 422 on the `patch` field (patch.go)
                shown = copy.deepcopy(new)  # the server encodes the object without managedFields (patch.go)
                if "managedFields" not in json.dumps(body):
                    (shown.get("metadata") or {}).pop("managedFields", None)
                patched = json.dumps(shown, separators=(",", ":"), sort_keys=True)
                raise validation.invalid_status(
                    "", "", "", [f"patch: Invalid value: {json.dumps(patched)}: {strict_decoding_error(unknown)}"]
                )
            return self._write(rtype, stored, new, subresource, manager)

    def _apply(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        config: Any,
        subresource: str,
        manager: str | None,
        force: bool,
    ) -> Obj:
        """Server-side apply (fieldmanager.Apply): merge the configuration by field ownership, create if missing."""
        if not manager:
            raise errors.bad_request("PATCH requests with apply patch type require fieldManager")
        managed.check_configuration(config, rtype, namespace, name, unknown_fields(rtype, config))
        stored = self.find(rtype, namespace, name)
        if stored is None:
            if subresource:
                raise errors.not_found(rtype.qualified, name)
            created = managed.apply(None, config, manager, force, rtype.has_status)
            created["metadata"] = {**created.get("metadata", {}), "name": name}
            return self.create(rtype, namespace, created)
        merged = managed.apply(self.present(rtype, stored), config, manager, force, rtype.has_status, subresource)
        return self._write(rtype, stored, merged, subresource)

    def _existing(self, rtype: ResourceType, namespace: str | None, name: str, subresource: str) -> Obj:
        if subresource and not (subresource == "status" and rtype.has_status):
            raise errors.ApiError(404, "NotFound", f"the server could not find the requested resource ({subresource})")
        old = self.find(rtype, namespace, name)
        if old is None:
            raise errors.not_found(rtype.qualified, name)
        return old

    def _write(self, rtype: ResourceType, old: Obj, new: Obj, subresource: str, manager: str | None = None) -> Obj:
        """Apply the update rules to a candidate object and commit it (or nothing, for a no-op).
        `old` is the stored object; `new` may share parts with it, so it is copied before any change."""
        new = copy.deepcopy(new)
        if subresource == "status":  # only the status changes through the status subresource
            new = {**{k: copy.deepcopy(v) for k, v in old.items() if k != "status"}, "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif rtype.has_status:  # ...and the main endpoint ignores status changes
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        for key in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ):
            meta.pop(key, None)
            if key in old_meta:
                meta[key] = old_meta[key]
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        if "managedFields" not in meta and "managedFields" in old_meta:  # a body without them keeps them
            meta["managedFields"] = copy.deepcopy(old_meta["managedFields"])
        causes = _validate_metadata(meta)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                causes.append(
                    f"metadata.finalizers: Forbidden: no new finalizers can be added if the object is being "
                    f"deleted, found new finalizers {sorted(added)}"
                )
        causes += self._admit(rtype, new, old, subresource)
        if causes:
            raise validation.invalid_status(rtype.kind, rtype.group, old_meta["name"], causes)
        if rtype.has_generation and _spec_part(new, rtype.has_status) != _spec_part(old, rtype.has_status):
            meta["generation"] = old_meta.get("generation", 1) + 1
        if manager:
            managed.track_update(old, new, manager, rtype.api_version, rtype.has_status, subresource)
        if new == old:
            return self.present(rtype, old)  # a no-op write changes nothing, not even the resourceVersion
        gr = rtype.group_resource
        if gr == CRD_GR and subresource != "status":
            self._register_crd(new)
        committed = self._commit(gr, "MODIFIED", new, old)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(committed)
            self._collect_garbage(committed)
        return self.present(rtype, committed)

    # ---------------------------------------------------------------------------------------------- deleting

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        options: Obj | None = None,
    ) -> Obj:
        """DELETE with finalizers, preconditions and propagationPolicy (Orphan, Background, Foreground)."""
        options = options or {}
        with self.lock:
            obj = self._existing(rtype, namespace, name, "")
            preconditions = options.get("preconditions") or {}
            for key in ("uid", "resourceVersion"):
                if preconditions.get(key) and preconditions[key] != obj["metadata"][key]:
                    raise errors.conflict(rtype.qualified, name, f"Precondition failed: {key} mismatch")
            default_policy = "Orphan" if rtype.group_resource == JOBS_GR else "Background"  # like the real batch/v1
            policy = options.get("propagationPolicy") or default_policy
            if options.get("orphanDependents") is True:
                policy = "Orphan"
            if policy not in ("Orphan", "Background", "Foreground"):
                raise errors.bad_request(f"unsupported propagationPolicy {policy!r}")
            return self.present(rtype, self._delete(obj, policy))

    def _delete(self, obj: Obj, policy: str) -> Obj:
        meta, uid = obj["metadata"], obj["metadata"]["uid"]
        gr = self._by_uid[uid][0]
        if meta.get("deletionTimestamp"):
            return obj  # already being deleted: nothing more to do
        if policy == "Orphan":
            for dependent_uid in list(self._dependents.get(uid, ())):
                self._strip_owner(dependent_uid, uid)
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and self._dependents.get(uid):
            finalizers.append(FOREGROUND)
        is_namespace = gr == NAMESPACES_GR  # a namespace stays Terminating until everything in it is gone
        if finalizers or is_namespace:
            marked_meta = {**meta, "deletionTimestamp": now_rfc3339(), "deletionGracePeriodSeconds": 0}
            if finalizers:
                marked_meta["finalizers"] = finalizers
            marked = {**obj, "metadata": marked_meta}
            if is_namespace:
                marked["status"] = {**(obj.get("status") or {}), "phase": "Terminating"}
            obj = self._commit(gr, "MODIFIED", marked, obj)
            if FOREGROUND in finalizers:
                self._delete_dependents(uid)
            if is_namespace:
                self._empty_namespace(meta["name"])
            return self.find_by_uid(uid) or obj
        removed = self._remove(obj)
        self._collect_garbage(removed)
        return removed

    def find_by_uid(self, uid: str) -> Obj | None:
        where = self._by_uid.get(uid)
        if where is None:
            return None
        gr, namespace, name = where
        return self._objects[gr][namespace][name]

    def _remove(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        gr = self._by_uid[meta["uid"]][0]
        if gr == CRD_GR:
            for rtype in self.registry.unregister_crd(meta["name"]):
                for custom in list(self._iter_group_resource(rtype.group_resource)):
                    self._collect_garbage(self._commit(rtype.group_resource, "DELETED", custom, custom))
        return self._commit(gr, "DELETED", obj, obj)

    def _iter_group_resource(self, gr: GroupResource) -> Iterator[Obj]:
        for by_name in self._objects.get(gr, {}).values():
            yield from list(by_name.values())

    def _collect_garbage(self, removed: Obj) -> None:
        """After an object is gone: delete dependents whose owners are all gone (background cascade), release
        owners waiting in foreground deletion, and finish a terminating namespace that became empty."""
        meta = removed["metadata"]
        self._delete_dependents(meta["uid"])
        for ref in meta.get("ownerReferences") or []:
            owner = self.find_by_uid(ref["uid"])
            if owner is None or FOREGROUND not in (owner["metadata"].get("finalizers") or []):
                continue
            if not self._dependents.get(ref["uid"]):
                finalizers = [f for f in owner["metadata"]["finalizers"] if f != FOREGROUND]
                owner_gr = self._by_uid[ref["uid"]][0]
                released = self._commit(
                    owner_gr, "MODIFIED", {**owner, "metadata": {**owner["metadata"], "finalizers": finalizers}}, owner
                )
                if not finalizers:
                    self._collect_garbage(self._remove(released))
        namespace = meta.get("namespace")
        if namespace:
            self._maybe_finish_namespace(namespace)

    def _delete_dependents(self, owner_uid: str) -> None:
        for dependent_uid in sorted(self._dependents.get(owner_uid, ())):
            dependent = self.find_by_uid(dependent_uid)
            if dependent is None:
                continue
            owners = [ref["uid"] for ref in dependent["metadata"].get("ownerReferences") or []]
            if not any(uid != owner_uid and uid in self._by_uid for uid in owners):
                self._delete(dependent, "Background")
        if not self.find_by_uid(owner_uid):
            self._dependents.pop(owner_uid, None)

    def _strip_owner(self, dependent_uid: str, owner_uid: str) -> None:
        dependent = self.find_by_uid(dependent_uid)
        if dependent is None:
            return
        refs = [ref for ref in dependent["metadata"].get("ownerReferences") or [] if ref["uid"] != owner_uid]
        meta = {**dependent["metadata"], "ownerReferences": refs}
        if not refs:
            del meta["ownerReferences"]
        self._commit(self._by_uid[dependent_uid][0], "MODIFIED", {**dependent, "metadata": meta}, dependent)

    def _empty_namespace(self, namespace: str) -> None:
        for gr, by_namespace in list(self._objects.items()):
            for obj in list(by_namespace.get(namespace, {}).values()):
                self._delete(obj, "Background")
        self._maybe_finish_namespace(namespace)

    def _maybe_finish_namespace(self, namespace: str) -> None:
        ns_obj = self._objects.get(NAMESPACES_GR, {}).get("", {}).get(namespace)
        if ns_obj is None or not ns_obj["metadata"].get("deletionTimestamp") or ns_obj["metadata"].get("finalizers"):
            return
        if not any(by_namespace.get(namespace) for by_namespace in self._objects.values()):
            self._remove(ns_obj)

    # ---------------------------------------------------------------------------------------------- watching

    def subscribe(self, rtype: ResourceType, since: str | None, deliver: Deliver) -> tuple[list[WatchEvent], int]:
        """Start a watch: returns the events to send first, and the resourceVersion they bring the watcher to.
        `since` unset/""/"0": synthetic ADDED events for the current state; otherwise the history after `since`
        (410 Gone when that part of the history has been compacted). Then `deliver` gets every later change."""
        gr = rtype.group_resource
        with self.lock:
            if since in (None, "", "0"):
                initial = [
                    WatchEvent(int(obj["metadata"]["resourceVersion"]), "ADDED", obj, None, gr)
                    for obj in self._iter_group_resource(gr)
                ]
            else:
                try:
                    start = int(since)
                except ValueError:
                    raise errors.bad_request(f"invalid resourceVersion {since!r}") from None
                if start < self._compacted.get(gr, 0):
                    raise errors.gone(f"too old resource version: {start} ({self._compacted[gr]})")
                initial = [event for event in self._history.get(gr, ()) if event.rv > start]
            self._subscribers.setdefault(gr, []).append(deliver)
            return initial, self._rv

    def unsubscribe(self, rtype: ResourceType, deliver: Deliver) -> None:
        with self.lock:
            subscribers = self._subscribers.get(rtype.group_resource, [])
            if deliver in subscribers:
                subscribers.remove(deliver)

    def compact(self) -> int:
        """Forget all watch history (as etcd compaction does); watches from older resourceVersions get 410."""
        with self.lock:
            for gr, history in self._history.items():
                if history:
                    self._compacted[gr] = history[-1].rv
                history.clear()
            return self._rv
