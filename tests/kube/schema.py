"""Structural-schema handling of custom resources, as the API server does on every write: prune unknown fields,
apply defaults, validate the value against the OpenAPI schema (types, enums, bounds, patterns, required) and the
uniqueness of its set and map lists (`listtype`), then run the CEL `x-kubernetes-validations` unless a blocking error
came first. Errors are worded as the server words them
(`fielderrors`), rule failures honour `fieldPath`, `reason` and `messageExpression`.

CEL rules are ratcheted as in Kubernetes 1.33+: a rule without `oldSelf` is skipped for a value an update leaves
unchanged, so a status write does not re-run the spec's rules. Not covered: `format`, `anyOf`/`oneOf`/`allOf`/`not`,
`optionalOldSelf`, the runtime CEL cost budget (tests/kube/README.md lists what differs).
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from typing import Any

import celpy

from tests.kube import fielderrors as fe
from tests.kube.fielderrors import FieldError
from tests.kube.listtype import list_type_errors

Schema = dict[str, Any]
MISSING = object()  # no old value: a create, or a field the update adds
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}
_BLOCKING = ("FieldValueNotSupported", "FieldValueRequired", "FieldValueTooLong", "FieldValueTooMany")
_BLOCKED = "some validation rules were not checked because the object was invalid; correct the existing errors to "


def admit(root: Schema, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Default and prune `obj` in place as the server does when it decodes a custom resource (apiVersion, kind and
    metadata are left alone), then validate it. Returns the causes of rejection, empty when valid."""
    _drop_nulls(root, obj)
    _default(root, obj)
    _prune(root, obj, resource_root=True)
    body, old_body = _cel_view(obj), None if old is None else _cel_view(old)
    errors = openapi_errors(root, body, fe.ROOT) + list_type_errors(root, body, old_body)
    if any(error.reason in _BLOCKING or error.reason == "FieldValueTypeInvalid" for error in errors):
        return [str(error) for error in [*errors, fe.invalid(fe.ROOT, None, _BLOCKED + "complete validation")]]
    errors += cel_errors(root, body, MISSING if old_body is None else old_body, fe.ROOT, ratchet=True)
    return [str(error) for error in errors]


def openapi_errors(schema: Schema, value: Any, path: str) -> list[FieldError]:
    """The value against the OpenAPI keywords of its schema and every schema below (not the CEL rules)."""
    errors: list[FieldError] = []
    _openapi(schema, value, path, "", errors)
    return errors


def cel_errors(schema: Schema, value: Any, old: Any, path: str, ratchet: bool) -> list[FieldError]:
    """The CEL rules of the schema and every schema below, for `value` (and `old`, MISSING on a create)."""
    errors: list[FieldError] = []
    _cel(schema, value, old, path, errors, ratchet)
    return errors


def prune(schema: Schema, value: Any) -> Any:
    """`value` without the fields the schema does not know (a copy); defaults are not applied."""
    pruned = copy.deepcopy(value)
    _prune(schema, pruned, resource_root=bool(schema.get("x-kubernetes-embedded-resource")))
    return pruned


def _cel_view(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as root-level CEL rules see it: like the API server, only name and generateName of metadata."""
    body = {key: value for key, value in obj.items() if key != "metadata"}
    metadata = obj.get("metadata") or {}
    visible = {key: metadata[key] for key in ("name", "generateName") if key in metadata}
    if visible:
        body["metadata"] = visible
    return body


def _field_schema(schema: Schema | None, key: str) -> Schema | None:
    if schema is None:
        return None
    properties = schema.get("properties") or {}
    if key in properties:
        return dict(properties[key])
    additional = schema.get("additionalProperties")
    return additional if isinstance(additional, dict) else None


def _drop_nulls(schema: Schema | None, value: Any) -> None:
    """PruneNonNullableNullsWithoutDefaults: a null where the schema allows none and has no default is dropped."""
    if isinstance(value, dict):
        for key in list(value):
            sub = _field_schema(schema, key)
            if value[key] is None and sub is not None and not sub.get("nullable") and "default" not in sub:
                del value[key]
            else:
                _drop_nulls(sub, value[key])
    elif isinstance(value, list):
        items = schema.get("items") if schema is not None else None
        for item in value:
            _drop_nulls(items if isinstance(items, dict) else None, item)


def _default(schema: Schema | None, value: Any) -> None:
    """The server's defaulting: a missing field, or a null where none is allowed, gets its default (a copy), and
    the defaulting goes on inside it, so nested defaults are filled too."""
    if schema is None:
        return
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key, sub in properties.items():
            if "default" in sub and (key not in value or (value[key] is None and not sub.get("nullable"))):
                value[key] = copy.deepcopy(sub["default"])
        additional = schema.get("additionalProperties")
        for key in value:
            if key in properties:
                _default(properties[key], value[key])
            elif isinstance(additional, dict):
                if value[key] is None and not additional.get("nullable") and "default" in additional:
                    value[key] = copy.deepcopy(additional["default"])
                _default(additional, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        for position, item in enumerate(value):
            if item is None and not items.get("nullable") and "default" in items:
                value[position] = copy.deepcopy(items["default"])
            _default(items, value[position])


def unknown_fields(root: Schema, obj: dict[str, Any]) -> list[str]:
    """The paths pruning drops from `obj` (`spec.foo`, `spec.items[0].bar`), sorted: what the server names as
    `unknown field "spec.foo"` under `fieldValidation=Strict`. `obj` is left as it is."""
    pruned: list[str] = []
    _prune(root, copy.deepcopy(obj), resource_root=True, pruned=pruned)
    return sorted(pruned)


def _prune(
    schema: Schema | None,
    value: Any,
    resource_root: bool = False,
    skip: bool = False,
    pruned: list[str] | None = None,
    path: str = "",
) -> None:
    """Structural pruning (pruning/algorithm.go): fields the schema does not declare are dropped, an object without
    properties keeps none; under `x-kubernetes-preserve-unknown-fields` (`skip`, which carries on into list items)
    unknown fields stay and known ones are still pruned. apiVersion, kind and metadata of a resource stay.
    `pruned` collects the dropped fields' paths."""
    if schema is not None:
        skip = skip or bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        resource_root = resource_root or bool(schema.get("x-kubernetes-embedded-resource"))
    elif skip:
        return
    if isinstance(value, dict):
        properties = (schema or {}).get("properties") or {}
        additional = (schema or {}).get("additionalProperties")
        for key in list(value):
            if resource_root and key in ("apiVersion", "kind", "metadata"):
                continue
            child = f"{path}.{key}" if path else key
            if key in properties:
                _prune(properties[key], value[key], pruned=pruned, path=child)
            elif additional is not None:
                _prune(additional if isinstance(additional, dict) else None, value[key], pruned=pruned, path=child)
            elif not skip:
                del value[key]
                if pruned is not None:
                    pruned.append(child)
    elif isinstance(value, list):
        items = (schema or {}).get("items")
        for index, item in enumerate(value):
            _prune(items if isinstance(items, dict) else None, item, skip=skip, pruned=pruned, path=f"{path}[{index}]")


# ------------------------------------------------------------------------------------------- OpenAPI validation


def _json_type(value: Any) -> str:
    for name, kinds in (("boolean", (bool,)), ("integer", (int,)), ("number", (float,)), ("string", (str,))):
        if isinstance(value, kinds):
            return name
    return "object" if isinstance(value, dict) else "array" if isinstance(value, list) else "null"


def _openapi(schema: Schema, value: Any, path: str, name: str, errors: list[FieldError]) -> None:
    """kube-openapi's validation, as apiextensions converts its results to field errors (`name` is the value's
    dotted path from the validated root, used in the "<name> in body ..." wording)."""
    expected = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            actual = _json_type(value)
            detail = f'{name} in body must be of type integer,string: "{actual}"'
            errors.append(FieldError("FieldValueTypeInvalid", path, actual, detail))
            return
    elif value is None:
        if not schema.get("nullable") and expected:
            detail = f'{name} in body must be of type {expected}: "null"'
            errors.append(FieldError("FieldValueTypeInvalid", path, "null", detail))
        return
    elif expected in _TYPES:
        ok = isinstance(value, _TYPES[expected]) and not (expected in ("integer", "number") and isinstance(value, bool))
        if not ok:
            actual = _json_type(value)
            detail = f'{name} in body must be of type {expected}: "{actual}"'
            errors.append(FieldError("FieldValueTypeInvalid", path, actual, detail))
            return
    if "enum" in schema and value not in schema["enum"]:
        supported = [item if isinstance(item, str) else fe.go_value(item) for item in schema["enum"]]
        errors.append(fe.not_supported(path, value, supported))
    _bounds(schema, value, path, name, errors)
    if isinstance(value, dict):
        _openapi_object(schema, value, path, name, errors)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for position, item in enumerate(value):
            _openapi(schema["items"], item, fe.index(path, position), f"{name}[{position}]", errors)


def _openapi_object(schema: Schema, value: dict[str, Any], path: str, name: str, errors: list[FieldError]) -> None:
    properties = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    for key in schema.get("required") or []:
        if key not in value and (path != fe.ROOT or key not in ("apiVersion", "kind", "metadata")):
            errors.append(fe.required(fe.child(path, key)))
    for key, item in value.items():
        if path == fe.ROOT and key == "metadata":
            continue  # metadata is validated by the API machinery, not the schema
        sub = properties.get(key) or (additional if isinstance(additional, dict) else None)
        if sub is not None:
            _openapi(sub, item, fe.child(path, key), f"{name}.{key}" if name else key, errors)


def _bounds(schema: Schema, value: Any, path: str, name: str, errors: list[FieldError]) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema:
            exclusive = schema.get("exclusiveMinimum") is True
            if value < schema["minimum"] or (exclusive and value == schema["minimum"]):
                relation = "greater than" if exclusive else "greater than or equal to"
                errors.append(fe.invalid(path, value, f"{name} in body should be {relation} {schema['minimum']}"))
        if "maximum" in schema:
            exclusive = schema.get("exclusiveMaximum") is True
            if value > schema["maximum"] or (exclusive and value == schema["maximum"]):
                relation = "less than" if exclusive else "less than or equal to"
                errors.append(fe.invalid(path, value, f"{name} in body should be {relation} {schema['maximum']}"))
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(fe.too_long(path, schema["maxLength"]))
        if len(value) < schema.get("minLength", 0):
            errors.append(
                fe.invalid(path, value, f"{name} in body should be at least {schema['minLength']} chars long")
            )
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(fe.invalid(path, value, f"{name} in body should match '{schema['pattern']}'"))
    if isinstance(value, (list, dict)):
        most, least, unit = (
            ("maxItems", "minItems", "items")
            if isinstance(value, list)
            else (
                "maxProperties",
                "minProperties",
                "properties",
            )
        )
        if most in schema and len(value) > schema[most]:
            errors.append(fe.too_many(path, len(value), schema[most]))
        if len(value) < schema.get(least, 0):
            detail = f"{name} in body should have at least {schema[least]} {unit}"
            errors.append(fe.invalid(path, len(value), detail))


# ------------------------------------------------------------------------------------------------ CEL rules


def _cel(schema: Schema, value: Any, old: Any, path: str, errors: list[FieldError], ratchet: bool) -> None:
    """Every node's rules, then its children's (apiextensions' cel.Validator walk)."""
    if value is None:
        return
    for rule in schema.get("x-kubernetes-validations") or []:
        _check_rule(schema, rule, value, old, path, errors, ratchet)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            old_item = old.get(key, MISSING) if isinstance(old, dict) else MISSING
            if key in properties:
                _cel(properties[key], item, old_item, fe.child(path, key), errors, ratchet)
            elif isinstance(additional, dict):
                _cel(additional, item, old_item, fe.key(path, key), errors, ratchet)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for position, item in enumerate(value):
            _cel(schema["items"], item, MISSING, fe.index(path, position), errors, ratchet)


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


def _evaluate(expression: str, value: Any, old: Any) -> Any:
    """The result, or the Exception evaluation ended in."""
    activation = {"self": celpy.json_to_cel(_fields_read(expression, value))}
    if old is not MISSING:
        activation["oldSelf"] = celpy.json_to_cel(old)
    try:
        return _program(expression).evaluate(activation)
    except Exception as error:  # noqa: BLE001 - an evaluation error is a validation result, like on the server
        return error


def cel_error_text(error: Exception) -> str:
    """cel-go's wording for the evaluation errors cel-python reports differently (the first one, as cel-go's
    `||`/`&&` report the left error when both sides fail)."""
    text = str(error.args[0]) if error.args else str(error)
    missing = re.search(r"no such member in mapping: \\*'([^'\\]*)", str(error.args))
    if missing:
        return f"no such key: {missing.group(1)}"
    if "divide by zero" in text or "division by zero" in text:
        return "division by zero"
    return text


def _check_rule(
    schema: Schema, rule: dict[str, Any], value: Any, old: Any, path: str, errors: list[FieldError], ratchet: bool
) -> None:
    expression = rule.get("rule", "")
    uses_old = re.search(r"\boldSelf\b", expression) is not None
    if uses_old and old is MISSING:
        return  # transition rules apply only to updates of an existing value
    if ratchet and not uses_old and old is not MISSING and old == value:
        return  # validation ratcheting (Kubernetes 1.33+): a value an update leaves unchanged is not re-checked
    result = _evaluate(expression, value, old if uses_old else MISSING)
    message = (rule.get("message") or "").strip()
    if isinstance(result, Exception):
        text = cel_error_text(result)
        where = message or expression.strip()
        if text.startswith("no such overload"):
            signature = "call arguments did not match a supported operator, function or macro signature"
            detail = f"'{text}': {signature} for rule: {where}"
        else:
            detail = f"{text} evaluating rule: {where}"
        errors.append(fe.invalid(path, schema.get("type", ""), detail))
        return
    if bool(result):
        return
    if rule.get("fieldPath"):
        path = fe.child(path, normalized_field_path(schema, rule["fieldPath"]))
    detail = _message_expression(rule, value) or message or f"failed rule: {expression.strip()}"
    shown = fe.OMIT if schema.get("type") in ("object", "array") else value
    reason = rule.get("reason")
    if reason == "FieldValueForbidden":
        errors.append(fe.forbidden(path, detail))
    elif reason == "FieldValueRequired":
        errors.append(fe.required(path, detail))
    elif reason == "FieldValueDuplicate":
        errors.append(fe.duplicate(path, shown))
    else:
        errors.append(fe.FieldError("FieldValueInvalid", path, shown, detail))


def _message_expression(rule: dict[str, Any], value: Any) -> str:
    """The evaluated messageExpression, or "" when there is none or it fails (the server then uses the message)."""
    expression = rule.get("messageExpression")
    if not expression:
        return ""
    result = _evaluate(expression, value, MISSING)
    return result.strip() if isinstance(result, str) and result.strip() and "\n" not in result else ""


def normalized_field_path(schema: Schema, field_path: str) -> str:
    """A rule's `fieldPath` as the server normalizes it (`.a['b.c']` -> `a[b.c]`); ValueError if it does not name a
    field of `schema` (apiextensions' ValidFieldPath, with its messages)."""
    path, node = "", schema
    tokens = re.findall(r"'(?:[^'\\]|\\.)*'|[.\[\]]|[^.\[\]']+", field_path)
    position = 0

    def take() -> str:
        nonlocal position
        if position >= len(tokens):
            raise ValueError("unexpected end of JSON path")
        position += 1
        return str(tokens[position - 1])

    while position < len(tokens):
        token = take()
        if token == "[":
            quoted = take()
            if len(quoted) < 2 or quoted[0] != "'" or quoted[-1] != "'":
                raise ValueError(f"expected single quoted string but got {quoted}")
            name = quoted[1:-1].replace("\\'", "'")
            if take() != "]":
                raise ValueError("expected ] but got something else")
        elif token == ".":
            name = take()
        else:
            raise ValueError(f"expected [ or . but got: {token}")
        if node.get("properties") is not None:
            if name not in node["properties"]:
                raise ValueError("does not refer to a valid field")
            node = node["properties"][name]
            path = f"{path}.{name}" if path else name
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
            path = f"{path}[{name}]"
        else:
            raise ValueError("does not refer to a valid field")
    return path
