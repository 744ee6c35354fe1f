"""The uniqueness invariants of `x-kubernetes-list-type: set` and `map` lists in custom resources, as the server
checks them after OpenAPI validation and before the CEL rules (apiextensions' schema/listtype, read, not copied).

A set's items are unique as whole values; a map's items are unique by their `x-kubernetes-list-map-keys` (a missing
key is a value of its own, so two items without the key clash). Only the second appearance of a value is reported,
as `<path>[i]: Duplicate value: <value>`, with the key fields alone for a map. An update is refused for duplicates
only when the stored object had none (the server ratchets these checks so that old objects stay writable).
"""

from __future__ import annotations

import json
from typing import Any

from tests.kube import fielderrors as fe
from tests.kube.fielderrors import FieldError

Schema = dict[str, Any]


def list_type_errors(schema: Schema, value: Any, old: Any | None) -> list[FieldError]:
    """Duplicates in the set and map lists of a whole object (`old`: the stored one on an update, else None)."""
    errors = _errors(schema, value, "")
    if errors and old is not None and _errors(schema, old, ""):
        return []
    return errors


def _errors(schema: Schema | None, value: Any, path: str) -> list[FieldError]:
    if not isinstance(schema, dict):
        return []
    errors: list[FieldError] = []
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if name in properties:
                errors += _errors(properties[name], item, fe.child(path, name))
            elif isinstance(extra, dict):
                errors += _errors(extra, item, fe.key(path, name))
    elif isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set":
            errors += [fe.duplicate(fe.index(path, i), value[i]) for i in _second_appearances(value)]
        elif list_type == "map":
            errors += _map_errors(schema.get("x-kubernetes-list-map-keys") or [], value, path)
        for position, item in enumerate(value):
            errors += _errors(schema.get("items"), item, fe.index(path, position))
    return errors


def _map_errors(keys: list[str], items: list[Any], path: str) -> list[FieldError]:
    for position, item in enumerate(items):
        if item is not None and not isinstance(item, dict):
            return [fe.invalid(fe.index(path, position), item, "must be an object for an array of list-type map")]
    # An item's identity is its key fields; one it lacks is left out, so it differs from any value, null included.
    identities = [{key: item[key] for key in keys if key in item} if item else {} for item in items]
    return [fe.duplicate(fe.index(path, i), identities[i]) for i in _second_appearances(identities)]


def _second_appearances(values: list[Any]) -> list[int]:
    """Positions where a value appears for the second time (not the third or later)."""
    seen: dict[str, int] = {}
    found: list[int] = []
    for position, value in enumerate(values):
        identity = json.dumps(value, sort_keys=True)
        seen[identity] = seen.get(identity, 0) + 1
        if seen[identity] == 2:
            found.append(position)
    return found
