"""The checks kube-apiserver runs on one openAPIV3Schema of a CRD (apiextensions validation.go
validateCustomResourceDefinitionValidation and ValidateCustomResourceDefinitionOpenAPISchema, schema/validation.go,
schema/defaulting/validation.go, cel_validation.go), reported at `path` (`spec.validation` or
`spec.versions[i].schema`) as the server reports them. `crd_validation` runs them for each schema of a CRD.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tests.kube import cel_check, cel_cost, cel_types, schema
from tests.kube import fielderrors as fe
from tests.kube.fielderrors import FieldError

Schema = dict[str, Any]
_OPENAPI_TYPES = ["array", "boolean", "integer", "number", "object", "string"]
_REASONS = ["FieldValueDuplicate", "FieldValueForbidden", "FieldValueInvalid", "FieldValueRequired"]
_META_FIELDS = ("metadata", "kind", "apiVersion")
# JSONSchemaProps fields allowed at the root of a schema when the status subresource is on (Go field names).
_ROOT_ALLOWED = {
    "description": "Description",
    "type": "Type",
    "format": "Format",
    "title": "Title",
    "maximum": "Maximum",
    "exclusiveMaximum": "ExclusiveMaximum",
    "minimum": "Minimum",
    "exclusiveMinimum": "ExclusiveMinimum",
    "maxLength": "MaxLength",
    "minLength": "MinLength",
    "pattern": "Pattern",
    "maxItems": "MaxItems",
    "minItems": "MinItems",
    "uniqueItems": "UniqueItems",
    "multipleOf": "MultipleOf",
    "required": "Required",
    "items": "Items",
    "properties": "Properties",
    "externalDocs": "ExternalDocs",
    "example": "Example",
    "x-kubernetes-preserve-unknown-fields": "XPreserveUnknownFields",
    "x-kubernetes-validations": "XValidations",
}
_UNSUPPORTED_KEYWORDS = {
    "id": "id is not supported",
    "additionalItems": "additionalItems is not supported",
    "patternProperties": "patternProperties is not supported",
    "definitions": "definitions is not supported",
    "dependencies": "dependencies is not supported",
    "$ref": "$ref is not supported",
}
# Keywords a structural schema forbids inside anyOf/allOf/oneOf/not (schema/validation.go).
_NESTED_FORBIDDEN = {
    "type": "must be empty to be structural",
    "default": "must be undefined to be structural",
    "title": "must be empty to be structural",
    "description": "must be empty to be structural",
    "nullable": "must be false to be structural",
    "x-kubernetes-preserve-unknown-fields": "must be false to be structural",
    "x-kubernetes-embedded-resource": "must be false to be structural",
    "x-kubernetes-int-or-string": "must be false to be structural",
    "x-kubernetes-list-map-keys": "must be empty to be structural",
    "x-kubernetes-list-type": "must be undefined to be structural",
    "x-kubernetes-map-type": "must be undefined to be structural",
    "x-kubernetes-validations": "must be empty to be structural",
    "additionalProperties": "must be undefined to be structural",
}


# ------------------------------------------------------------------------------------------------ the schema


@dataclass
class _Totals:
    """The CRD-wide cost total and the rules that contributed most (TotalCost in cel_validation.go)."""

    total: int = 0
    expensive: list[tuple[int, str]] = field(default_factory=list)

    def observe(self, path: str, cost: int) -> None:
        self.total = min(self.total + cost, cel_cost.MAX_UINT)
        if cost >= cel_cost.PER_CRD_LIMIT // 100:
            self.expensive = sorted([*self.expensive, (cost, path)], key=lambda item: -item[0])[:4]


@dataclass(frozen=True)
class _Scope:
    """What the recursion knows about the node's surroundings (specStandardValidatorV3 plus the CEL context)."""

    defaults_forbidden: str = ""  # why defaults may not be set here ("" = allowed)
    inside_meta: bool = False
    uncorrelatable: str = ""  # the first ancestor whose old values cannot be correlated ("" = none)
    cel: bool = False  # the schema passed the structural and default checks: compile the rules
    cardinality: int | None = 1  # times the node can occur in one object (None: unbounded)


