"""Reading manifests the way kubectl and the API server read them: YAML (or JSON) → JSON values.

kubectl turns YAML into JSON with sigs.k8s.io/yaml (go-yaml v2 scalars) before the server sees it, and the server
decodes that JSON strictly. So a manifest reads here as there: `1e-4` and `4.0` are numbers (`4.0` an integer, as
JSON writes it), `y`/`n` are booleans, `2024-01-01` and `1:30` stay strings, map keys become strings, and
NaN/Infinity, lone surrogates in YAML escapes and runaway nesting or aliasing are refused. Duplicate keys are refused
too, although kubectl accepts them: it keeps the last value without a word (the server never sees the first), so a
repeated key is almost always a mistake that would be lost silently.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from typing import Any

import yaml

# Deeper than any valid FineTuneRun by far; keeps the recursive YAML and JSON readers away from Python's limit.
MAX_DEPTH = 64
# Values after alias expansion (the server's reader refuses "excessive aliasing"); a valid run has a few thousand.
MAX_VALUES = 200_000
_INT64 = 2**63


class ManifestSyntaxError(ValueError):
    """A document that is not a JSON value as kubectl reads it; `line` (1-based) where one is known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


# libyaml's parser where PyYAML was built with it: go-yaml v2 is a port of libyaml, and the pure-Python parser takes
# seconds per hundred thousand values (a hostile manifest is bounded by MAX_VALUES, not by a size).
_SafeLoader: type[yaml.SafeLoader] = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader  # type: ignore[assignment]


