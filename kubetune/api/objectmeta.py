"""The checks a Kubernetes API server makes of any object's `metadata`, so `kubetune validate` refuses what it refuses.

Types as the server's strict decoding of ObjectMeta reads them (a wrong type or an unknown field is an error, null is
"unset"), names, namespaces, label and annotation keys and values, finalizers and owner references as
apimachinery's ObjectMeta validation checks them. Yields `(path, message)` pairs.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from typing import Any

from kubetune.api import types as t

MetaError = tuple[str, str]

_STRINGS = ("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion")
_TIMES = ("creationTimestamp", "deletionTimestamp")
_INTEGERS = ("generation", "deletionGracePeriodSeconds")
_STRING_MAPS = ("labels", "annotations")
_LISTS = ("finalizers", "ownerReferences", "managedFields")
_KNOWN = {*_STRINGS, *_TIMES, *_INTEGERS, *_STRING_MAPS, *_LISTS}
_OWNER_STRINGS = ("apiVersion", "kind", "name", "uid")
_OWNER_BOOLS = ("controller", "blockOwnerDeletion")
_INT64 = 2**63
ANNOTATIONS_MAX_BYTES = 256 * 1024

_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})")

DNS_SUBDOMAIN_MESSAGE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                         "'.', and must start and end with an alphanumeric character (at most 253 characters)")
DNS_LABEL_MESSAGE = ("must be a DNS-1123 label: lower case alphanumeric characters or '-', starting and ending with "
                     "an alphanumeric character (at most 63 characters)")
QUALIFIED_NAME_MESSAGE = ("must be a qualified name: an optional DNS subdomain prefix (at most 253 characters) and "
                          "'/', then a name of at most 63 characters (alphanumerics, '-', '_' or '.', starting and "
                          "ending with an alphanumeric character)")
LABEL_VALUE_MESSAGE = ("label values must be at most 63 characters: alphanumerics, '-', '_' or '.', starting and "
                       "ending with an alphanumeric character (or empty)")


def _full(pattern: str, text: str) -> bool:
    """Whole-string match, as Go's anchored `^…$` (`re.match` would let `$` match before a trailing newline)."""
    return re.fullmatch(pattern, text) is not None


def is_dns_subdomain(text: str) -> bool:
    return len(text) <= 253 and _full(t.DNS_SUBDOMAIN, text)


def is_dns_label(text: str) -> bool:
    return len(text) <= 63 and _full(t.DNS_LABEL, text)


def is_qualified_name(text: str) -> bool:
    parts = text.split("/")
    if len(parts) > 2:
        return False
    name = parts[-1]
    if not (0 < len(name) <= 63 and _LABEL_NAME.fullmatch(name)):
        return False
    return len(parts) == 1 or (len(parts[0]) > 0 and is_dns_subdomain(parts[0]))


def is_label_value(text: str) -> bool:
    return len(text) <= 63 and _full(t.LABEL_VALUE, text)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -_INT64 <= value < _INT64


def metadata_errors(meta: Any) -> Iterator[MetaError]:
    """What the API server reports for this `metadata` (the FineTuneRun's own name rules are CEL, elsewhere)."""
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        yield "metadata", "must be a mapping"
        return
    for key in sorted(set(meta) - _KNOWN):
        yield f"metadata.{key}", "unknown field"
    for key in (*_STRINGS, *_TIMES):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            yield f"metadata.{key}", "must be a string"
    for key in _TIMES:
        if isinstance(meta.get(key), str) and not _is_time(meta[key]):
            yield f"metadata.{key}", "must be an RFC 3339 time, e.g. 2024-01-31T12:00:00Z"
    for key in _INTEGERS:
        if meta.get(key) is not None and not _is_int(meta[key]):
            yield f"metadata.{key}", "must be an integer"
    for key in _LISTS:
        if meta.get(key) is not None and not isinstance(meta[key], list):
            yield f"metadata.{key}", "must be a list"
    yield from _name_errors(meta)
    for key in _STRING_MAPS:
        yield from _string_map_errors(meta.get(key), f"metadata.{key}")
    if isinstance(meta.get("labels"), dict):
        yield from _label_errors(meta["labels"])
    if isinstance(meta.get("annotations"), dict):
        yield from _annotation_errors(meta["annotations"])
    if isinstance(meta.get("finalizers"), list):
        yield from _finalizer_errors(meta["finalizers"])
    if isinstance(meta.get("ownerReferences"), list):
        yield from _owner_errors(meta["ownerReferences"])
    if isinstance(meta.get("managedFields"), list):
        for index, entry in enumerate(meta["managedFields"]):
            if not isinstance(entry, dict):
                yield f"metadata.managedFields[{index}]", "must be a mapping"