def validation_errors(root: Any, path: str, status_enabled: bool) -> list[FieldError]:
    """validateCustomResourceDefinitionValidation for one openAPIV3Schema."""
    if not isinstance(root, dict):
        return []
    where = f"{path}.openAPIV3Schema"
    errors: list[FieldError] = []
    if status_enabled:
        errors += _status_root_errors(root, path)
    if root.get("nullable"):
        errors.append(fe.forbidden(f"{where}.nullable", "nullable cannot be true at the root"))
    structural = sorted(_structural_errors(root, where, "root"), key=str)
    defaults: list[FieldError] = []
    if not structural:
        defaults = _default_errors(root, where, is_root=True)
    errors += structural + defaults
    totals = _Totals()
    scope = _Scope(cel=not structural and not defaults)
    schema_errors, cel_errors = _schema_node_errors(root, where, scope, totals, is_root=True)
    errors += schema_errors + cel_errors
    if totals.total > cel_cost.PER_CRD_LIMIT:
        detail = "contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema"
        errors += [fe.forbidden(rule_path, detail) for _, rule_path in totals.expensive]
        name = "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema"
        errors.append(fe.forbidden(where, _cost_message(name, totals.total, cel_cost.PER_CRD_LIMIT)))
    return errors


def _status_root_errors(root: Schema, path: str) -> list[FieldError]:
    if root.get("type") not in (None, "object"):
        detail = 'only "object" is allowed as the type at the root of the schema if the status subresource is enabled'
        return [fe.invalid(f"{path}.openAPIV3Schema.type", root["type"], detail)]
    if any(key not in _ROOT_ALLOWED and value not in (None, False, "", [], {}) for key, value in root.items()):
        allowed = "[" + " ".join(_ROOT_ALLOWED.values()) + "]"
        detail = f"only {allowed} fields are allowed at the root of the schema if the status subresource is enabled"
        return [fe.invalid(f"{path}.openAPIV3Schema", root, detail)]
    return []


def _structural_errors(node: Schema, path: str, level: str) -> list[FieldError]:
    """validateStructuralInvariants: `level` is root, items or field."""
    errors: list[FieldError] = []
    kind = node.get("type") or ""
    if kind == "array" and not isinstance(node.get("items"), dict):
        errors.append(fe.required(f"{path}.items", "must be specified"))
    if isinstance(node.get("items"), dict):
        errors += _structural_errors(node["items"], f"{path}.items", "items")
    for name, sub in (node.get("properties") or {}).items():
        errors += _structural_errors(sub, f"{path}.properties[{name}]", "field")
    additional = node.get("additionalProperties")
    if additional is not None and additional is not True:
        if level == "root":
            errors.append(fe.forbidden(f"{path}.additionalProperties", "must not be used at the root"))
        if isinstance(additional, dict):
            errors += _structural_errors(additional, f"{path}.additionalProperties", "field")
    int_or_string = bool(node.get("x-kubernetes-int-or-string"))
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    embedded = bool(node.get("x-kubernetes-embedded-resource"))
    if int_or_string and preserve:
        detail = "must be false if x-kubernetes-int-or-string is true"
        errors.append(fe.invalid(f"{path}.x-kubernetes-preserve-unknown-fields", True, detail))
    if int_or_string and embedded:
        detail = "must be false if x-kubernetes-int-or-string is true"
        errors.append(fe.invalid(f"{path}.x-kubernetes-embedded-resource", True, detail))
    errors += _nested_value_validation_errors(node, path)
    if "pattern" in node:
        try:
            re.compile(str(node["pattern"]))
        except re.error as error:
            detail = f"must be a valid regular expression, but isn't: error parsing regexp: {error}"
            errors.append(fe.invalid(f"{path}.pattern", node["pattern"], detail))
    if embedded and kind != "object":
        detail = "must be object if x-kubernetes-embedded-resource is true"
        errors.append(fe.required(f"{path}.type", detail) if not kind else fe.invalid(f"{path}.type", kind, detail))
    elif not kind and not int_or_string and not preserve:
        where = {"root": "at the root", "items": "for specified array items", "field": "for specified object fields"}
        errors.append(fe.required(f"{path}.type", f"must not be empty {where[level]}"))
    if embedded and additional is not None:
        detail = "must not be used if x-kubernetes-embedded-resource is set"
        errors.append(fe.forbidden(f"{path}.additionalProperties", detail))
    if level == "root" and kind and kind != "object":
        errors.append(fe.invalid(f"{path}.type", kind, "must be object at the root"))
    properties = node.get("properties") or {}
    for meta_field in ("kind", "apiVersion"):
        if (
            meta_field in properties
            and (level == "root" or embedded)
            and properties[meta_field].get("type") != "string"
        ):
            errors.append(
                fe.invalid(
                    f"{path}.properties[{meta_field}].type", properties[meta_field].get("type", ""), "must be string"
                )
            )
    if "metadata" in properties:
        errors += _metadata_schema_errors(properties["metadata"], level == "root" or embedded, level, path)
    if embedded and not preserve and not properties:
        detail = (
            "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields"
        )
        errors.append(fe.required(f"{path}.properties", detail))
    return errors


