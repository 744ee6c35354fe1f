"""The three patch formats of the Kubernetes API, applied to plain JSON objects (the inputs are never mutated)."""

from __future__ import annotations

import copy
from typing import Any

from tests.kube import errors

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# Lists merged by key in strategic merge patches (a subset of the built-in types' patchMergeKey tags).
_MERGE_KEYS = {"ownerReferences": "uid", "ports": "containerPort", "conditions": "type"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field_name: str = "") -> Any:
    """Merge patch, except that lists of objects with a merge key (`name` by default) merge item by item;
    an item with `$patch: delete` removes the item with its key. Other directives are not supported."""
    if isinstance(patch, list) and isinstance(target, list):
        key = _MERGE_KEYS.get(field_name, "name")
        keyed = all(isinstance(item, dict) and key in item for item in [*patch, *target])
        if keyed and patch:
            merged = [copy.deepcopy(item) for item in target]
            for item in patch:
                index = next((i for i, old in enumerate(merged) if old[key] == item[key]), None)
                if item.get("$patch") == "delete":
                    if index is not None:
                        merged.pop(index)
                elif index is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[index] = strategic_merge_patch(merged[index], item)
            return merged
        return copy.deepcopy(patch)
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = strategic_merge_patch(result.get(name), value, name)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise errors.bad_request(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise errors.ApiError(422, "Invalid", f"jsonpatch: path segment {part!r} does not exist")
    return node, parts[-1]


def _get(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise errors.ApiError(422, "Invalid", f"jsonpatch: path /{'/'.join(parts)} does not exist") from None
    return node


def _remove(doc: Any, parts: list[str]) -> Any:
    parent, last = _parent(doc, parts)
    _get(doc, parts)
    return parent.pop(int(last)) if isinstance(parent, list) else parent.pop(last)


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent, last = _parent(doc, parts)
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if not 0 <= index <= len(parent):
            raise errors.ApiError(422, "Invalid", f"jsonpatch: index {index} out of range")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise errors.ApiError(422, "Invalid", "jsonpatch: cannot add to a scalar")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise errors.bad_request("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for operation in operations:
        op, parts = operation.get("op"), _pointer(operation.get("path", ""))
        if op == "add":
            doc = _add(doc, parts, copy.deepcopy(operation.get("value")))
        elif op == "remove":
            _remove(doc, parts)
        elif op == "replace":
            _get(doc, parts)
            value = copy.deepcopy(operation.get("value"))
            if not parts:
                doc = value
            else:
                parent, last = _parent(doc, parts)
                parent[int(last) if isinstance(parent, list) else last] = value
        elif op in ("move", "copy"):
            source = _pointer(operation.get("from", ""))
            value = _remove(doc, source) if op == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, parts, value)
        elif op == "test":
            if _get(doc, parts) != operation.get("value"):
                raise errors.ApiError(422, "Invalid", f"jsonpatch: test failed at {operation.get('path')!r}")
        else:
            raise errors.bad_request(f"jsonpatch: unknown operation {op!r}")
    return doc
