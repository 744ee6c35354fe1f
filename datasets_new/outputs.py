"""Writing build outputs atomically: each file appears complete or not at all."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubetune.datasets_new.errors import DatasetIssue, OutputError
from kubetune.datasets_new.files import file_kind, is_inside
from kubetune.datasets_new.samples import BuiltRecord

# Records per block written: about 1 MB for samples of a few hundred words, a size the allocator reuses block after
# block (one 100 MB buffer for the whole file spent more time in fresh memory than in joining and encoding).
_RECORDS_PER_BLOCK = 1024


def jsonl_blocks(records: Sequence[BuiltRecord]) -> Iterator[bytes]:
    """The JSONL text of `records`, one line per record, each ending in a newline, as UTF-8 blocks."""
    for start in range(0, len(records), _RECORDS_PER_BLOCK):
        block = records[start:start + _RECORDS_PER_BLOCK]
        lines = [record.line for record in block]
        lines.append("")  # ends the last line
        yield "\n".join(lines).encode("utf-8")


def stats_bytes(stats: Mapping[str, Any]) -> bytes:
    return (json.dumps(stats, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def check_output_paths(targets: Sequence[Path], topics_dir: Path, structure_path: Path) -> None:
    """Raise OutputError for an output that could not be written, before any time is spent on the build: a folder or
    special file in its place, a file where a parent folder must be, an output named twice, or an input (the structure
    file, anything inside the topics folder) as output."""
    seen: set[str] = set()
    real_topics = os.path.realpath(topics_dir)
    for target in targets:
        shown = target.as_posix()
        real = os.path.realpath(target)
        if real in seen:
            raise OutputError(DatasetIssue(shown, "is named for two outputs", "give each output its own file"))
        seen.add(real)
        if real == os.path.realpath(structure_path) or is_inside(target, real_topics):
            raise OutputError(DatasetIssue(shown, "is an input of the build (the structure file or inside the topics "
                                           "folder)", "write the outputs outside the dataset tree"))
        try:
            mode: int | None = os.stat(target).st_mode
        except FileNotFoundError:
            mode = None
        except OSError as error:
            raise OutputError(_cannot_write(shown, error)) from None
        if mode is not None and not stat.S_ISREG(mode):
            raise OutputError(DatasetIssue(shown, f"is {file_kind(mode)}, not a file",
                                           "pass a file path (e.g. data/train_data.jsonl)"))
        ancestor = target.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise OutputError(DatasetIssue(shown, f"cannot be created: {ancestor.as_posix()} is not a folder",
                                           "pass a path whose parent folders are folders"))


def write_files_atomically(contents: Mapping[Path, Iterable[bytes]]) -> None:
    """Write every file (given as the blocks of its bytes) to a temporary sibling first, then rename them all into
    place.

    A failure while writing leaves no output path touched: temporary files and the folders made for them are removed,
    and OutputError names the output.
    """
    staged: list[tuple[Path, Path]] = []
    made_folders: list[Path] = []
    target = Path()
    try:
        for target, blocks in contents.items():
            _make_parents(target.parent, made_folders)
            handle, temporary_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            staged.append((Path(temporary_name), target))
            os.fchmod(handle, 0o644)  # mkstemp makes files private; outputs are ordinary readable files
            with os.fdopen(handle, "wb") as stream:
                for block in blocks:
                    stream.write(block)
                stream.flush()
                os.fsync(stream.fileno())
        for temporary, target in staged:
            os.replace(temporary, target)
        made_folders.clear()  # in use now
    except OSError as error:
        raise OutputError(_cannot_write(target.as_posix(), error)) from error
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        for folder in reversed(made_folders):
            try:
                folder.rmdir()
            except OSError:
                pass  # something else was put there meanwhile


def _make_parents(folder: Path, made: list[Path]) -> None:
    """Create `folder` and its missing parents, outermost first, appending each one created to `made`."""
    missing: list[Path] = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
        made.append(path)


_WRITE_HINTS = {
    errno.ENOTDIR: "a folder on the path is a file: pick a path whose parents are folders",
    errno.ENOENT: "the folder cannot be created there: pick a path on a writable file system",
    errno.EACCES: "pick a folder the user running the build may write to",
    errno.EPERM: "pick a folder the user running the build may write to",
    errno.EROFS: "the file system is read-only: pick a writable one",
    errno.ENOSPC: "the disk is full: free some space or pick another disk",
}


def _cannot_write(shown: str, error: OSError) -> DatasetIssue:
    return DatasetIssue(shown, f"cannot write: {error.strerror or type(error).__name__}",
                        _WRITE_HINTS.get(error.errno or 0, "pick a writable path on a file system with free space"))