def _metadata_schema_errors(meta: Schema, check_type: bool, level: str, path: str) -> list[FieldError]:
    where = f"{path}.properties[metadata]"
    errors = []
    if check_type and meta.get("type") != "object":
        errors.append(fe.invalid(f"{where}.type", meta.get("type", ""), "must be object"))
    if level == "root":
        rest = {
            key: value for key, value in meta.items() if key not in ("type", "default") and value not in ({}, [], None)
        }
        names = set(rest.get("properties") or {})
        if names and names <= {"name", "generateName"}:
            rest.pop("properties")
        if rest:
            detail = "must not specify anything other than name and generateName, but metadata is implicitly specified"
            errors.append(fe.forbidden(where, detail))
    return errors


def _nested_value_validation_errors(node: Schema, path: str) -> list[FieldError]:
    """anyOf/allOf/oneOf/not may only restrict values, never declare structure (validateNestedValueValidation),
    and may only name properties the structural part declares (validateStructuralCompleteness)."""
    errors: list[FieldError] = []
    nested = [
        (f"{path}.{key}[{position}]", sub)
        for key in ("anyOf", "allOf", "oneOf")
        for position, sub in enumerate(node.get(key) or [])
    ]
    if isinstance(node.get("not"), dict):
        nested.append((f"{path}.not", node["not"]))
    for where, sub in nested:
        if not isinstance(sub, dict):
            continue
        if node.get("x-kubernetes-int-or-string") and sub.get("type") in ("integer", "string") and len(sub) == 1:
            continue  # the int-or-string pattern is allowed
        for keyword, detail in _NESTED_FORBIDDEN.items():
            if sub.get(keyword) not in (None, False, "", [], {}):
                errors.append(fe.forbidden(f"{where}.{keyword}", detail))
        for name in sub.get("properties") or {}:
            if name == "metadata":
                errors.append(
                    fe.forbidden(f"{where}.properties[metadata]", "must not be specified in a nested context")
                )
            if name not in (node.get("properties") or {}):
                errors.append(
                    fe.required(f"{path}.properties[{name}]", f"because it is defined in {where}.properties[{name}]")
                )
    return errors


# ---------------------------------------------------------------------------------------------------- defaults


def _default_errors(node: Schema, path: str, is_root: bool = False) -> list[FieldError]:
    """schema/defaulting ValidateDefaults: each default must be pruned and valid against its own schema and that
    schema's CEL rules, exactly as written (the defaults nested inside it are not applied first)."""
    errors: list[FieldError] = []
    if "default" in node and not is_root:
        default = node["default"]
        where = f"{path}.default"
        if schema.prune(node, default) != default:
            errors.append(fe.invalid(where, default, "must not have unknown fields"))
        invalid = schema.openapi_errors(node, default, where)
        errors += invalid or schema.cel_errors(node, default, default, where, ratchet=False)
    if isinstance(node.get("items"), dict):
        errors += _default_errors(node["items"], f"{path}.items")
    for name in sorted(node.get("properties") or {}):
        if is_root and name in _META_FIELDS:
            continue  # defaults in the top-level metadata are refused by the schema checks
        errors += _default_errors(node["properties"][name], f"{path}.properties[{name}]")
    return errors


