"""A small, fast validator for the JSON Schema subset our schemas use.

`jsonschema` is correct but costs tens of microseconds per sample; the builder must handle 100k samples/s. A schema
is compiled twice:

- `compile_predicate`: `is_valid(value) -> bool`, generated as the Python source of one straight-line function. The
  builder runs it on every sample (the fast path).
- `compile_schema`: `check(value, path, out)`, plain closures that append a `Violation` (path, message, hint) per
  problem. The builder runs it only on samples the predicate rejects, to report them precisely.

Both refuse any keyword they do not implement, so a schema edit can never be silently ignored. Unit tests check that
the predicate accepts exactly what the checker accepts, and that the checker agrees with `jsonschema`.

Besides standard keywords, a schema may carry `x-hint`: a string, or an object mapping a keyword to a string, used as
the one-line hint of the errors it produces.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from kubetune.datasets_new.jsonsource import JsonPath


@dataclass(frozen=True)
class Violation:
    path: JsonPath
    message: str
    hint: str


Check = Callable[[Any, JsonPath, list[Violation]], None]
Predicate = Callable[[Any], bool]


class SchemaCompileError(ValueError):
    pass


_ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "examples", "default", "x-hint"}
_SUPPORTED = _ANNOTATIONS | {
    "type", "enum", "const", "not",
    "minLength", "maxLength", "pattern",
    "minimum", "maximum",
    "items", "minItems", "maxItems", "uniqueItems",
    "properties", "required", "additionalProperties", "propertyNames",
}
_EXTENSIONS_PREFIX = "x-"  # extra data such as difficulty levels; ignored by validation

_TYPE_NAMES = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
    "array": "an array [...]", "object": "an object {...}", "null": "null",
}


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_type(value: Any, name: str) -> bool:
    kind = type(value)
    if name == "string":
        return kind is str
    if name == "integer":
        return kind is int or (kind is float and value.is_integer())
    if name == "number":
        return (kind is int) or (kind is float and math.isfinite(value))
    if name == "boolean":
        return kind is bool
    if name == "array":
        return kind is list
    if name == "object":
        return kind is dict
    return value is None  # "null"


def _short(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except RecursionError:  # a hostile file may nest values as deep as the parser allows
        return "a deeply nested value"
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse_unknown_keywords(schema: Mapping[str, Any]) -> None:
    unknown = [key for key in schema if key not in _SUPPORTED and not key.startswith(_EXTENSIONS_PREFIX)]
    if unknown:
        raise SchemaCompileError(f"unsupported schema keyword(s) {unknown}; extend datasets_new/schema.py first")


class _Compiler:
    def compile(self, schema: Mapping[str, Any], inherited_hint: str | None = None) -> Check:
        _refuse_unknown_keywords(schema)
        hints = schema.get("x-hint", inherited_hint)
        checks: list[Check] = []

        def hint_for(keyword: str, default: str) -> str:
            if isinstance(hints, str):
                return hints
            if isinstance(hints, Mapping):
                return str(hints.get(keyword, hints.get("*", default)))
            return default

        if "type" in schema:
            checks.append(self._type(schema["type"], hint_for("type", "use the type the schema asks for")))
        if "enum" in schema:
            checks.append(self._enum(list(schema["enum"]), hint_for("enum", "use one of the allowed values")))
        if "const" in schema:
            checks.append(self._enum([schema["const"]], hint_for("const", "use the required value")))
        checks.extend(self._string_checks(schema, hint_for))
        checks.extend(self._number_checks(schema, hint_for))
        checks.extend(self._array_checks(schema, hints, hint_for))
        checks.extend(self._object_checks(schema, hint_for))
        if "not" in schema:
            checks.append(self._not(schema["not"], hint_for("not", "remove the forbidden content")))
        return _sequence(checks)

    def _type(self, spec: str | list[str], hint: str) -> Check:
        names = [spec] if isinstance(spec, str) else list(spec)
        expected = " or ".join(_TYPE_NAMES[name] for name in names)
        python_types: tuple[type, ...] = tuple(
            {"string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict}[name]
            for name in names if name != "null"
        )

        def check(value: Any, path: JsonPath, out: list[Violation]) -> None:
            # Fast path: exact Python type match (bool is excluded because type(True) is bool, not int).
            if type(value) in python_types and not (type(value) is float and not _float_ok(value, names)):
                return
            if any(_is_type(value, name) for name in names):
                return
            out.append(Violation(path, f"must be {expected}, got {_json_type_name(value)} {_short(value)}", hint))

        return check

    def _enum(self, allowed: list[Any], hint: str) -> Check:
        shown = ", ".join(_short(value) for value in allowed)

        def check(value: Any, path: JsonPath, out: list[Violation]) -> None:
            if not any(value == option and type(value) is type(option) for option in allowed):
                out.append(Violation(path, f"must be one of {shown}, got {_short(value)}", hint))

        return check

    def _string_checks(self, schema: Mapping[str, Any], hint_for: Callable[[str, str], str]) -> list[Check]:
        """One closure for the string keywords; it reports only the first that fails (empty text is one error)."""
        if not {"minLength", "maxLength", "pattern"} & set(schema):
            return []
        minimum = int(schema.get("minLength", 0))
        maximum = int(schema["maxLength"]) if "maxLength" in schema else None
        pattern = re.compile(schema["pattern"]) if "pattern" in schema else None
        min_message = "must not be empty" if minimum == 1 else f"must be at least {minimum} characters long"
        min_hint = hint_for("minLength", "write some text here")
        max_hint = hint_for("maxLength", f"shorten it to {maximum} characters or fewer")
        pattern_hint = hint_for("pattern", f"the text must match /{pattern.pattern if pattern else ''}/")

        def check(value: Any, path: JsonPath, out: list[Violation]) -> None:
            if type(value) is not str:
                return
            if len(value) < minimum:
                out.append(Violation(path, min_message, min_hint))
            elif maximum is not None and len(value) > maximum:
                out.append(Violation(path, f"is {len(value)} characters long; the limit is {maximum}", max_hint))
            elif pattern is not None and pattern.search(value) is None:
                out.append(Violation(path, f"{_short(value)} does not match /{pattern.pattern}/", pattern_hint))

        return [check]

    def _number_checks(self, schema: Mapping[str, Any], hint_for: Callable[[str, str], str]) -> list[Check]:
        checks: list[Check] = []
        for keyword, outside in (("minimum", lambda v, bound: v < bound), ("maximum", lambda v, bound: v > bound)):
            if keyword not in schema:
                continue
            bound = schema[keyword]
            hint = hint_for(keyword, f"use a value {'>=' if keyword == 'minimum' else '<='} {bound}")
            word = "below the minimum" if keyword == "minimum" else "above the maximum"

            def check(value: Any, path: JsonPath, out: list[Violation],
                      bound: Any = bound, outside: Callable[[Any, Any], bool] = outside,
                      word: str = word, hint: str = hint) -> None:
                if type(value) in (int, float) and outside(value, bound):
                    out.append(Violation(path, f"{_short(value)} is {word} {bound}", hint))

            checks.append(check)
        return checks

    def _array_checks(self, schema: Mapping[str, Any], hints: Any,
                      hint_for: Callable[[str, str], str]) -> list[Check]:
        checks: list[Check] = []
        if "items" in schema:
            item_check = self.compile(schema["items"], hints if isinstance(hints, str) else None)

            def check_items(value: Any, path: JsonPath, out: list[Violation]) -> None:
                if type(value) is list:
                    for position, item in enumerate(value):
                        item_check(item, path + (position,), out)

            checks.append(check_items)
        for keyword, compare, word in (("minItems", int.__lt__, "at least"), ("maxItems", int.__gt__, "at most")):
            if keyword in schema:
                count = int(schema[keyword])
                hint = hint_for(keyword, f"give {word} {count} item(s)")

                def check_count(value: Any, path: JsonPath, out: list[Violation], count: int = count,
                                compare: Callable[[int, int], bool] = compare, word: str = word,
                                hint: str = hint) -> None:
                    if type(value) is list and compare(len(value), count):
                        out.append(Violation(path, f"must have {word} {count} item(s), has {len(value)}", hint))

                checks.append(check_count)
        if schema.get("uniqueItems"):
            unique_hint = hint_for("uniqueItems", "remove the repeated item")

            def check_unique(value: Any, path: JsonPath, out: list[Violation]) -> None:
                if type(value) is list:
                    seen: set[str] = set()
                    for position, item in enumerate(value):
                        try:
                            key = json.dumps(item, sort_keys=True)
                        except RecursionError:
                            continue  # too deep to compare; the item's own checks report it
                        if key in seen:
                            out.append(Violation(path + (position,), f"{_short(item)} is repeated", unique_hint))
                        seen.add(key)

            checks.append(check_unique)
        return checks

    def _object_checks(self, schema: Mapping[str, Any], hint_for: Callable[[str, str], str]) -> list[Check]:
        checks: list[Check] = []
        required = list(schema.get("required", ()))
        properties = {name: self.compile(sub) for name, sub in schema.get("properties", {}).items()}
        additional = schema.get("additionalProperties", True)
        additional_check = self.compile(additional) if isinstance(additional, Mapping) else None
        allowed = ", ".join(schema.get("properties", {}))
        extra_hint = hint_for("additionalProperties", f"allowed fields: {allowed}")
        missing_hint = hint_for("required", f"add the required field(s): {', '.join(required)}")
        names_check = self.compile(schema["propertyNames"]) if "propertyNames" in schema else None
        if not (required or properties or "additionalProperties" in schema or names_check):
            return checks

        def check(value: Any, path: JsonPath, out: list[Violation]) -> None:
            if type(value) is not dict:
                return
            for name in required:
                if name not in value:
                    out.append(Violation(path, f"missing required field {name!r}", missing_hint))
            for name, item in value.items():
                if names_check is not None:
                    names_check(name, path + (name,), out)
                property_check = properties.get(name)
                if property_check is not None:
                    property_check(item, path + (name,), out)
                elif additional is False:
                    out.append(Violation(path + (name,), f"unexpected field {name!r}", extra_hint))
                elif additional_check is not None:
                    additional_check(item, path + (name,), out)

        checks.append(check)
        return checks

    def _not(self, sub: Mapping[str, Any], hint: str) -> Check:
        # The two forms our schemas use get a direct test: the generic form builds (and discards) a violation for
        # every valid value, which is most of the validation time on a large build.
        if set(sub) == {"pattern"}:
            forbidden = re.compile(sub["pattern"])

            def check_pattern(value: Any, path: JsonPath, out: list[Violation]) -> None:
                if type(value) is str and forbidden.search(value) is not None:
                    out.append(Violation(path, f"{_short(value)} must not match /{forbidden.pattern}/", hint))

            return check_pattern
        if set(sub) == {"const"}:
            const = sub["const"]

            def check_const(value: Any, path: JsonPath, out: list[Violation]) -> None:
                if value == const and type(value) is type(const):
                    out.append(Violation(path, f"{_short(value)} is not allowed here", hint))

            return check_const
        inner = self.compile(sub)

        def check(value: Any, path: JsonPath, out: list[Violation]) -> None:
            found: list[Violation] = []
            inner(value, path, found)
            if not found:
                out.append(Violation(path, f"{_short(value)} must not match {json.dumps(sub)}", hint))

        return check


def _float_ok(value: float, names: list[str]) -> bool:
    return ("number" in names and math.isfinite(value)) or ("integer" in names and value.is_integer())


def _sequence(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]

    def check(value: Any, path: JsonPath, out: list[Violation]) -> None:
        for one in checks:
            one(value, path, out)

    return check


# The checker's type semantics as Python expressions over a variable `{v}`: bool is no number, an integral float is
# an integer, a number is finite.
_TYPE_TESTS = {
    "string": "type({v}) is str",
    "integer": "(type({v}) is int or (type({v}) is float and {v}.is_integer()))",
    "number": "(type({v}) is int or (type({v}) is float and _isfinite({v})))",
    "boolean": "type({v}) is bool",
    "array": "type({v}) is list",
    "object": "type({v}) is dict",
    "null": "{v} is None",
}
# JSON types whose keywords need a type guard, and the Python type that guard tests.
_GUARDED_TYPES = {"string": "str", "array": "list", "object": "dict"}
_MISSING = object()
# Characters that a regex always matches literally outside a character class (no flag can change them).
_PLAIN_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<>/_-:;,='\"@%&!~")


def _required_character(pattern: str) -> str | None:
    """A character that every match of `pattern` contains, or None when not sure.

    Found only in the plain case: the pattern starts with a literal character that no `*`, `?` or `{` may repeat zero
    times, and has no `|` outside parentheses (counted only when no escape or class could hold a parenthesis).
    """
    if not pattern or pattern[0] not in _PLAIN_CHARACTERS or pattern[1:2] in ("*", "?", "{"):
        return None
    if "|" in pattern:
        if "\\" in pattern or "[" in pattern:
            return None
        depth = 0
        for character in pattern:
            depth += (character == "(") - (character == ")")
            if character == "|" and depth == 0:
                return None
    return pattern[0]


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


class _PredicateWriter:
    """Writes the source of `is_valid(value)` for one schema: statements that `return False` at the first keyword the
    value breaks, with the same semantics as the checker closures above."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"_isfinite": math.isfinite, "_dumps": json.dumps, "_MISSING": _MISSING}
        self._numbers = itertools.count()

    def function(self, schema: Mapping[str, Any]) -> str:
        return "\n".join(["def is_valid(value):", *_indent(self.node(schema, "value")), "    return True"])

    def constant(self, value: Any) -> str:
        """A name the generated code uses to refer to `value` (compiled patterns, sets of keys, bounds)."""
        name = f"_c{next(self._numbers)}"
        self.namespace[name] = value
        return name

    def variable(self) -> str:
        return f"_v{next(self._numbers)}"

    def node(self, schema: Mapping[str, Any], var: str) -> list[str]:
        """Statements that return False when the value in `var` breaks `schema`."""
        _refuse_unknown_keywords(schema)
        lines: list[str] = []
        known: str | None = None  # the Python type `var` has once the type test passed, when it is a single one
        if "type" in schema:
            names = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
            test = " or ".join(_TYPE_TESTS[name].format(v=var) for name in names)
            lines.append(f"if not ({test}): return False")
            known = _GUARDED_TYPES.get(names[0]) if len(names) == 1 else None
        for keyword in ("enum", "const"):
            if keyword in schema:
                allowed = self.constant(list(schema["enum"]) if keyword == "enum" else [schema["const"]])
                lines.append(f"if not any({var} == option and type({var}) is type(option) for option in {allowed}):"
                             " return False")
        lines += self._guarded("str", known, var, self._string(schema, var))
        for keyword, outside in (("minimum", "<"), ("maximum", ">")):
            if keyword in schema:
                bound = self.constant(schema[keyword])
                lines.append(f"if type({var}) in (int, float) and {var} {outside} {bound}: return False")
        lines += self._guarded("list", known, var, self._array(schema, var))
        lines += self._guarded("dict", known, var, self._object(schema, var))
        if "not" in schema:
            lines += self._not(schema["not"], var, known)
        return lines

    def _not(self, sub: Mapping[str, Any], var: str, known: str | None) -> list[str]:
        # The two forms our schemas use are written inline; any other goes through a predicate of its own.
        if set(sub) == {"pattern"}:
            forbidden = self.constant(re.compile(sub["pattern"]))
            test = f"{forbidden}.search({var}) is not None"
            character = _required_character(sub["pattern"])
            if character is not None:  # `in` (memchr) rules out most text far quicker than the regex search
                test = f"{character!r} in {var} and {test}"
            return self._guarded("str", known, var, [f"if {test}: return False"])
        if set(sub) == {"const"}:
            const = self.constant(sub["const"])
            return [f"if {var} == {const} and type({var}) is type({const}): return False"]
        return [f"if {self.constant(compile_predicate(sub))}({var}): return False"]

    @staticmethod
    def _guarded(python_type: str, known: str | None, var: str, body: list[str]) -> list[str]:
        """`body` runs only on values of `python_type` (like the checker's keywords); no test when already known."""
        if not body or known == python_type:
            return body
        return [f"if type({var}) is {python_type}:", *_indent(body)]

    def _string(self, schema: Mapping[str, Any], var: str) -> list[str]:
        lines = []
        if schema.get("minLength") == 1:
            lines.append(f"if not {var}: return False")  # the usual "non-empty", without a call to len()
        elif "minLength" in schema:
            lines.append(f"if len({var}) < {int(schema['minLength'])}: return False")
        if "maxLength" in schema:
            lines.append(f"if len({var}) > {int(schema['maxLength'])}: return False")
        if schema.get("pattern") == r"\S" and schema.get("minLength") == 1:
            # The usual "not blank", after the non-empty test: str.isspace() and the pattern's \S share CPython's
            # one definition of whitespace, and isspace() stops at the first other character without a regex.
            lines.append(f"if {var}.isspace(): return False")
        elif "pattern" in schema:
            lines.append(f"if {self.constant(re.compile(schema['pattern']))}.search({var}) is None: return False")
        return lines

    def _array(self, schema: Mapping[str, Any], var: str) -> list[str]:
        lines = []
        if "items" in schema:
            item = self.variable()
            body = self.node(schema["items"], item)
            if body:
                lines += [f"for {item} in {var}:", *_indent(body)]
        if "minItems" in schema:
            lines.append(f"if len({var}) < {int(schema['minItems'])}: return False")
        if "maxItems" in schema:
            lines.append(f"if len({var}) > {int(schema['maxItems'])}: return False")
        if schema.get("uniqueItems"):
            lines.append(f"if len({{_dumps(item, sort_keys=True) for item in {var}}}) != len({var}): return False")
        return lines

    def _object(self, schema: Mapping[str, Any], var: str) -> list[str]:
        required = list(schema.get("required", ()))
        properties: Mapping[str, Any] = schema.get("properties", {})
        additional = schema.get("additionalProperties", True)
        names = schema.get("propertyNames")
        lines = []
        if required:
            lines.append(f"if not {var}.keys() >= {self.constant(frozenset(required))}: return False")
        if additional is False and names is None:
            # A closed object (a sample): no key outside `properties`, then each property present is checked.
            lines.append(f"if not {var}.keys() <= {self.constant(frozenset(properties))}: return False")
            for name, sub in properties.items():
                member = self.variable()
                body = self.node(sub, member)
                if body and name in required:
                    lines += [f"{member} = {var}[{name!r}]", *body]
                elif body:
                    lines += [f"{member} = {var}.get({name!r}, _MISSING)", f"if {member} is not _MISSING:",
                              *_indent(body)]
            return lines
        key, member = self.variable(), self.variable()
        body = self.node(names, key) if names is not None else []
        otherwise = (["return False"] if additional is False
                     else self.node(additional, member) if isinstance(additional, Mapping) else [])
        branches: list[str] = []
        for name, sub in properties.items():
            branches += [f"{'elif' if branches else 'if'} {key} == {name!r}:", *_indent(self.node(sub, member) or
                                                                                       ["pass"])]
        body += [*branches, "else:", *_indent(otherwise or ["pass"])] if branches else otherwise
        if body:
            lines += [f"for {key}, {member} in {var}.items():", *_indent(body)]
        return lines


