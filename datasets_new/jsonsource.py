"""Strict JSON file reading with precise positions.

Files are parsed with the C `json` decoder (fast path). Only when a file has a problem do we walk its text again to
learn where each value starts, so error messages can name the line of the offending sample or field.
"""

from __future__ import annotations

import bisect
import itertools
import json
import re
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from kubetune.datasets_new.errors import DatasetIssue

JsonPath = tuple[str | int, ...]

_BOMS = {
    b"\xef\xbb\xbf": "UTF-8",
    b"\xff\xfe": "UTF-16 LE",
    b"\xfe\xff": "UTF-16 BE",
}
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()

# JSONDecodeError messages mapped to a one-line fix, most specific first.
_SYNTAX_HINTS: tuple[tuple[str, str], ...] = (
    ("Invalid control character", ("strings cannot hold raw newlines or tabs: write \\n and \\t "
                                   "(scripts/normalizeJson.py turns pasted text into a JSON string)")),
    ("Invalid \\escape", "a backslash in a JSON string must be doubled (\\\\) or start a valid escape"),
    ("Expecting property name enclosed in double quotes",
     "remove the trailing comma before '}' and quote keys with double quotes"),
    ("Expecting ',' delimiter", "a comma is missing between two items, or a string has an unescaped \" inside"),
    ("Expecting ':' delimiter", "every key needs a ':' and a value"),
    ("Unterminated string", "a string is missing its closing double quote"),
    ("Extra data", "a file holds exactly one top-level array; remove what follows its closing ']'"),
    ("Expecting value", "a value is missing here (trailing comma before ']'? single quotes instead of double?)"),
)


def syntax_hint(message: str) -> str:
    for prefix, hint in _SYNTAX_HINTS:
        if message.startswith(prefix):
            return hint
    return "fix the JSON syntax at this position"


@dataclass(frozen=True)
class JsonDocument:
    """A parsed file and its text (kept to locate values on demand)."""

    path: Path
    shown: str
    text: str
    value: Any


def read_json_document(path: Path, shown: str) -> JsonDocument | DatasetIssue:
    """Read and parse one JSON file, rejecting what our files must never contain (BOM, non-UTF-8, emptiness)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return DatasetIssue(shown, f"cannot read file: {error.strerror}", "check the file exists and is readable")
    for bom, encoding in _BOMS.items():
        if data.startswith(bom):
            return DatasetIssue(shown, f"file starts with a {encoding} byte order mark (BOM)",
                                "save the file as UTF-8 without BOM", line=1, column=1)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        return DatasetIssue(shown, f"byte 0x{data[error.start]:02x} is not valid UTF-8",
                            "the file must be UTF-8; re-save it with UTF-8 encoding", line=line, column=column)
    if not text or text.isspace():  # (strip() would copy the whole text)
        return DatasetIssue(shown, "file is empty", "a topic file with no samples yet holds an empty array: []",
                            line=1, column=1)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        message = error.msg.removesuffix(" at")  # "Invalid control character at" names no position itself
        return DatasetIssue(shown, f"invalid JSON: {message}", syntax_hint(error.msg),
                            line=error.lineno, column=error.colno)
    return JsonDocument(path, shown, text, value)


class PositionIndex:
    """Where every value of a valid JSON text starts; object members are located at their key."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._newlines = [match.start() for match in re.finditer("\n", text)]
        self._starts: dict[JsonPath, int] = {}
        self._walk(0, ())

    def line_column(self, path: JsonPath) -> tuple[int, int]:
        """Line and column (1-based) of the deepest located prefix of `path`."""
        for end in range(len(path), -1, -1):
            offset = self._starts.get(path[:end])
            if offset is not None:
                return self._offset_to_line_column(offset)
        return 1, 1

    def _offset_to_line_column(self, offset: int) -> tuple[int, int]:
        line_index = bisect.bisect_left(self._newlines, offset)
        line_start = self._newlines[line_index - 1] + 1 if line_index else 0
        return line_index + 1, offset - line_start + 1

    def _skip(self, index: int) -> int:
        match = _WHITESPACE.match(self._text, index)
        return match.end() if match else index

    def _walk(self, index: int, path: JsonPath) -> int:
        text = self._text
        index = self._skip(index)
        self._starts.setdefault(path, index)
        opener = text[index]
        if opener == "{":
            return self._walk_object(index, path)
        if opener == "[":
            return self._walk_array(index, path)
        _, end = _DECODER.raw_decode(text, index)
        return int(end)

    def _walk_object(self, index: int, path: JsonPath) -> int:
        text = self._text
        index = self._skip(index + 1)
        if text[index] == "}":
            return index + 1
        while True:
            key_start = index
            key, index = scanstring(text, index + 1)
            self._starts[path + (key,)] = key_start
            index = self._skip(index) + 1  # past ':'
            index = self._skip(self._walk(index, path + (key,)))
            if text[index] == "}":
                return index + 1
            index = self._skip(index + 1)  # past ','

    def _walk_array(self, index: int, path: JsonPath) -> int:
        text = self._text
        index = self._skip(index + 1)
        if text[index] == "]":
            return index + 1
        for position in itertools.count():
            index = self._skip(self._walk(index, path + (position,)))
            if text[index] == "]":
                return index + 1
            index += 1  # past ','
        raise AssertionError("unreachable")


def format_path(path: JsonPath) -> str:
    """`("metadata", "lang")` -> `metadata.lang`; `("tags", 2)` -> `tags[2]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
