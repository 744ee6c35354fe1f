"""CEL types of CRD schema nodes, as kube-apiserver declares them to the CEL checker (apiextensions'
SchemaDeclType): objects with their fields (escaped names), lists, maps, scalars, and the worst-case sizes of unbounded
strings, lists and maps derived from the 3 MiB request limit, which the cost estimator reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

Schema = dict[str, Any]
MAX_REQUEST_BYTES = 3 * 1024 * 1024  # celconfig.MaxRequestSizeBytes
RESERVED = frozenset(
    ("true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if", "import")
    + ("let", "loop", "package", "namespace", "return", "var", "void", "while")
)
_ESCAPES = {"__": "__underscores__", ".": "__dot__", "-": "__dash__", "/": "__slash__"}


@dataclass(eq=False)
class CelType:
    """A CEL type with the size facts the cost estimator reads (apiextensions' DeclType)."""

    kind: str  # bool int uint double string bytes null_type duration timestamp list map object dyn type
    elem: CelType | None = None  # list items, map values
    key: CelType | None = None  # map keys
    fields: dict[str, CelType] = field(default_factory=dict)  # object fields, by escaped name
    max_elements: int = 0  # characters (strings), items (lists), entries (maps)
    min_size: int = 1  # smallest JSON serialization, for worst-case counts
    name: str = ""  # objects: the type name in messages

    def __str__(self) -> str:
        if self.kind == "list":
            return f"list({self.elem})"
        if self.kind == "map":
            return f"map({self.key}, {self.elem})"
        if self.kind == "object":
            return self.name or "object"
        return self.kind

    def same(self, other: CelType) -> bool:
        """Assignable either way (dyn matches anything), as the checker's overload resolution needs."""
        if "dyn" in (self.kind, other.kind):
            return True
        if self.kind != other.kind:
            return False
        if self.kind == "list":
            return elem_of(self).same(elem_of(other))
        if self.kind == "map":
            return key_of(self).same(key_of(other)) and elem_of(self).same(elem_of(other))
        if self.kind == "object":
            return self.name == other.name
        return True


def elem_of(cel_type: CelType) -> CelType:
    return cel_type.elem or DYN


def key_of(cel_type: CelType) -> CelType:
    return cel_type.key or DYN


DYN = CelType("dyn")
BOOL = CelType("bool", min_size=4)
INT = CelType("int")
UINT = CelType("uint")
DOUBLE = CelType("double")
STRING = CelType("string", min_size=2)
BYTES = CelType("bytes", min_size=2)
NULL = CelType("null_type", min_size=4)
TYPE = CelType("type")
NUMERIC = ("int", "uint", "double")


def list_of(elem: CelType) -> CelType:
    return CelType("list", elem=elem, min_size=2)


def escape(name: str) -> str | None:
    """A property name as CEL sees it (apiserver cel.Escape); None when it cannot be exposed."""
    if not name or name[0].isdigit():
        return None
    if name in RESERVED:
        return f"__{name}__"
    if re.search(r"[^a-zA-Z0-9\-./_]", name):
        return None
    return re.sub(r"__|[-./]", lambda match: _ESCAPES[match.group()], name)


def with_type_and_object_meta(schema: Schema) -> Schema:
    """The root of a resource: apiVersion, kind, metadata.name and metadata.generateName are always visible,
    and metadata shows nothing else."""
    properties = dict(schema.get("properties") or {})
    properties["kind"] = {"type": "string"}
    properties["apiVersion"] = {"type": "string"}
    properties["metadata"] = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "generateName": {"type": "string"}},
    }
    return {**schema, "properties": properties}


def schema_decl_type(schema: Schema, is_root: bool, name: str = "selfType") -> CelType | None:
    """The CEL type of a structural schema node, with apiextensions' worst-case sizes for unbounded values."""
    if schema.get("x-kubernetes-int-or-string"):
        bound = schema.get("maxLength")
        return CelType("dyn", max_elements=max(bound, 0) * 4 if bound is not None else MAX_REQUEST_BYTES - 2)
    if is_root:
        schema = with_type_and_object_meta(schema)
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        if not isinstance(items, dict):
            return None
        item_type = schema_decl_type(items, bool(items.get("x-kubernetes-embedded-resource")), f"{name}.@idx")
        if item_type is None:
            return None
        bound = schema.get("maxItems")
        count = max(bound, 0) if bound is not None else (MAX_REQUEST_BYTES - 2) // (item_type.min_size + 1)
        return CelType("list", elem=item_type, max_elements=count, min_size=2)
    if kind == "object":
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            value_type = schema_decl_type(
                additional, bool(additional.get("x-kubernetes-embedded-resource")), f"{name}.@elem"
            )
            if value_type is None:
                return None
            bound = schema.get("maxProperties")
            count = max(bound, 0) if bound is not None else (MAX_REQUEST_BYTES - 2) // (value_type.min_size + 6)
            return CelType("map", key=STRING, elem=value_type, max_elements=count, min_size=2)
        fields: dict[str, CelType] = {}
        required = set(schema.get("required") or [])
        min_size = 2
        for prop_name, prop in (schema.get("properties") or {}).items():
            escaped = escape(prop_name)
            prop_type = schema_decl_type(
                prop, bool(prop.get("x-kubernetes-embedded-resource")), f"{name}.{escaped or prop_name}"
            )
            if prop_type is None:
                continue
            if escaped is not None:
                fields[escaped] = prop_type
            if prop_name in required and "default" not in prop:
                min_size += len(prop_name) + prop_type.min_size + 4
        return CelType("object", fields=fields, min_size=min_size, name=name)
    if kind == "string":
        return _string_decl_type(schema)
    return {"boolean": BOOL, "number": DOUBLE, "integer": INT}.get(kind or "")


def _string_decl_type(schema: Schema) -> CelType:
    unbounded = MAX_REQUEST_BYTES - 2
    fmt = schema.get("format")
    if fmt == "byte":
        bound = schema.get("maxLength")
        return CelType("bytes", max_elements=max(bound, 0) if bound is not None else unbounded, min_size=2)
    if fmt == "duration":
        return CelType("duration", max_elements=32, min_size=3)
    if fmt in ("date", "date-time"):
        return CelType("timestamp", max_elements=12 if fmt == "date" else 32, min_size=12 if fmt == "date" else 21)
    if schema.get("maxLength") is not None:
        count = max(schema["maxLength"], 0) * 4
    elif schema.get("enum"):
        count = max((len(value) for value in schema["enum"] if isinstance(value, str)), default=0)
    else:
        count = unbounded
    return CelType("string", max_elements=count, min_size=2)