# --------------------------------------------------------------------------------------- keywords and CEL rules


def _schema_node_errors(
    node: Schema, path: str, scope: _Scope, totals: _Totals, is_root: bool = False
) -> tuple[list[FieldError], list[FieldError]]:
    """ValidateCustomResourceDefinitionOpenAPISchema: (schema errors, CEL errors) for `node` and below."""
    schema_errors = _keyword_errors(node, path, scope)
    cel_errors: list[FieldError] = []

    def descend(sub: Any, where: str, sub_scope: _Scope, embedded_root: bool = False) -> None:
        if isinstance(sub, dict):
            found_schema, found_cel = _schema_node_errors(sub, where, sub_scope, totals, embedded_root)
            schema_errors.extend(found_schema)
            cel_errors.extend(found_cel)

    additional = node.get("additionalProperties")
    if additional is not None:
        if node.get("properties") and (additional is False or isinstance(additional, dict)):
            detail = "additionalProperties and properties are mutual exclusive"
            schema_errors.append(fe.forbidden(f"{path}.additionalProperties", detail))
        sub_scope = _child_scope(scope, node, additional)
        if scope.inside_meta:
            sub_scope = _with(sub_scope, defaults_forbidden="inside additionalProperties applying to object metadata")
        descend(additional, f"{path}.additionalProperties", sub_scope)
    for name in sorted(node.get("properties") or {}):
        sub = node["properties"][name]
        sub_scope = _child_scope(scope, node, sub)
        if node.get("x-kubernetes-map-type") == "atomic":
            sub_scope = _with(sub_scope, uncorrelatable=sub_scope.uncorrelatable or path)
        if (is_root or node.get("x-kubernetes-embedded-resource")) and name in _META_FIELDS:
            sub_scope = _with(sub_scope, inside_meta=True)
            if is_root:
                sub_scope = _with(sub_scope, defaults_forbidden=f"in top-level {name}")
        descend(sub, f"{path}.properties[{name}]", sub_scope)
    for key in ("allOf", "anyOf", "oneOf"):
        for position, sub in enumerate(node.get(key) or []):
            descend(sub, f"{path}.{key}[{position}]", _with(scope, cel=False))
    descend(node.get("not"), f"{path}.not", _with(scope, cel=False))
    items = node.get("items")
    if items is not None:
        sub_scope = _child_scope(scope, node, items)
        if node.get("x-kubernetes-list-type") != "map":
            sub_scope = _with(sub_scope, uncorrelatable=sub_scope.uncorrelatable or path)
        descend(items, f"{path}.items", sub_scope)
    schema_errors += _extension_errors(node, path)
    rules = node.get("x-kubernetes-validations") or []
    schema_errors += _rule_field_errors(node, rules, path)
    if rules and not schema_errors and scope.cel:
        cel_errors += _compile_errors(node, rules, path, scope, totals, is_root)
    return schema_errors, cel_errors


def _with(scope: _Scope, **changes: Any) -> _Scope:
    return _Scope(**{**scope.__dict__, **changes})


def _child_scope(scope: _Scope, parent: Schema, child: Any) -> _Scope:
    """The child's cardinality: the parent's times the parent's element bound (extractMaxElements)."""
    if scope.cardinality is None:
        return _with(scope, cardinality=None)
    kind = parent.get("type")
    if kind == "object" and parent.get("additionalProperties") is not None:
        bound = parent.get("maxProperties")
    elif kind == "array":
        bound = parent.get("maxItems")
    else:
        bound = 1
    if bound is None:
        return _with(scope, cardinality=None)
    return _with(scope, cardinality=min(scope.cardinality * max(int(bound), 0), cel_cost.MAX_UINT))


