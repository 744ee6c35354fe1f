"""Structural-schema handling of custom resources, as the API server does on every write:
prune unknown fields, apply defaults, validate (types, enums, bounds, patterns, required) and CEL rules.

CEL rules are ratcheted as in Kubernetes 1.33+: a rule without `oldSelf` is skipped for a value an update leaves
unchanged, so a status write does not re-run the spec's rules. Not covered: `format`, `anyOf`/`oneOf`/`allOf`/`not`, CEL `messageExpression` and `fieldPath`.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from typing import Any

import celpy

Schema = dict[str, Any]
_MISSING = object()
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def admit(root: Schema, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Prune and default `obj` in place (metadata, apiVersion and kind are left alone), then validate it.
    Returns the causes of rejection, empty when valid."""
    properties = root.get("properties") or {}
    for key in list(obj):
        if key in ("apiVersion", "kind", "metadata"):
            continue
        if key not in properties and not root.get("x-kubernetes-preserve-unknown-fields"):
            del obj[key]
        else:
            obj[key] = _prune_and_default(properties.get(key, {}), obj[key])
    _apply_defaults(root, obj)
    causes: list[str] = []
    body = _cel_view(obj)
    old_body = None if old is None else _cel_view(old)
    _validate(root, body, old_body, "", causes)
    return causes


def _cel_view(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as root-level CEL rules see it: like the API server, only name and generateName of metadata."""
    body = {key: value for key, value in obj.items() if key not in ("apiVersion", "kind", "metadata")}
    metadata = obj.get("metadata") or {}
    visible = {key: metadata[key] for key in ("name", "generateName") if key in metadata}
    if visible:
        body["metadata"] = visible
    return body


def _prune_and_default(schema: Schema, value: Any) -> Any:
    if isinstance(value, dict) and schema.get("type", "object") == "object":
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or properties is None
        for key in list(value):
            if value[key] is None and not (properties or {}).get(key, {}).get("nullable"):
                del value[key]  # nulls of non-nullable fields are dropped before defaulting
            elif properties is not None and key in properties:
                value[key] = _prune_and_default(properties[key], value[key])
            elif isinstance(additional, dict):
                value[key] = _prune_and_default(additional, value[key])
            elif not keep_unknown and not additional:
                del value[key]
        _apply_defaults(schema, value)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [_prune_and_default(schema["items"], item) for item in value]
    return value


def _apply_defaults(schema: Schema, value: dict[str, Any]) -> None:
    for key, sub in (schema.get("properties") or {}).items():
        if key not in value and "default" in sub:
            value[key] = _prune_and_default(sub, copy.deepcopy(sub["default"]))


def _validate(schema: Schema, value: Any, old: Any, path: str, causes: list[str]) -> None:
    where = path or "<root>"
    if value is None:
        if not schema.get("nullable"):
            causes.append(f"{where}: Invalid value: null")
        return
    expected = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            causes.append(f"{where}: Invalid value: must be an integer or a string")
    elif expected in _TYPES:
        ok = isinstance(value, _TYPES[expected]) and not (expected in ("integer", "number") and isinstance(value, bool))
        if not ok:
            causes.append(f"{where}: Invalid value: {value!r}: must be of type {expected}")
            return
    if "enum" in schema and value not in schema["enum"]:
        causes.append(f"{where}: Unsupported value: {value!r}: supported values: {schema['enum']}")
    _validate_bounds(schema, value, where, causes)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in value and (path or key not in ("apiVersion", "kind", "metadata")):
                causes.append(f"{path + '.' if path else ''}{key}: Required value")
        for key, item in value.items():
            sub = properties.get(key) or (
                schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None
            )
            if sub is not None:
                old_item = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
                _validate(sub, item, old_item, f"{path + '.' if path else ''}{key}", causes)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            _validate(schema["items"], item, _MISSING, f"{where}[{index}]", causes)
    for rule in schema.get("x-kubernetes-validations") or []:
        _check_rule(rule, value, old, where, causes)


def _validate_bounds(schema: Schema, value: Any, where: str, causes: list[str]) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and (
            value < schema["minimum"] or (schema.get("exclusiveMinimum") is True and value == schema["minimum"])
        ):
            causes.append(f"{where}: Invalid value: {value}: should be greater than or equal to {schema['minimum']}")
        if "maximum" in schema and (
            value > schema["maximum"] or (schema.get("exclusiveMaximum") is True and value == schema["maximum"])
        ):
            causes.append(f"{where}: Invalid value: {value}: should be less than or equal to {schema['maximum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            causes.append(f"{where}: Invalid value: {value!r}: length out of bounds")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            causes.append(f"{where}: Invalid value: {value!r}: should match {schema['pattern']!r}")
    if isinstance(value, (list, dict)):
        low, high = ("minItems", "maxItems") if isinstance(value, list) else ("minProperties", "maxProperties")
        if len(value) < schema.get(low, 0) or len(value) > schema.get(high, len(value)):
            causes.append(f"{where}: Invalid value: {len(value)} items: out of bounds")


@lru_cache(maxsize=512)
def _members_read(rule: str) -> frozenset[str] | None:
    """The members of `self` a rule reads when it reads `self` only as `self.<member>`, else None (it may read all:
    `self` alone, indexed, or with a macro or method such as `self.all(...)` or `self.size()`)."""
    if re.search(r"\bself\b(?!\.\w+\b(?!\s*\())", rule):
        return None
    return frozenset(re.findall(r"\bself\.(\w+)\b(?!\s*\()", rule))


def _fields_read(rule: str, value: Any) -> Any:
    """`value` cut down to the members the rule reads: converting a whole object to CEL for a rule on its
    `metadata.name` cost more than the rest of a status write. The rule's result is the same."""
    members = _members_read(rule)
    if members is None or not isinstance(value, dict):
        return value
    return {key: value[key] for key in members if key in value}


@lru_cache(maxsize=512)
def _program(rule: str) -> Any:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def _check_rule(rule: dict[str, Any], value: Any, old: Any, where: str, causes: list[str]) -> None:
    expression = rule.get("rule", "")
    uses_old = re.search(r"\boldSelf\b", expression) is not None
    if uses_old and old is _MISSING:
        return  # transition rules apply only to updates of an existing value
    if not uses_old and old is not _MISSING and old == value:
        return  # validation ratcheting (Kubernetes 1.33+): a value an update leaves unchanged is not re-checked
    activation = {"self": celpy.json_to_cel(_fields_read(expression, value))}
    if uses_old:
        activation["oldSelf"] = celpy.json_to_cel(old)
    try:
        result = _program(expression).evaluate(activation)
    except Exception as error:  # noqa: BLE001 - a failing rule rejects the object, like the real server
        causes.append(f"{where}: Invalid value: rule {expression!r} could not be evaluated: {error}")
        return
    if isinstance(result, Exception) or not bool(result):
        causes.append(f"{where}: Invalid value: {rule.get('message') or f'failed rule: {expression}'}")
