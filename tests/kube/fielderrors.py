"""Field errors worded as kube-apiserver words them (apimachinery's field.Error) and the 422 Status that carries them.

`str(error)` is `<field>: <body>`, e.g. `spec.x: Invalid value: "object": no such key: types evaluating rule: ...`;
a field path is built with `child`, `key` and `index` (`spec.validation.openAPIV3Schema.properties[spec]`), and the
root of an object is `<nil>`, as the server prints a nil path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.kube import errors

ROOT = "<nil>"  # how the server prints the nil path of an object's root
OMIT = object()  # the value is not shown (field.OmitValueType)
_TITLES = {
    "FieldValueRequired": "Required value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueInvalid": "Invalid value",
    "FieldValueTypeInvalid": "Invalid value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueTooMany": "Too many",
    "FieldValueTooLong": "Too long",
    "InternalError": "Internal error",
}
_VALUE_SHOWN = (
    "FieldValueInvalid",
    "FieldValueTypeInvalid",
    "FieldValueNotSupported",
    "FieldValueDuplicate",
    "FieldValueTooMany",
)


@dataclass(frozen=True)
class FieldError:
    reason: str  # the Status cause type: FieldValueInvalid, FieldValueRequired, ...
    field: str
    value: Any = OMIT
    detail: str = ""

    def body(self) -> str:
        text = _TITLES[self.reason]
        if self.reason in _VALUE_SHOWN and self.value is not OMIT:
            text += f": {go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def go_value(value: Any) -> str:
    """A value as field.Error prints it: %v for numbers and booleans, %q for strings, JSON for the rest."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def child(path: str, name: str) -> str:
    return name if path in ("", ROOT) else f"{path}.{name}"


def key(path: str, name: str) -> str:
    return f"{'' if path == ROOT else path}[{name}]"


def index(path: str, position: int) -> str:
    return key(path, str(position))


def invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError("FieldValueInvalid", path, value, detail)


def required(path: str, detail: str = "") -> FieldError:
    return FieldError("FieldValueRequired", path, OMIT, detail)


def forbidden(path: str, detail: str) -> FieldError:
    return FieldError("FieldValueForbidden", path, OMIT, detail)


def not_supported(path: str, value: Any, supported: list[str]) -> FieldError:
    detail = "supported values: " + ", ".join(json.dumps(str(item)) for item in supported) if supported else ""
    return FieldError("FieldValueNotSupported", path, value, detail)


def duplicate(path: str, value: Any) -> FieldError:
    return FieldError("FieldValueDuplicate", path, value)


def too_many(path: str, actual: int, most: int) -> FieldError:
    return FieldError("FieldValueTooMany", path, actual, f"must have at most {most} {'item' if most == 1 else 'items'}")


def too_long(path: str, most: int) -> FieldError:
    return FieldError(
        "FieldValueTooLong", path, OMIT, f"may not be more than {most} {'byte' if most == 1 else 'bytes'}"
    )


def invalid_status(kind: str, group: str, name: str, field_errors: list[FieldError]) -> errors.ApiError:
    """422 Invalid as errors.NewInvalid builds it: `Kind.group "name" is invalid: [a, b]` and one cause per error."""
    qualified = f"{kind}.{group}" if group else kind
    listed = str(field_errors[0]) if len(field_errors) == 1 else "[" + ", ".join(map(str, field_errors)) + "]"
    causes = [{"reason": error.reason, "message": error.body(), "field": error.field} for error in field_errors]
    return errors.ApiError(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid: {listed}',
        details={"name": name, "group": group, "kind": kind, "causes": causes},
    )


def kubectl_lines(error: errors.ApiError) -> list[str]:
    """What kubectl prints under `The <Kind> "<name>" is invalid:` — one `* field: message` per cause."""
    return [f"* {cause['field']}: {cause['message']}" for cause in error.details.get("causes", [])]
