"""The API server's field errors and name/value syntax rules, as apimachinery's `validation` and `field` packages
word them, so that a refused object reads like a real server's answer.

Go's regular expressions are anchored with `^...$`, where `$` never matches before a trailing newline: every rule
here uses `re.fullmatch`, so a name like "demo\\n" is refused as on the server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from decimal import MAX_EMAX, MIN_EMIN, ROUND_UP, Context, Decimal, InvalidOperation
from typing import Any

from tests.kube import errors

Obj = dict[str, Any]

# ------------------------------------------------------------------------------------------------ field errors


def render(value: Any) -> str:
    """A value the way the server quotes it in `Invalid value: ...` (strings quoted, numbers bare, objects as JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def invalid(path: str, value: Any, detail: str) -> str:
    return f"{path}: Invalid value: {render(value)}: {detail}"


def required(path: str, detail: str = "") -> str:
    return f"{path}: Required value" + (f": {detail}" if detail else "")


def unsupported(path: str, value: Any, supported: Iterable[str]) -> str:
    return f"{path}: Unsupported value: {render(value)}: supported values: " + ", ".join(
        json.dumps(item) for item in supported
    )


def duplicate(path: str, value: Any) -> str:
    return f"{path}: Duplicate value: {render(value)}"


def forbidden(path: str, detail: str) -> str:
    return f"{path}: Forbidden: {detail}"


def not_found(path: str, value: Any) -> str:
    return f"{path}: Not found: {render(value)}"


def too_long(path: str, limit: int) -> str:
    return f"{path}: Too long: may not be more than {limit} bytes"


def too_many(path: str, count: int, limit: int) -> str:
    return f"{path}: Too many: {count}: must have at most {limit} items"


_CAUSE_TYPES = {
    "Required value": "FieldValueRequired", "Forbidden": "FieldValueForbidden", "Invalid value": "FieldValueInvalid",
    "Unsupported value": "FieldValueNotSupported", "Duplicate value": "FieldValueDuplicate",
    "Too many": "FieldValueTooMany", "Too long": "FieldValueTooLong", "Not found": "FieldValueNotFound",
}


def _status_cause(cause: str) -> dict[str, str]:
    field, _, body = cause.partition(": ")
    return {"reason": _CAUSE_TYPES.get(body.split(":", 1)[0], "FieldValueInvalid"), "message": body, "field": field}


def invalid_status(kind: str, group: str, name: str, causes: list[str]) -> errors.ApiError:
    """422 Invalid as errors.NewInvalid builds it: `Kind.group "name" is invalid: <cause>` (several causes, without
    repeats, as `[a, b]`), and in `details` the kind, group and one cause per error with its field and type."""
    qualified = f"{kind}.{group}" if group else kind
    unique = list(dict.fromkeys(causes))
    listed = unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"
    return errors.ApiError(
        422, "Invalid", f'{qualified} "{name}" is invalid: {listed}',
        details={"name": name, "group": group, "kind": kind, "causes": [_status_cause(cause) for cause in causes]},
    )


def nonnegative(path: str, value: Any) -> list[str]:
    """apivalidation.ValidateNonnegativeField."""
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return [invalid(path, value, "must be greater than or equal to 0")]
    return []


def in_range(path: str, value: Any, low: int, high: int) -> list[str]:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        return [invalid(path, value, f"must be between {low} and {high}, inclusive")]
    return []


# ------------------------------------------------------------------------------------------------ syntax rules

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + r"(\." + _DNS1123_LABEL + ")*"
_DNS1035_LABEL = "[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_VALUE = "(" + _QUALIFIED_NAME + ")?"
_CONFIG_KEY = "[-._a-zA-Z0-9]+"
_ENV_VAR_NAME = "[-._a-zA-Z][-._a-zA-Z0-9]*"
_IANA_SVC_NAME = "[a-z0-9]([a-z0-9-]*[a-z0-9])?"


def _regex_message(kind: str, regex: str, examples: tuple[str, ...]) -> str:
    shown = ",  or ".join(f"'{example}'" for example in examples)
    return f"{kind} (e.g. {shown}, regex used for validation is '{regex}')"


_LABEL_MSG = _regex_message(
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end "
    "with an alphanumeric character", _DNS1123_LABEL, ("my-name", "123-abc"))
_SUBDOMAIN_MSG = _regex_message(
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start "
    "and end with an alphanumeric character", _DNS1123_SUBDOMAIN, ("example.com",))
_DNS1035_MSG = _regex_message(
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, "
    "and end with an alphanumeric character", _DNS1035_LABEL, ("my-name", "abc-123"))
_QUALIFIED_MSG = _regex_message(
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character", _QUALIFIED_NAME, ("MyName", "my.name", "123-abc"))
_LABEL_VALUE_MSG = _regex_message(
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start "
    "and end with an alphanumeric character", _LABEL_VALUE, ("MyValue", "my_value", "12345"))
_CONFIG_KEY_MSG = _regex_message(
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'", _CONFIG_KEY,
    ("key.name", "KEY_NAME", "key-name"))
_ENV_VAR_MSG = _regex_message(
    "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must "
    "not start with a digit", _ENV_VAR_NAME, ("my.env-name", "MY_ENV.NAME", "MyEnvName1"))


def _max_length(value: str, limit: int) -> list[str]:
    return [f"must be no more than {limit} characters"] if len(value) > limit else []


def dns1123_label(value: str) -> list[str]:
    return _max_length(value, 63) + ([] if re.fullmatch(_DNS1123_LABEL, value) else [_LABEL_MSG])


def dns1123_subdomain(value: str) -> list[str]:
    return _max_length(value, 253) + ([] if re.fullmatch(_DNS1123_SUBDOMAIN, value) else [_SUBDOMAIN_MSG])


def dns1035_label(value: str) -> list[str]:
    return _max_length(value, 63) + ([] if re.fullmatch(_DNS1035_LABEL, value) else [_DNS1035_MSG])


def path_segment_name(value: str) -> list[str]:
    """RBAC object names (path.ValidatePathSegmentName)."""
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{char}'" for char in "/%" if char in value]


def qualified_name(value: str) -> list[str]:
    """`[prefix/]name`: label and annotation keys, condition types, finalizers."""
    parts = value.split("/")
    if len(parts) > 2:
        return ["a qualified name " + _QUALIFIED_MSG.removeprefix("name part ") + " with an optional DNS subdomain "
                "prefix and '/' (e.g. 'example.com/MyName')"]
    name = parts[-1]
    messages = []
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            messages.append("prefix part must be non-empty")
        else:
            messages += ["prefix part " + message for message in dns1123_subdomain(prefix)]
    if not name:
        messages.append("name part must be non-empty")
    else:
        if len(name) > 63:
            messages.append("name part must be no more than 63 characters")
        if not re.fullmatch(_QUALIFIED_NAME, name):
            messages.append(_QUALIFIED_MSG)
    return messages


def label_value(value: str) -> list[str]:
    return _max_length(value, 63) + ([] if re.fullmatch(_LABEL_VALUE, value) else [_LABEL_VALUE_MSG])


def config_key(value: str) -> list[str]:
    messages = _max_length(value, 253)
    if not re.fullmatch(_CONFIG_KEY, value):
        messages.append(_CONFIG_KEY_MSG)
    if value in (".", ".."):
        messages.append(f"must not be '{value}'")
    elif value.startswith(".."):
        messages.append("must not start with '..'")
    return messages


def env_var_name(value: str) -> list[str]:
    messages = [] if re.fullmatch(_ENV_VAR_NAME, value) else [_ENV_VAR_MSG]
    if value in (".", ".."):
        messages.append(f"must not be '{value}'")
    elif value.startswith(".."):
        messages.append("must not start with '..'")
    return messages


def port_name(value: str) -> list[str]:
    """IsValidPortName: an IANA service name."""
    messages = []
    if not 1 <= len(value) <= 15:
        messages.append("must be no more than 15 characters")
    if not re.fullmatch(_IANA_SVC_NAME, value):
        messages.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if "--" in value:
        messages.append("must not contain consecutive hyphens")
    if not re.search("[a-z]", value):
        messages.append("must contain at least one letter (a-z)")
    return messages


def each(path: str, value: Any, messages: list[str]) -> list[str]:
    """One `Invalid value` cause per message of a syntax rule."""
    return [invalid(path, value, message) for message in messages]


def labels(path: str, values: Any) -> list[str]:
    """ValidateLabels: qualified-name keys, label-syntax values (non-string values are reported elsewhere)."""
    causes: list[str] = []
    if not isinstance(values, Mapping):
        return causes
    for key, value in values.items():
        causes += each(path, key, qualified_name(str(key)))
        if isinstance(value, str):
            causes += each(path, value, label_value(value))
    return causes


def immutable(path: str, new: Any, old: Any) -> list[str]:
    """ValidateImmutableField."""
    return [] if new == old else [invalid(path, new, "field is immutable")]


def selector_matches(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) selects these labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        present = key in labels
        if (operator == "In" and labels.get(key) not in values) or (operator == "NotIn" and labels.get(key) in values):
            return False
        if (operator == "Exists" and not present) or (operator == "DoesNotExist" and present):
            return False
    return True


def label_selector(selector: Any, path: str) -> list[str]:
    """ValidateLabelSelector: a selector is required, its labels and expressions well formed."""
    if not isinstance(selector, dict):
        return [required(path)]
    causes = labels(f"{path}.matchLabels", selector.get("matchLabels"))
    for index, expression in enumerate(selector.get("matchExpressions") or []):
        at = f"{path}.matchExpressions[{index}]"
        operator, values = expression.get("operator"), expression.get("values") or []
        causes += each(f"{at}.key", expression.get("key", ""), qualified_name(expression.get("key", "")))
        if operator in ("In", "NotIn") and not values:
            causes.append(required(f"{at}.values", "must be specified when `operator` is 'In' or 'NotIn'"))
        elif operator in ("Exists", "DoesNotExist") and values:
            causes.append(forbidden(f"{at}.values", "may not be specified when `operator` is 'Exists' or "
                                                        "'DoesNotExist'"))
        elif operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            causes.append(invalid(f"{at}.operator", operator, "not a valid selector operator"))
    return causes


# ---------------------------------------------------------------------------------------------------- quantities

_QUANTITY = re.compile(r"([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)")
_DECIMAL_SUFFIXES = {"": 0, "n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_NANO = Decimal("1e-9")
_MAX_BINARY = Decimal(2**63 - 1)  # resource.maxAllowed: a binary-suffixed amount is capped there


def _int64(text: str) -> int | None:
    """strconv.ParseInt(text, 10, 64), None where it fails (a sign alone, other characters, out of range)."""
    if re.fullmatch(r"[-+]?[0-9]+", text) is None or len(text.lstrip("+-").lstrip("0")) > 19:
        return None
    number = int(text)
    return number if -(2**63) <= number < 2**63 else None


def quantity(value: Any) -> Decimal:
    """resource.ParseQuantity, exactly, at any size: a decimal exponent is an int64 wrapped to int32 (out of range,
    the suffix is unknown), a non-zero amount is rounded away from zero to whole nanos, a binary-suffixed one capped at
    2^63-1. A malformed quantity never reaches validation: decoding the request fails (400)."""
    text = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    match = _QUANTITY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise errors.bad_request(
            f"quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' "
            f"(got {render(value)})")
    number, suffix = match.groups()
    # Exact arithmetic at any exponent: the digits given, plus 2^60's, never need rounding.
    context = Context(prec=len(number) + 24, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[InvalidOperation])
    try:
        amount = context.create_decimal(number)
    except InvalidOperation:
        raise errors.bad_request(f"unable to parse quantity's numeric part: {render(value)}") from None
    exponent = _int64(suffix[1:]) if suffix[:1] in ("e", "E") else None
    if suffix in _BINARY_SUFFIXES:
        amount = context.multiply(amount, 2 ** _BINARY_SUFFIXES[suffix])
        if abs(amount) > _MAX_BINARY:
            amount = _MAX_BINARY.copy_sign(amount)
    elif suffix in _DECIMAL_SUFFIXES:
        amount = context.scaleb(amount, _DECIMAL_SUFFIXES[suffix])
    elif exponent is not None:
        amount = context.scaleb(amount, (exponent + 2**31) % 2**32 - 2**31)  # Go's int32(int64)
    else:
        raise errors.bad_request(f"unable to parse quantity's suffix: {render(value)}")
    if amount and amount.as_tuple().exponent < -9:  # type: ignore[operator]  # finite: an int exponent
        amount = amount.quantize(_NANO, rounding=ROUND_UP, context=context)
    return amount