def _keyword_errors(node: Schema, path: str, scope: _Scope) -> list[FieldError]:
    """specStandardValidatorV3.validate and the keyword checks around it."""
    errors = []
    kind = node.get("type")
    if kind and kind not in _OPENAPI_TYPES:
        errors.append(fe.not_supported(f"{path}.type", kind, _OPENAPI_TYPES))
    if "default" in node and scope.defaults_forbidden:
        errors.append(fe.forbidden(f"{path}.default", f"must not be set {scope.defaults_forbidden}"))
    for keyword, detail in _UNSUPPORTED_KEYWORDS.items():
        if node.get(keyword):
            errors.append(fe.forbidden(f"{path}.{keyword}", detail))
    if kind == "null":
        errors.append(fe.forbidden(f"{path}.type", "type cannot be set to null, use nullable as an alternative"))
    if isinstance(node.get("items"), list):
        errors.append(fe.forbidden(f"{path}.items", "items must be a schema object and not an array"))
    if scope.inside_meta and node.get("x-kubernetes-embedded-resource"):
        errors.append(
            fe.forbidden(f"{path}.x-kubernetes-embedded-resource", "must not be used inside of resource meta")
        )
    if node.get("uniqueItems") is True:
        detail = "uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
        errors.append(fe.forbidden(f"{path}.uniqueItems", detail))
    return errors


def _extension_errors(node: Schema, path: str) -> list[FieldError]:
    """x-kubernetes-preserve-unknown-fields, -map-type, -list-type and -list-map-keys consistency."""
    errors = []
    kind = node.get("type") or ""
    if node.get("x-kubernetes-preserve-unknown-fields") is False:
        errors.append(fe.invalid(f"{path}.x-kubernetes-preserve-unknown-fields", False, "must be true or undefined"))
    map_type, list_type = node.get("x-kubernetes-map-type"), node.get("x-kubernetes-list-type")
    if map_type is not None and kind != "object":
        detail = "must be object if x-kubernetes-map-type is specified"
        errors.append(fe.invalid(f"{path}.type", kind, detail) if kind else fe.required(f"{path}.type", detail))
    if map_type is not None and map_type not in ("atomic", "granular"):
        errors.append(fe.not_supported(f"{path}.x-kubernetes-map-type", map_type, ["atomic", "granular"]))
    items = node.get("items") if isinstance(node.get("items"), dict) else None
    if list_type is not None and kind != "array":
        detail = "must be array if x-kubernetes-list-type is specified"
        errors.append(fe.invalid(f"{path}.type", kind, detail) if kind else fe.required(f"{path}.type", detail))
    elif list_type == "set" and items is not None:
        if items.get("type") == "array" and items.get("x-kubernetes-list-type") not in (None, "atomic"):
            detail = "must be atomic as item of a list with x-kubernetes-list-type=set"
            errors.append(fe.invalid(f"{path}.items.x-kubernetes-list-type", items["x-kubernetes-list-type"], detail))
        if items.get("type") == "object" and items.get("x-kubernetes-map-type") != "atomic":
            detail = "must be atomic as item of a list with x-kubernetes-list-type=set"
            errors.append(fe.invalid(f"{path}.items.x-kubernetes-map-type", list_type, detail))
    if list_type is not None and list_type not in ("atomic", "set", "map"):
        errors.append(fe.not_supported(f"{path}.x-kubernetes-list-type", list_type, ["atomic", "set", "map"]))
    keys = node.get("x-kubernetes-list-map-keys") or []
    if keys and list_type is None:
        errors.append(
            fe.required(f"{path}.x-kubernetes-list-type", "must be map if x-kubernetes-list-map-keys is non-empty")
        )
    elif keys and list_type != "map":
        detail = "must be map if x-kubernetes-list-map-keys is non-empty"
        errors.append(fe.invalid(f"{path}.x-kubernetes-list-type", list_type, detail))
    if list_type == "map":
        errors += _list_map_errors(node, items, keys, path)
    if list_type in ("set", "map") and items is not None and items.get("nullable"):
        errors.append(
            fe.forbidden(f"{path}.items.nullable", f"cannot be nullable when x-kubernetes-list-type is {list_type}")
        )
    return errors


