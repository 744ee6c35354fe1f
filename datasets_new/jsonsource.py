"""Strict JSON file reading with precise positions.

Files are parsed with the C `json` decoder (fast path). Only when a file has a problem do we walk its text again to
learn where each value starts, so error messages can name the line of the offending sample or field.
"""

from __future__ import annotations

import bisect
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from kubetune.datasets_new.errors import DatasetIssue
from kubetune.datasets_new.files import read_regular_file

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
    """Read and parse one JSON file, rejecting what our files must never contain (BOM, non-UTF-8, emptiness, lone
    surrogates, nesting or integers beyond what the parser handles) and anything that is not a regular file."""
    data = read_regular_file(path, shown)
    if isinstance(data, DatasetIssue):
        return data
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
    except RecursionError:
        line, column = _line_column(text, _first_token(text, _deeper_than(_REPORTED_DEPTH)))
        return DatasetIssue(shown, f"values nest more than {_REPORTED_DEPTH} levels deep",
                            "dataset files nest a few levels at most (a topic file is one array of flat sample "
                            "objects); remove the nested brackets",
                            line=line, column=column)
    except ValueError:  # the only other error json.loads raises: an integer beyond the int conversion limit
        line, column = _line_column(text, _first_token(text, _long_integer))
        return DatasetIssue(shown, f"an integer has more than {sys.get_int_max_str_digits()} digits",
                            "write a short number (difficulty is 1-6) or put long digit strings in quotes",
                            line=line, column=column)
    # A lone surrogate can only come from a \uD800-\uDFFF escape: text decoded from UTF-8 holds none. (The regex
    # scan costs ~2% of a build; two `in` searches cost 10%.)
    if "\\" in text and _SURROGATE_ESCAPE.search(text):
        found = _lone_surrogate(value)
        if found is not None:
            location, where = found
            line, column = PositionIndex(text).line_column(location)
            return DatasetIssue(shown, f"{where} holds a lone UTF-16 surrogate escape (\\uD800-\\uDFFF), which is "
                                "not a character", "write the character itself, or both halves of a surrogate pair",
                                line=line, column=column)
    return JsonDocument(path, shown, text, value)


# Nesting deeper than this is reported at the bracket that passes it when the parser gives up (its own limit depends
# on the interpreter's recursion limit and stack).
_REPORTED_DEPTH = 500
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?', re.ASCII)
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _deeper_than(limit: int) -> Callable[[str], bool]:
    depth = 0

    def passes(token: str) -> bool:
        nonlocal depth
        if token in ("[", "{"):
            depth += 1
        elif token in ("]", "}"):
            depth -= 1
        return depth > limit

    return passes


def _long_integer(token: str) -> bool:
    digits = token.removeprefix("-")
    return digits.isdigit() and len(digits) > sys.get_int_max_str_digits()


def _first_token(text: str, wanted: Callable[[str], bool]) -> int:
    """Offset of the first JSON token (string, bracket or number) for which `wanted` is true; 0 if none is."""
    return next((match.start() for match in _TOKEN.finditer(text) if wanted(match.group())), 0)


def _line_column(text: str, offset: int) -> tuple[int, int]:
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def _lone_surrogate(value: Any) -> tuple[JsonPath, str] | None:
    """The first string or key holding a lone surrogate: where to point at, and what to call it."""
    pending: list[tuple[JsonPath, Any]] = [((), value)]
    while pending:
        path, item = pending.pop()
        kind = type(item)
        if kind is str:
            if _SURROGATE.search(item):
                return path, format_path(path) or "the text"
        elif kind is list:
            pending.extend((path + (index,), child) for index, child in reversed(list(enumerate(item))))
        elif kind is dict:
            for key, child in reversed(list(item.items())):
                if _SURROGATE.search(key):
                    return path + (key,), f"a key of {format_path(path) or 'the top-level object'}"
                pending.append((path + (key,), child))
    return None


class PositionIndex:
    """Where every value of a valid JSON text starts; object members are located at their key.

    The text is walked with an explicit stack, not recursion: a hostile file may nest as deep as the parser allows.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._newlines = [match.start() for match in re.finditer("\n", text)]
        self._starts: dict[JsonPath, int] = {}
        self._walk()

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

    def _walk(self) -> None:
        text, starts = self._text, self._starts
        # Open containers: (their path, their closing bracket, how many items an array has had).
        open_containers: list[tuple[JsonPath, str, int]] = []
        index = self._skip(0)
        path: JsonPath = ()
        while True:
            starts.setdefault(path, index)
            opener = text[index]
            ended = True
            if opener in "{[":
                closer = "}" if opener == "{" else "]"
                index = self._skip(index + 1)
                if text[index] != closer:
                    open_containers.append((path, closer, 0))
                    if closer == "}":
                        index, path = self._past_key(index, path)
                    else:
                        path = path + (0,)
                    ended = False
                else:
                    index += 1
            else:
                _, index = _DECODER.raw_decode(text, index)
            while ended and open_containers:
                index = self._skip(index)
                parent, closer, count = open_containers[-1]
                if text[index] == closer:
                    open_containers.pop()
                    index += 1
                    continue
                index = self._skip(index + 1)  # past ','
                if closer == "]":
                    open_containers[-1] = (parent, closer, count + 1)
                    path = parent + (count + 1,)
                else:
                    index, path = self._past_key(index, parent)
                ended = False
            if ended:
                return

    def _past_key(self, index: int, parent: JsonPath) -> tuple[int, JsonPath]:
        """Record the member whose key starts at `index` (located at its key); return where its value starts, and its
        path."""
        key, end = scanstring(self._text, index + 1)
        path = parent + (key,)
        self._starts[path] = index
        return self._skip(self._skip(end) + 1), path  # past ':'


def format_path(path: JsonPath) -> str:
    """`("metadata", "lang")` -> `metadata.lang`; `("tags", 2)` -> `tags[2]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
