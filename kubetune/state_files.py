"""The files `kubetune run` keeps in a run's state folder (`.kubetune/runs/<namespace>/<name>/`), read and written so
that a damaged folder (a symlink put in place of a file, a folder where a file belongs, a file cut short or grown
huge) is one line naming the file, never a read of something elsewhere, a write through a link, or a hang.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kubetune.store.localfiles import NotRegularFileError, atomic_destination, kind_of, open_regular

# A status is a few kilobytes; anything past this is not one kubetune wrote, and is not read into memory.
MAX_STATE_BYTES = 16 << 20
# What `kubetune run` writes in a run's state folder: found as anything but a regular file, it is refused.
RUN_FILES = ("status.json", "events.jsonl", "stage-server.log")
RUN_FILE_SUFFIXES = (".log", ".run.json")


class StateFileError(OSError):
    """A state file that cannot be what kubetune wrote; the message names it and says what to do. An OSError (the
    file, not its content, is wrong): the CLI prints the message as it is."""


def read_state_json(path: Path, root: Path) -> Any:
    """The JSON in `path`, a status (read as read_state_bytes reads it); StateFileError naming the file when it is no
    JSON."""
    raw = read_state_bytes(path, root)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:  # ValueError covers UnicodeDecodeError
        reason = "empty" if not raw.strip() else f"not JSON ({type(error).__name__})"
        raise StateFileError(f"{path}: {reason}, not a status kubetune run wrote; run `kubetune run` again to "
                             "rewrite it") from None


def read_state_bytes(path: Path, root: Path) -> bytes:
    """The bytes of `path`, a file under the state folder `root`: only a regular file reached through no symlink that
    leads out of `root` (which may itself be a link), at most MAX_STATE_BYTES. FileNotFoundError when there is none;
    StateFileError naming the file for anything else."""
    _check_inside(path, root)
    try:
        handle = open_regular(path)
    except NotRegularFileError as error:
        raise StateFileError(f"{path}: {error.what}, not a file kubetune run wrote: remove it") from None
    except FileNotFoundError:
        raise
    except OSError as error:
        raise StateFileError(f"{path}: cannot be read ({error.strerror}), not a file kubetune run wrote: "
                             "remove it") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_STATE_BYTES:
            raise StateFileError(f"{path}: {size} bytes, far more than kubetune run writes, not a file kubetune run "
                                 "wrote: remove it")
        return handle.read(MAX_STATE_BYTES + 1)


def _check_inside(path: Path, root: Path) -> None:
    """`path` must not lead out of the state folder `root` through a symlink (`root` itself may be one)."""
    real = os.path.realpath(path)
    if not Path(real).is_relative_to(os.path.realpath(root)):
        raise StateFileError(f"{path}: leads to {real}, outside {root} (a symbolic link?): remove it")


def check_run_folder(folder: Path, root: Path) -> None:
    """Before `kubetune run` writes anything in a run's folder under the state folder `root`: the folder must not lead
    out of `root` (a symlinked folder: `kubetune status` and the view would refuse what it wrote), and each of its
    files that exists must be a regular file (it replaces or appends to them, and must neither write through a link
    nor remove a folder it did not make)."""
    _check_inside(folder, root)
    if not os.path.isdir(folder):
        return  # made afresh (or, a file in the way, refused by the mkdir that follows)
    for entry in os.scandir(folder):
        if entry.name in RUN_FILES or entry.name.endswith(RUN_FILE_SUFFIXES):
            mode = entry.stat(follow_symlinks=False).st_mode
            if not stat.S_ISREG(mode):
                raise StateFileError(f"{Path(folder, entry.name)}: {kind_of(mode)} where kubetune run keeps its own "
                                     "file: remove it")


def write_state_file(path: Path, text: str) -> None:
    """Replace `path` whole (a reader, or a stop mid-write, never sees half a file)."""
    with atomic_destination(path) as temp:
        temp.write_text(text, encoding="utf-8")


def append_lines(path: Path, lines: Iterable[str]) -> None:
    """Append lines to a JSON-lines file, never through a symlink; a last line cut short (a stop mid-write) is ended
    first, so the next record is not glued to it."""
    descriptor = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    with os.fdopen(descriptor, "a", encoding="utf-8") as out:
        size = os.fstat(descriptor).st_size
        if size and os.pread(descriptor, 1, size - 1) != b"\n":
            out.write("\n")
        out.writelines(lines)