def compile_predicate(schema: Mapping[str, Any]) -> Predicate:
    """Compile a schema into `is_valid(value)`: True exactly when `compile_schema(schema)` reports no violation.

    It is generated as the source of one Python function (straight-line tests, no call per keyword) because it runs
    on every sample of a build; samples it rejects go through the checker, which says why.
    """
    writer = _PredicateWriter()
    source = writer.function(schema)
    # The source holds only our own code: schema values reach it as names in the namespace or as repr() literals.
    code = compile(source, f"<is_valid for {schema.get('title', 'a schema')}>", "exec")
    exec(code, writer.namespace)  # noqa: S102 - see above; sample data never becomes code
    predicate: Predicate = writer.namespace["is_valid"]
    return predicate


def predicate_source(schema: Mapping[str, Any]) -> str:
    """The Python source `compile_predicate` runs for `schema` (to read when a predicate surprises you)."""
    return _PredicateWriter().function(schema)


def compile_schema(schema: Mapping[str, Any]) -> Check:
    """Compile a schema into `check(value, path, out)`, which appends a Violation per problem to `out`."""
    return _Compiler().compile(schema)


def load_bundled_schema(name: str) -> dict[str, Any]:
    """Read one of the JSON schemas shipped in `datasets_new/schemas/`."""
    text = resources.files("kubetune.datasets_new").joinpath("schemas", name).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded
