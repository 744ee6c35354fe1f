"""Structural OpenAPI v3 schemas from the API models, the way kubebuilder derives them from Go types.

Walks pydantic fields directly (not pydantic's JSON schema) so the output is structural by construction: no $ref,
no anyOf for optionals, `default: {}` on nested objects so the API server applies their defaults too.

Nothing inside a list's items has a `default`: most lists are atomic (the rest are maps keyed by required fields), so a list the server defaulted would differ from the
one the user applied, and server-side apply could not take it over from client-side apply (a conflict on the very
same file). Item fields say their default in their description instead; the models still apply it when they parse.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from kubetune.api.base import ApiModel, KeyRule, ListMapKeys

_SCALARS: dict[type, dict[str, Any]] = {
    str: {"type": "string"},
    bool: {"type": "boolean"},
    int: {"type": "integer", "format": "int64"},
    float: {"type": "number"},
}


def model_schema(model: type[ApiModel], description: str | None = None, *, in_list: bool = False) -> dict[str, Any]:
    """The schema of one model: properties, required, descriptions, bounds, defaults and CEL rules.

    `in_list`: the model is (inside) a list's item, so its defaults go into descriptions only (module docstring).
    """
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        prop = _type_schema(field.annotation, field.metadata, in_list=in_list)
        field_description = _clean(field.description) if field.description else ""
        default = _default_of(field)
        if default is not None and in_list:
            field_description = _with_default_named(field_description, default)
        if field_description:
            prop["description"] = field_description
        if default is not None and not in_list:
            prop["default"] = default
        if field.is_required():
            required.append(alias)
        properties[alias] = prop
    schema: dict[str, Any] = {"type": "object"}
    doc = description or model.__doc__
    if doc:
        schema["description"] = _clean(doc)
    schema["properties"] = properties
    if required:
        schema["required"] = required
    if model.cel_rules:
        schema["x-kubernetes-validations"] = [rule.to_schema() for rule in model.cel_rules]
    return schema


def _type_schema(annotation: Any, metadata: list[Any], *, in_list: bool) -> dict[str, Any]:
    annotation, metadata = unwrap(annotation, list(metadata))
    origin = get_origin(annotation)
    schema: dict[str, Any]
    if isinstance(annotation, type) and issubclass(annotation, ApiModel):
        schema = model_schema(annotation, in_list=in_list)
    elif origin is Literal:
        values = list(get_args(annotation))
        schema = dict(_SCALARS[type(values[0])])
        schema["enum"] = values
    elif origin is list:
        (item,) = get_args(annotation)
        schema = {"type": "array", "items": _type_schema(item, [], in_list=True)}
        for marker in metadata:
            if isinstance(marker, ListMapKeys):
                schema.update(marker.to_schema())
    elif origin is dict:
        _, value = get_args(annotation)
        schema = {"type": "object", "additionalProperties": _type_schema(value, [], in_list=in_list)}
        key_rules = [item.to_schema() for item in metadata if isinstance(item, KeyRule)]
        if key_rules:
            schema["x-kubernetes-validations"] = key_rules
    elif annotation in _SCALARS:
        schema = dict(_SCALARS[annotation])
    else:
        raise TypeError(f"no schema mapping for {annotation!r}")
    schema.update(_bounds(schema["type"], _constraints(metadata)))
    return schema


def unwrap(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    """Strip Optional[...] and Annotated[...], collecting constraint metadata."""
    while True:
        origin = get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extra = get_args(annotation)
            for item in extra:
                metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                raise TypeError(f"unions other than Optional are not structural: {annotation!r}")
            annotation = args[0]
        else:
            return annotation, metadata


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(item, attr, None)
            if value is not None:
                found[attr] = value
    return found


def _bounds(schema_type: str, c: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if schema_type in ("integer", "number"):
        if "ge" in c:
            out["minimum"] = c["ge"]
        if "gt" in c:
            out["minimum"], out["exclusiveMinimum"] = c["gt"], True
        if "le" in c:
            out["maximum"] = c["le"]
        if "lt" in c:
            out["maximum"], out["exclusiveMaximum"] = c["lt"], True
    elif schema_type == "string":
        if "min_length" in c:
            out["minLength"] = c["min_length"]
        if "max_length" in c:
            out["maxLength"] = c["max_length"]
        if "pattern" in c:
            out["pattern"] = c["pattern"]
    elif schema_type == "array":
        if "min_length" in c:
            out["minItems"] = c["min_length"]
        if "max_length" in c:
            out["maxItems"] = c["max_length"]
    elif schema_type == "object" and "max_length" in c:
        out["maxProperties"] = c["max_length"]
    return out


def _default_of(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        # A nested model defaults to {} so the API server fills in its own defaults, as kubebuilder does.
        return {} if isinstance(value, ApiModel) else value
    if field.default is PydanticUndefined or field.default is None:
        return None
    return field.default


def _with_default_named(description: str, default: Any) -> str:
    """`description` ending with what an absent field means, unless it says so already or the default is empty."""
    if default in ({}, [], "") or "Default:" in description:
        return description
    shown = default if isinstance(default, str) else json.dumps(default)
    return f"{description} Default: {shown}.".lstrip()


def _clean(doc: str) -> str:
    return " ".join(doc.split())
