"""Validating FineTuneRun manifests with the same models and CEL rules the CRD carries.

Errors come back as `path: message` lines with Kubernetes field paths (`spec.training.lora.r: must be >= 1`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import celpy
import yaml
from pydantic import ValidationError

from kubetune.api import types as t
from kubetune.api.base import ApiModel, KeyRule
from kubetune.api.crd import openapi_schema
from kubetune.api.schema import unwrap


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class InvalidManifest(ValueError):
    def __init__(self, errors: list[FieldError], source: str = "") -> None:
        self.errors = errors
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(str(e) for e in errors))


@dataclass(frozen=True)
class FineTuneRun:
    """A validated FineTuneRun: metadata we rely on plus the defaulted spec."""

    name: str
    namespace: str
    spec: t.FineTuneRunSpec
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": t.API_VERSION,
            "kind": t.KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self.spec.to_manifest(),
        }


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-4` is a string; kubectl reads it as a number, so do we."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."),
)
# Integers must still resolve as int: re-register the int resolver first in the lookup order.
for _first in list("-+0123456789"):
    _Yaml12Loader.yaml_implicit_resolvers[_first] = [
        r for r in yaml.SafeLoader.yaml_implicit_resolvers.get(_first, []) if r[0] == "tag:yaml.org,2002:int"
    ] + [r for r in _Yaml12Loader.yaml_implicit_resolvers[_first] if r[0] != "tag:yaml.org,2002:int"]


def load_yaml_documents(text: str) -> list[Any]:
    return [doc for doc in yaml.load_all(text, Loader=_Yaml12Loader) if doc is not None]


def load_runs(path: Path) -> list[FineTuneRun]:
    """Every FineTuneRun in a YAML file, validated; raises InvalidManifest naming the file and document."""
    try:
        docs = load_yaml_documents(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidManifest([FieldError("<file>", f"not valid YAML: {exc}")], str(path)) from exc
    runs = []
    for index, doc in enumerate(docs):
        where = str(path) if len(docs) == 1 else f"{path} (document {index + 1})"
        runs.append(parse_run(doc, source=where))
    if not runs:
        raise InvalidManifest([FieldError("<file>", "no FineTuneRun in the file")], str(path))
    return runs


def parse_run(doc: Any, *, source: str = "", default_namespace: str = "default") -> FineTuneRun:
    errors = list(_errors(doc))
    if errors:
        raise InvalidManifest(errors, source)
    meta = doc["metadata"]
    return FineTuneRun(
        name=meta["name"],
        namespace=meta.get("namespace") or default_namespace,
        spec=t.FineTuneRunSpec.model_validate(doc.get("spec") or {}, strict=True),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 0)),
        labels=dict(meta.get("labels") or {}),
    )


def validate_spec(spec: Any) -> t.FineTuneRunSpec:
    """Validate a bare spec (types, bounds, CEL); raises InvalidManifest with `spec.` paths."""
    return parse_run({"apiVersion": t.API_VERSION, "kind": t.KIND, "metadata": {"name": "x"}, "spec": spec}).spec


def _errors(doc: Any) -> Iterator[FieldError]:
    if not isinstance(doc, dict):
        yield FieldError("<document>", "must be a mapping")
        return
    if doc.get("apiVersion") != t.API_VERSION:
        yield FieldError("apiVersion", f"must be {t.API_VERSION}")
    if doc.get("kind") != t.KIND:
        yield FieldError("kind", f"must be {t.KIND}")
    yield from _metadata_errors(doc.get("metadata"))
    unknown = sorted(set(doc) - {"apiVersion", "kind", "metadata", "spec", "status"})
    for key in unknown:
        yield FieldError(key, "unknown field")
    spec = doc.get("spec")
    if spec is None:
        spec = {}
    try:
        model = t.FineTuneRunSpec.model_validate(spec, strict=True)
    except ValidationError as exc:
        for error in exc.errors():
            yield FieldError(_path(("spec", *error["loc"])), _message(error))
        return
    yield from cel_errors(model, "spec")


def _metadata_errors(meta: Any) -> Iterator[FieldError]:
    if not isinstance(meta, dict):
        yield FieldError("metadata", "required")
        return
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        yield FieldError("metadata.name", "required")
    elif len(name) > t.RUN_NAME_MAX:
        yield FieldError("metadata.name", f"must be at most {t.RUN_NAME_MAX} characters (it prefixes Job names)")
    elif not re.match(t.RUN_NAME_PATTERN, name):
        yield FieldError("metadata.name", "must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter")
    namespace = meta.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or len(namespace) > 63
                                  or not re.match(t.DNS_LABEL, namespace)):
        yield FieldError("metadata.namespace", "must be a DNS-1123 label")


# --- CEL --------------------------------------------------------------------------------------------------------


@cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_errors(model: ApiModel, path: str) -> Iterator[FieldError]:
    """Evaluate every CEL rule of `model` and the models inside it, as the API server would after defaulting."""
    rules = type(model).cel_rules
    data = _canonical(model.to_manifest()) if rules else ""
    for rule in rules:
        if not _holds(rule.rule, data):
            yield FieldError(path + (rule.field_path or ""), rule.message)
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        alias = info.alias or name
        for key_rule in _key_rules(type(model), name):
            if isinstance(value, dict) and not _holds(key_rule.to_schema()["rule"], _canonical(value)):
                yield FieldError(f"{path}.{alias}", key_rule.message)
        if isinstance(value, ApiModel):
            yield from cel_errors(value, f"{path}.{alias}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, ApiModel):
                    yield from cel_errors(item, f"{path}.{alias}[{index}]")


@cache
def _key_rules(model: type[ApiModel], name: str) -> tuple[KeyRule, ...]:
    info = model.model_fields[name]
    _, metadata = unwrap(info.annotation, list(info.metadata))
    return tuple(item for item in metadata if isinstance(item, KeyRule))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# A rule's verdict depends only on the object it is evaluated on: remembered by the object's canonical JSON. The
# interpreter costs ~0.4 ms a rule, ~6 ms a run, and an operator validates every new run; runs made from one template
# share most of their sub-objects (storage, export, resources...), so only the parts that differ are evaluated.
@lru_cache(maxsize=4096)
def _holds(rule: str, data: str) -> bool:
    result = _program(rule).evaluate({"self": celpy.json_to_cel(json.loads(data))})
    if isinstance(result, Exception):
        raise result
    return bool(result)


def crd_cel_rules() -> list[tuple[str, dict[str, Any]]]:
    """Every `x-kubernetes-validations` entry in the generated schema, with its JSON path (tests compile them all)."""
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for entry in node.get("x-kubernetes-validations", []):
            found.append((path, entry))
        for key, child in node.get("properties", {}).items():
            walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")

    walk(openapi_schema(), "")
    return found


# --- pydantic errors → Kubernetes-style messages --------------------------------------------------------------------


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # pydantic marks a bad dict key this way; the key itself is already in the path
            out += ("." if out else "") + str(part)
    return out


_TYPE_WORDS = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be a boolean",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "missing": "required",
    "extra_forbidden": "unknown field",
}


def _message(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind]
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if kind == "greater_than":
        return f"must be > {ctx['gt']}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if kind == "less_than":
        return f"must be < {ctx['lt']}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx['min_length']} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} item(s)"
    return str(error["msg"])