def _list_map_errors(node: Schema, items: Schema | None, keys: list[str], path: str) -> list[FieldError]:
    errors = []
    if not keys:
        errors.append(
            fe.required(f"{path}.x-kubernetes-list-map-keys", "must not be empty if x-kubernetes-list-type is map")
        )
    if items is None:
        errors.append(fe.required(f"{path}.items", "must have a schema if x-kubernetes-list-type is map"))
        return errors
    if items.get("type") != "object":
        detail = "must be object if parent array's x-kubernetes-list-type is map"
        errors.append(fe.invalid(f"{path}.items.type", items.get("type", ""), detail))
        return errors
    properties, required = items.get("properties") or {}, set(items.get("required") or [])
    for key in keys:
        if key not in properties:
            errors.append(
                fe.invalid(f"{path}.x-kubernetes-list-map-keys", keys, "entries must all be names of item properties")
            )
            continue
        if properties[key].get("type") in ("array", "object"):
            detail = "must be a scalar type if parent array's x-kubernetes-list-type is map"
            errors.append(fe.invalid(f"{path}.items.properties[{key}].type", "object", detail))
        if key not in required and "default" not in properties[key]:
            detail = (
                "this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property"
            )
            errors.append(fe.required(f"{path}.items.properties[{key}].default", detail))
        if properties[key].get("nullable"):
            detail = "this property is in x-kubernetes-list-map-keys, so it cannot be nullable"
            errors.append(fe.forbidden(f"{path}.items.properties[{key}].nullable", detail))
    if len(set(keys)) != len(keys):
        errors.append(fe.invalid(f"{path}.x-kubernetes-list-map-keys", keys, "must not contain duplicate entries"))
    return errors


def _rule_field_errors(node: Schema, rules: list[Any], path: str) -> list[FieldError]:
    """The static checks of each rule's fields (before any CEL is compiled)."""
    errors = []
    for position, rule in enumerate(rules):
        where = f"{path}.x-kubernetes-validations[{position}]"
        text = str(rule.get("rule") or "").strip()
        message = str(rule.get("message") or "")
        if not text:
            errors.append(fe.required(f"{where}.rule", "rule is not specified"))
        elif message and not message.strip():
            errors.append(fe.invalid(f"{where}.message", message, "must be non-empty if specified"))
        elif re.search(r"[\n\r]", message.strip()):
            errors.append(fe.invalid(f"{where}.message", message, "must not contain line breaks"))
        elif re.search(r"[\n\r]", text) and not message.strip():
            errors.append(fe.required(f"{where}.message", "message must be specified if rule contains line breaks"))
        expression = rule.get("messageExpression")
        if expression is not None and str(expression) and not str(expression).strip():
            errors.append(fe.required(f"{where}.messageExpression", "messageExpression must be non-empty if specified"))
        reason = rule.get("reason")
        if reason is not None and reason not in _REASONS:
            errors.append(fe.not_supported(f"{where}.reason", reason, _REASONS))
        field_path = rule.get("fieldPath")
        if field_path:
            if not str(field_path).strip():
                errors.append(fe.invalid(f"{where}.fieldPath", field_path, "must be non-empty if specified"))
            if re.search(r"[\n\r]", str(field_path)):
                errors.append(fe.invalid(f"{where}.fieldPath", field_path, "must not contain line breaks"))
            try:
                schema.normalized_field_path(node, str(field_path))
            except ValueError:
                errors.append(fe.invalid(f"{where}.fieldPath", field_path, "must be a valid path"))
    return errors


