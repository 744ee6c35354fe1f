"""The records of a data file, one at a time, each with where it is: JSONL by line, a JSON array by the line each
element starts on, parquet by row, read one row group at a time. Files and records are bounded, so a huge or hostile
file fails with a message instead of filling memory."""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.datasets_new.errors import DatasetIssue

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
MAX_RECORD_BYTES = 16 << 20  # one JSONL line, one JSON array element
MAX_JSON_FILE_BYTES = 256 << 20  # a JSON array is parsed whole; bigger data belongs in JSONL or parquet
_PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class Row:
    """One record and where it is: `line` (JSONL, JSON) or `row` (parquet, 1-based)."""

    shown: str
    value: Any
    line: int | None = None
    row: int | None = None

    def issue(self, message: str, hint: str, field: str | None = None) -> DatasetIssue:
        where = f"row {self.row}" + (f", column {field}" if field else "") + ": " if self.row is not None else ""
        return DatasetIssue(self.shown, where + message, hint, line=self.line, field=field)


class RowsError(Exception):
    """A file that cannot be read as records at all (the issue says where reading stopped)."""

    def __init__(self, issue: DatasetIssue) -> None:
        super().__init__(issue.format())
        self.issue = issue


def is_data_file(name: str) -> bool:
    return name.endswith(DATA_SUFFIXES) and not name.rsplit("/", 1)[-1].startswith(".")


def read_rows(path: Path, shown: str) -> Iterator[Row]:
    """Every record of `path` (by its suffix), in file order; raises RowsError where the file stops being readable."""
    if path.suffix == ".jsonl":
        yield from _jsonl_rows(path, shown)
    elif path.suffix == ".json":
        yield from _json_array_rows(path, shown)
    elif path.suffix == ".parquet":
        yield from _parquet_rows(path, shown)
    else:
        raise RowsError(DatasetIssue(shown, f"unknown data file type {path.suffix or '(none)'!r}",
                                     "name data files *.jsonl, *.json (an array of records) or *.parquet"))


def _jsonl_rows(path: Path, shown: str) -> Iterator[Row]:
    with path.open("rb") as handle:
        number = 0
        while True:
            raw = handle.readline(MAX_RECORD_BYTES + 1)
            if not raw:
                return
            number += 1
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raise RowsError(_bom(shown))
            if len(raw) > MAX_RECORD_BYTES and not raw.endswith(b"\n"):
                raise RowsError(DatasetIssue(shown, f"line longer than {MAX_RECORD_BYTES >> 20} MiB",
                                             "one record per line; split huge samples", line=number))
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                raise RowsError(DatasetIssue(shown, f"not UTF-8 text ({error.reason} at byte {error.start})",
                                             "save the file as UTF-8", line=number)) from None
            except json.JSONDecodeError as error:
                yield Row(shown, _Unparsed(f"not JSON: {error.msg}", error.colno), line=number)
                continue
            except (RecursionError, ValueError) as error:  # nesting past the parser's depth, a too long integer
                yield Row(shown, _Unparsed(_unreadable(error), 1), line=number)
                continue
            yield Row(shown, value, line=number)


@dataclass(frozen=True)
class _Unparsed:
    """A JSONL line that is not JSON: reported with the other records' problems rather than stopping the read."""

    message: str
    column: int


def unparsed(row: Row) -> DatasetIssue | None:
    if isinstance(row.value, _Unparsed):
        return DatasetIssue(row.shown, row.value.message, "each line must be one JSON object (JSON Lines)",
                            line=row.line, column=row.value.column)
    return None


def _json_array_rows(path: Path, shown: str) -> Iterator[Row]:
    size = path.stat().st_size
    if size > MAX_JSON_FILE_BYTES:
        raise RowsError(DatasetIssue(shown, f"{size} bytes: a .json array over {MAX_JSON_FILE_BYTES >> 20} MiB",
                                     "convert it to JSON Lines (.jsonl) or parquet, which are read record by record"))
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise RowsError(DatasetIssue(shown, f"not UTF-8 text ({error.reason} at byte {error.start})",
                                     "save the file as UTF-8")) from None
    if text.startswith("\ufeff"):
        raise RowsError(_bom(shown))
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if not text.startswith("[", position):
        raise RowsError(DatasetIssue(shown, "not a JSON array", "a .json data file holds [ {record}, ... ]; "
                                     "one record per line is .jsonl", line=_line_of(text, position)))
    position = _skip_space(text, position + 1)
    if text.startswith("]", position):
        return
    while True:
        line = _line_of(text, position)
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise RowsError(DatasetIssue(shown, f"not JSON: {error.msg}", "fix the JSON syntax there",
                                         line=error.lineno, column=error.colno)) from None
        except (RecursionError, ValueError) as error:
            raise RowsError(DatasetIssue(shown, _unreadable(error), "records nest a few levels at most and numbers "
                                         "are short", line=line)) from None
        if end - position > MAX_RECORD_BYTES:
            raise RowsError(DatasetIssue(shown, f"a record longer than {MAX_RECORD_BYTES >> 20} MiB",
                                         "split huge samples", line=line))
        yield Row(shown, value, line=line)
        position = _skip_space(text, end)
        if text.startswith(",", position):
            position = _skip_space(text, position + 1)
        elif text.startswith("]", position) and not text[_skip_space(text, position + 1):]:
            return
        else:
            raise RowsError(DatasetIssue(shown, "expected ',' or the closing ']' of the array",
                                         "fix the JSON syntax there", line=_line_of(text, position)))


def _bom(shown: str) -> DatasetIssue:
    # As the tree builder says it: json's own "Unexpected UTF-8 BOM (decode using utf-8-sig)" speaks Python.
    return DatasetIssue(shown, "file starts with a UTF-8 byte order mark (BOM)", "save the file as UTF-8 without BOM",
                        line=1, column=1)


def _unreadable(error: RecursionError | ValueError) -> str:
    if isinstance(error, RecursionError):
        return "values nest deeper than the JSON parser reads"
    return f"an integer has more than {sys.get_int_max_str_digits()} digits"


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _parquet_rows(path: Path, shown: str) -> Iterator[Row]:
    import pyarrow as pa  # imported here: only parquet datasets need it
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        number = 0
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for value in batch.to_pylist():
                number += 1
                yield Row(shown, value, row=number)
    except (pa.ArrowException, OSError) as error:
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise RowsError(DatasetIssue(shown, f"cannot read as parquet: {first_line}",
                                     "write it with pyarrow, pandas or datasets (to_parquet)")) from None
