"""Reading input files safely: regular files only, bounded in size, never blocking, never followed out of the tree.

A topics tree is user data: a "file" may be a named pipe (opening it for reading would wait forever for a writer),
a device, a socket, a folder, a symlink to anywhere, or far larger than any dataset file. Each is refused with an
issue naming it instead of being read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from kubetune.datasets_new.errors import DatasetIssue

# A topic or structure file larger than this is refused before it is read (the bundled files are a few hundred KB;
# a build holds every file's text and parsed samples in memory at once).
MAX_FILE_BYTES = 256 * 1024 * 1024

_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "not a regular file")


def read_regular_file(path: Path, shown: str) -> bytes | DatasetIssue:
    """The bytes of a regular file, or an issue saying why it cannot be read.

    The file is opened non-blocking (a FIFO opens at once instead of waiting for a writer) and its type is checked on
    the open descriptor, so a file swapped for something else after a directory scan is still caught.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        return unreadable(shown, error)
    except ValueError:  # a NUL character in the path
        return DatasetIssue(shown, "cannot read file: the path holds a NUL character", "pass a real file path")
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            return DatasetIssue(shown, f"is {file_kind(info.st_mode)}, not a regular file",
                                "a dataset file must be a plain JSON file; special files are never read")
        if info.st_size > MAX_FILE_BYTES:
            return _too_large(shown)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(descriptor, max(info.st_size + 1 - size, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE_BYTES:  # the file grew after fstat, or reports a size of 0 (/proc)
                return _too_large(shown)
        return b"".join(chunks)
    except OSError as error:
        return unreadable(shown, error)
    finally:
        os.close(descriptor)


def unreadable(shown: str, error: OSError) -> DatasetIssue:
    hints = {
        errno.ENOENT: "check the path; a symlink must point to an existing file",
        errno.ELOOP: "the path is a symlink loop; point the link at a real file",
        errno.EACCES: "make the file readable by the user running the build",
        errno.EPERM: "make the file readable by the user running the build",
        errno.ENOTDIR: "a folder on the path is a file",
        errno.ENAMETOOLONG: "shorten the path",
    }
    reason = error.strerror or type(error).__name__
    return DatasetIssue(shown, f"cannot read file: {reason}",
                        hints.get(error.errno or 0, "check the file exists and is readable"))


def _too_large(shown: str) -> DatasetIssue:
    return DatasetIssue(shown, f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB",
                        "split the samples over more subcategories; a topic file holds one subcategory's samples")


def is_inside(path: Path, root_real: str) -> bool:
    """Whether `path`, with every symlink resolved, lies in the folder whose resolved path is `root_real`."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return False
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)
