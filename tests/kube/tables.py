"""`meta.k8s.io/v1` Tables, what `kubectl get` asks for (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`).

Custom resources get apiextensions' table convertor: a Name column, then the CRD version's
`additionalPrinterColumns` in order (type, format, description or the JSONPath wording, priority), each cell the
column's simple JSONPath: strings as printed, numbers/integers/booleans typed, dates as the server's human
durations (`5s`, `3m2s`), missing values null. Without printer columns a CRD gets Name and Age (the CRD strategy's
default); built-in kinds get the default convertor's Name and Created At (their own printers are not modelled).
Each row carries the object's metadata as a PartialObjectMetadata (includeObject=Metadata, the default).
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from tests.kube.resources import ResourceType

_NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although some resources may allow "
    "a client to request the generation of an appropriate name automatically. Name is primarily intended for creation "
    "idempotence and configuration definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
_CREATION_DESCRIPTION = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. It is not "
    "guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is "
    "represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
_SEGMENT = re.compile(r"\.([A-Za-z0-9_-]+)|\['([^']*)'\]")


def wants_table(accept: str) -> bool:
    return any("as=Table" in part and "g=meta.k8s.io" in part for part in accept.split(","))


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        return f"{minutes}m" if whole % 60 == 0 else f"{minutes}m{whole % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(timestamp: Any) -> str:
    if not isinstance(timestamp, str):
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return "<invalid>"
    return human_duration((datetime.datetime.now(datetime.UTC) - then).total_seconds())


def _lookup(obj: Any, json_path: str) -> Any:
    """A simple JSONPath (`.status.phase`, `.metadata.labels['a/b']`); None when a key is missing."""
    value = obj
    for match in _SEGMENT.finditer(json_path):
        key = match.group(1) if match.group(1) is not None else match.group(2)
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _cell(column_type: str, value: Any) -> Any:
    """cellForJSONValue, and the jsonpath printing of string columns."""
    if value is None:
        return None
    if column_type == "string":
        if isinstance(value, str):
            return value
        return json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else _go_print(value)
    if column_type == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if column_type == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if column_type == "boolean" and isinstance(value, bool):
        return value
    if column_type == "date" and isinstance(value, str):
        return _age(value)
    return None


def _go_print(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _columns(rtype: ResourceType) -> list[dict[str, Any]]:
    if rtype.is_custom:
        declared = rtype.printer_columns or (
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        )
        return [
            {
                "name": column["name"],
                "type": column["type"],
                "format": column.get("format", ""),
                "description": column.get("description")
                or f"Custom resource definition column (in JSONPath format): {column['jsonPath']}",
                "priority": column.get("priority", 0),
            }
            for column in declared
        ]
    return [{"name": "Created At", "type": "date", "format": "", "description": _CREATION_DESCRIPTION, "priority": 0}]


def _row(rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    if rtype.is_custom:
        declared = rtype.printer_columns or ({"type": "date", "jsonPath": ".metadata.creationTimestamp"},)
        cells = [_cell(column["type"], _lookup(obj, column["jsonPath"])) for column in declared]
    else:
        cells = [meta.get("creationTimestamp")]
    return {
        "cells": [meta.get("name"), *cells],
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta},
    }


def table(rtype: ResourceType, objects: list[dict[str, Any]], resource_version: str,
          continue_token: str | None = None) -> dict[str, Any]:
    name_column = {"name": "Name", "type": "string", "format": "name", "description": _NAME_DESCRIPTION, "priority": 0}
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        metadata["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": [name_column, *_columns(rtype)],
        "rows": [_row(rtype, obj) for obj in objects],
    }