def _is_time(text: str) -> bool:
    if not _RFC3339.fullmatch(text):
        return False
    try:
        datetime.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _name_errors(meta: dict[str, Any]) -> Iterator[MetaError]:
    name = meta.get("name")
    if name is None or name == "":
        yield "metadata.name", "required"
    elif isinstance(name, str) and not is_dns_subdomain(name):
        yield "metadata.name", DNS_SUBDOMAIN_MESSAGE
    namespace = meta.get("namespace")
    if isinstance(namespace, str) and namespace and not is_dns_label(namespace):
        yield "metadata.namespace", DNS_LABEL_MESSAGE


def _string_map_errors(value: Any, path: str) -> Iterator[MetaError]:
    if value is None:
        return
    if not isinstance(value, dict):
        yield path, "must be a mapping of strings to strings"
        return
    for key, item in value.items():
        if item is not None and not isinstance(item, str):
            yield f"{path}.{key}", "must be a string"


def _label_errors(labels: dict[str, Any]) -> Iterator[MetaError]:
    for key, value in labels.items():
        if not is_qualified_name(key):
            yield "metadata.labels", f"key {key!r} {QUALIFIED_NAME_MESSAGE}"
        if isinstance(value, str) and not is_label_value(value):
            yield "metadata.labels", f"value of {key!r}: {LABEL_VALUE_MESSAGE}"


def _annotation_errors(annotations: dict[str, Any]) -> Iterator[MetaError]:
    size = 0
    for key, value in annotations.items():
        # The server checks annotation keys lowercased: a prefix may carry capitals there.
        if not is_qualified_name(key.lower()):
            yield "metadata.annotations", f"key {key!r} {QUALIFIED_NAME_MESSAGE}"
        size += len(key.encode("utf-8", "replace")) + len(str(value or "").encode("utf-8", "replace"))
    if size > ANNOTATIONS_MAX_BYTES:
        yield "metadata.annotations", f"must have at most {ANNOTATIONS_MAX_BYTES} bytes in all"


def _finalizer_errors(finalizers: list[Any]) -> Iterator[MetaError]:
    for index, finalizer in enumerate(finalizers):
        if not isinstance(finalizer, str):
            yield f"metadata.finalizers[{index}]", "must be a string"
        elif not is_qualified_name(finalizer):
            yield f"metadata.finalizers[{index}]", QUALIFIED_NAME_MESSAGE


def _owner_errors(owners: list[Any]) -> Iterator[MetaError]:
    for index, owner in enumerate(owners):
        path = f"metadata.ownerReferences[{index}]"
        if not isinstance(owner, dict):
            yield path, "must be a mapping"
            continue
        for key in sorted(set(owner) - {*_OWNER_STRINGS, *_OWNER_BOOLS}):
            yield f"{path}.{key}", "unknown field"
        for key in _OWNER_STRINGS:
            if owner.get(key) is not None and not isinstance(owner[key], str):
                yield f"{path}.{key}", "must be a string"
            elif not owner.get(key):
                yield f"{path}.{key}", "required"
        for key in _OWNER_BOOLS:
            if owner.get(key) is not None and not isinstance(owner[key], bool):
                yield f"{path}.{key}", "must be a boolean"
