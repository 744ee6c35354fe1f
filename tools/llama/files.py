"""Reading the user's files without trusting them: only regular files are opened (a FIFO would block forever), and
a JSON file that cannot be read or parsed is one ConversionError naming the file, the line and what to do."""

from __future__ import annotations

import json
import os
import reprlib
import stat
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ConversionError


def open_regular_file(path: Path, error: type[Exception] = ConversionError) -> BinaryIO:
    """Open `path` for binary reading; raises `error` when it is a directory, a pipe or a device (without blocking
    on a FIFO) and OSError when it cannot be opened."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe, socket or device)"
            raise error(f"{path}: {kind}; expected a file")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_json(path: Path, hint: str = "") -> Any:
    """The JSON value in `path`. Unreadable, not UTF-8, not JSON, or nested too deeply: a ConversionError."""
    suffix = f"; {hint}" if hint else ""
    try:
        with open_regular_file(path) as handle:
            text = handle.read().decode("utf-8")
        return json.loads(text)
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read: {exc.strerror or exc}{suffix}") from None
    except UnicodeDecodeError as exc:
        raise ConversionError(f"{path}: not UTF-8 text (byte {exc.start}){suffix}") from None
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}{suffix}") from None
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        raise ConversionError(f"{path}: not usable JSON: {exc}{suffix}") from None
    except RecursionError:
        raise ConversionError(f"{path}: JSON nested too deeply{suffix}") from None


def read_json_object(path: Path, hint: str = "") -> dict[str, Any]:
    value = read_json(path, hint)
    if not isinstance(value, dict):
        raise ConversionError(f"{path}: expected a JSON object, found {type(value).__name__}"
                              + (f"; {hint}" if hint else ""))
    return value


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 4, 4, 60, 60


def short_repr(value: Any, limit: int = 60) -> str:
    """A value quoted in an error message, cut so that a hostile value (long, or nested a thousand deep) cannot flood
    the terminal or exhaust the recursion limit."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