class _KubectlYamlLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """go-yaml v2's scalars on PyYAML's safe parser, refusing duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # non-scalar keys are refused by the constructor; merge keys may be overridden
            key = json_key(self.construct_object(key_node))
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ManifestSyntaxError(
                    f"duplicate key {key!r} (first at line {first_line[key]}): kubectl would silently send only the "
                    "last value; write the key once", line)
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def _resolvers() -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    kept = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")  # no timestamps, no `=` value tag, no 1.1 numbers
    table: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}
    for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items():
        table[first] = [entry for entry in entries if entry[0] in kept]
    added = [
        ("tag:yaml.org,2002:bool",
         r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$",
         "yYnNtTfFoO"),
        ("tag:yaml.org,2002:int",
         r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$",
         "-+0123456789"),
        ("tag:yaml.org,2002:float",
         r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
         "-+0123456789."),
    ]
    for tag, pattern, firsts in added:  # ints before floats: the first resolver that matches wins
        for first in firsts:
            table.setdefault(first, []).append((tag, re.compile(pattern)))
    return table


# How kubectl resolves plain scalars; a YAML writer given these quotes the strings it would misread.
KUBECTL_RESOLVERS = _resolvers()
_KubectlYamlLoader.yaml_implicit_resolvers = KUBECTL_RESOLVERS
_TRUE = {"y", "yes", "true", "on"}


def _construct_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    return loader.construct_scalar(node).lower() in _TRUE


_KubectlYamlLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


def load_documents(text: str) -> list[Any]:
    """Every non-empty document in `text` as JSON values; raises ManifestSyntaxError."""
    if text.lstrip().startswith("{"):
        return [to_json(doc) for doc in _json_documents(text)]
    try:
        _refuse_deep_nesting(text)
        docs = [doc for doc in yaml.load_all(text, Loader=_KubectlYamlLoader) if doc is not None]
    except ManifestSyntaxError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(f"{exc.context or ''} {exc.problem or ''}".split())
        raise ManifestSyntaxError(f"not valid YAML: {problem}", mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise ManifestSyntaxError(f"not valid YAML: {' '.join(str(exc).split())}") from exc
    except RecursionError as exc:
        raise ManifestSyntaxError(f"nested deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:  # an integer beyond Python's digit limit, and the like
        raise ManifestSyntaxError(f"not valid YAML: {' '.join(str(exc).split())}") from exc
    return [to_json(doc, surrogates="refuse") for doc in docs]


_OPEN = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken, yaml.BlockSequenceStartToken,
         yaml.BlockMappingStartToken)
_CLOSE = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)


def _refuse_deep_nesting(text: str) -> None:
    """Refuse nesting beyond MAX_DEPTH from the token stream, before PyYAML's parser (quadratic in the flow depth,
    then recursive) spends seconds on it. Syntax errors are left to the parser, which words them better."""
    scanner = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
    depth = 0
    try:
        for token in yaml.scan(text, Loader=scanner):
            if isinstance(token, _OPEN):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ManifestSyntaxError(f"nested deeper than {MAX_DEPTH} levels", token.start_mark.line + 1)
            elif isinstance(token, _CLOSE):
                depth -= 1
    except yaml.MarkedYAMLError as exc:
        # libyaml stops at its own depth limit while looking ahead, before it hands out the tokens we count.
        if "nesting depth" in str(exc.problem):
            line = exc.problem_mark.line + 1 if exc.problem_mark else None
            raise ManifestSyntaxError(f"nested deeper than {MAX_DEPTH} levels", line) from exc
    except yaml.YAMLError:
        return


def _json_documents(text: str) -> list[Any]:
    decoder = json.JSONDecoder(object_pairs_hook=_unique_keys)
    docs, index = [], 0
    try:
        while index < len(text):
            index = _skip_space(text, index)
            if index == len(text):
                break
            doc, index = decoder.raw_decode(text, index)
            docs.append(doc)
    except ManifestSyntaxError:
        raise
    except json.JSONDecodeError as exc:
        raise ManifestSyntaxError(f"not valid JSON: {exc.msg}", exc.lineno) from exc
    except RecursionError as exc:
        raise ManifestSyntaxError(f"nested deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:
        raise ManifestSyntaxError(f"not valid JSON: {' '.join(str(exc).split())}") from exc
    return docs


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestSyntaxError(f"duplicate key {key!r}: kubectl would silently send only the last value; "
                                      "write the key once")
        out[key] = value
    return out


def json_key(key: Any) -> str:
    """A YAML map key as the JSON object key sigs.k8s.io/yaml makes of it."""
    if isinstance(key, str):
        return key
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, float) and key.is_integer() and abs(key) < _INT64:
        return str(int(key))
    return str(key)


def to_json(value: Any, surrogates: str = "replace") -> Any:
    """`value` as the JSON the API server decodes; `surrogates`: "replace" (JSON: U+FFFD) or "refuse" (YAML)."""
    budget = [MAX_VALUES]
    return _to_json(value, "", 0, budget, surrogates)


def _to_json(value: Any, path: str, depth: int, budget: list[int], surrogates: str) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise ManifestSyntaxError(f"more than {MAX_VALUES} values after expanding aliases (excessive aliasing)")
    if depth > MAX_DEPTH:
        where = path if len(path) <= 80 else path[:60] + "…"
        raise ManifestSyntaxError(f"{where or 'the document'} is nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _text(json_key(key), path, surrogates)
            if name in out:
                raise ManifestSyntaxError(f"{path or 'the document'}: keys {name!r} collide once written as JSON")
            out[name] = _to_json(item, f"{path}.{name}" if path else name, depth + 1, budget, surrogates)
        return out
    if isinstance(value, (list, tuple)):
        return [_to_json(item, f"{path}[{index}]", depth + 1, budget, surrogates) for index, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):  # !!set: go-yaml reads a mapping to nulls
        return _to_json(dict.fromkeys(value), path, depth, budget, surrogates)
    if isinstance(value, str):
        return _text(value, path, surrogates)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ManifestSyntaxError(f"{path or 'the document'}: {value} is not a JSON number (the server refuses it)")
        # JSON writes a whole float without a fraction, and the server then reads an integer.
        return int(value) if value.is_integer() and abs(value) < _INT64 else value
    if isinstance(value, bytes):  # !!binary
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (datetime.date, datetime.datetime)):  # an explicit !!timestamp
        return value.isoformat()
    return _text(str(value), path, surrogates)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(text: str, path: str, surrogates: str) -> str:
    if not _SURROGATE.search(text):
        return text
    if surrogates == "refuse":
        raise ManifestSyntaxError(f"{path or 'a key'}: a \\u escape names a lone surrogate, which is not a character "
                                  "(the API server's YAML reader refuses it)")
    return _SURROGATE.sub("\ufffd", text)