def _compile_errors(
    node: Schema, rules: list[dict[str, Any]], path: str, scope: _Scope, totals: _Totals, is_root: bool
) -> list[FieldError]:
    """cel.Compile for the node's rules: compilation, result types, cost, oldSelf placement."""
    self_type = cel_types.schema_decl_type(node, is_root or bool(node.get("x-kubernetes-embedded-resource")))
    if self_type is None:
        return [
            fe.FieldError(
                "InternalError",
                f"{path}.x-kubernetes-validations",
                fe.OMIT,
                "internal error: failed to retrieve type information for x-kubernetes-validations",
            )
        ]
    variables = {"self": self_type, "oldSelf": self_type}
    cardinality = scope.cardinality
    errors = []
    for position, rule in enumerate(rules):
        where = f"{path}.x-kubernetes-validations[{position}]"
        text = str(rule.get("rule") or "")
        if not text.strip():
            continue
        compiled, detail = _compile(
            text, variables, "bool", "cel expression must evaluate to a bool", "compilation failed: "
        )
        cost = cel_cost.expression_cost(compiled, self_type) if compiled else 0
        count = cardinality if cardinality is not None else cel_cost.max_cardinality(self_type.min_size)
        cost = min(cost * count, cel_cost.MAX_UINT) if cost else 0
        if cost > cel_cost.PER_RULE_LIMIT:
            errors.append(
                fe.forbidden(f"{where}.rule", _cost_message("estimated rule cost", cost, cel_cost.PER_RULE_LIMIT))
            )
        totals.observe(f"{where}.rule", cost)
        if compiled is None:
            errors.append(fe.invalid(f"{where}.rule", _go_rule(rule), detail))
            continue
        errors += _message_expression_errors(rule, where, variables, self_type, totals)
        if compiled.uses_old_self and scope.uncorrelatable:
            detail = f"oldSelf cannot be used on the uncorrelatable portion of the schema within {scope.uncorrelatable}"
            errors.append(fe.invalid(f"{where}.rule", text, detail))
        elif not compiled.uses_old_self and rule.get("optionalOldSelf") is not None:
            detail = "may not be set if oldSelf is not used in rule"
            errors.append(fe.invalid(f"{where}.optionalOldSelf", rule["optionalOldSelf"], detail))
    return errors


def _message_expression_errors(
    rule: dict[str, Any],
    where: str,
    variables: dict[str, cel_types.CelType],
    self_type: cel_types.CelType,
    totals: _Totals,
) -> list[FieldError]:
    expression = str(rule.get("messageExpression") or "")
    if not expression:
        return []
    compiled, detail = _compile(
        expression,
        variables,
        "string",
        "messageExpression must evaluate to a string",
        "messageExpression compilation failed: ",
    )
    if compiled is None:
        return [fe.invalid(f"{where}.messageExpression", _go_rule(rule), detail)]
    cost = cel_cost.expression_cost(compiled, self_type)  # not multiplied by cardinality, as on the server
    totals.observe(f"{where}.messageExpression", cost)
    if cost > cel_cost.PER_RULE_LIMIT:
        message = _cost_message("estimated messageExpression cost", cost, cel_cost.PER_RULE_LIMIT)
        return [fe.forbidden(f"{where}.messageExpression", message)]
    return []


def _compile(
    text: str, variables: dict[str, cel_types.CelType], result_kind: str, wrong_type: str, prefix: str
) -> tuple[cel_check.Compiled | None, str]:
    try:
        compiled = cel_check.compile_expression(text, variables)
    except cel_check.CelCompileError as error:
        return None, prefix + str(error)
    regex_issues = cel_check.literal_regex_errors(compiled)
    if regex_issues:
        return None, prefix + cel_check.format_issues(text, regex_issues)
    if compiled.type.kind not in (result_kind, "dyn"):
        return None, wrong_type
    return compiled, ""


def _go_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """The rule as the server prints the bad value (its internal ValidationRule, JSON-encoded)."""
    return {
        "Rule": rule.get("rule", ""),
        "Message": rule.get("message", ""),
        "MessageExpression": rule.get("messageExpression", ""),
        "Reason": rule.get("reason"),
        "FieldPath": rule.get("fieldPath", ""),
        "OptionalOldSelf": rule.get("optionalOldSelf"),
    }


def _cost_message(name: str, cost: int, limit: int) -> str:
    """getCostErrorMessage."""
    factor = cost / limit
    if factor > 100.0:
        shown = "more than 100x"
    elif factor < 1.5:
        shown = f"{factor:f}x"
    else:
        shown = f"{factor:.1f}x"
    return (
        f"{name} exceeds budget by factor of {shown} (try simplifying the rule, or adding maxItems, maxProperties, "
        "and maxLength where arrays, maps, and strings are declared)"
    )
