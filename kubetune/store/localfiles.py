"""Local files shared by both stores and the state folder: atomic writes (a reader of ``path`` sees the old file or
the whole new one) and reads of regular files only (never through a symlink, never blocked on a pipe)."""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from kubetune.store.keys import TEMP_MARKER


def temp_path_beside(path: Path) -> Path:
    # Same directory as the target, so the final rename never crosses a filesystem boundary.
    return path.with_name(f"{TEMP_MARKER}{secrets.token_hex(6)}-{path.name}")


@contextmanager
def atomic_destination(path: Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces ``path``, on any error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_beside(path)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


class NotRegularFileError(OSError):
    """What is at a path is no regular file; `what` says what it is ("a symbolic link", "a folder", ...)."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(f"{path}: {what}")
        self.what = what


def kind_of(mode: int) -> str:
    """What a non-regular file is, as the refusals name it."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a pipe, socket or device"


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file, its last component no symbolic link (which may lead to
    /dev/zero or out of a folder) and no pipe (whose read never ends): NotRegularFileError otherwise,
    FileNotFoundError when nothing is there."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise NotRegularFileError(path, "a symbolic link") from None
        raise
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)  # before fdopen, which refuses a folder with an error naming the descriptor, not the file
        raise NotRegularFileError(path, kind_of(mode))
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")
