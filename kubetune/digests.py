"""Content digests of local folders, and a cache of big files' sha256 by their stat.

A folder's digest is the sha256 of its listing: one line `"<path> <size> <sha256>\\n"` per file, relative POSIX
paths sorted (`spec.baseModel.sha256` uses this format). Jobs and source resolution share this one implementation.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from kubetune.store.base import local_files
from kubetune.store.hashing import SHA256_HEX, sha256_file

# Files smaller than this are hashed every time: a stat plus a cache entry would cost about as much.
CACHED_MIN_SIZE = 1024 * 1024


class DigestCache:
    """sha256 of local files keyed by (path, size, mtime_ns, inode), kept in a JSON file between runs.

    A file rewritten in place keeps its inode but gets a new mtime; one replaced by a rename gets a new inode. A
    same-size rewrite that also restores the old mtime (touch -d) is not noticed: that is the price of not reading
    270 MB on every run.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._entries: dict[str, list[int | str]] = {}
        self._dirty = False
        if path is not None and path.is_file():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                loaded = {}  # a damaged cache only costs rehashing
            if isinstance(loaded, dict):
                self._entries = {k: v for k, v in loaded.items() if _well_formed(v)}

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        if stat.st_size < CACHED_MIN_SIZE:
            return sha256_file(path)
        name = str(path.resolve())
        identity: list[int | str] = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        cached = self._entries.get(name)
        if cached is not None and cached[:3] == identity:
            return str(cached[3])
        digest = sha256_file(path)
        self._entries[name] = [*identity, digest]
        self._dirty = True
        return digest

    def save(self) -> None:
        """Write the cache (atomically: concurrent runs each leave a whole file, the last one wins)."""
        if self.path is None or not self._dirty:
            return
        # Entries of files gone since are dropped: the cache holds what is still on disk, not every file ever hashed.
        self._entries = {name: entry for name, entry in self._entries.items() if os.path.isfile(name)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=".digests-", dir=self.path.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(self._entries, out, sort_keys=True)
        os.replace(tmp, self.path)
        self._dirty = False


def _well_formed(entry: object) -> bool:
    """An entry as `save` writes it: size, mtime_ns and inode (ints), then a sha256 in hex. Anything else (a
    hand-edited or damaged file) is dropped, never trusted."""
    return (isinstance(entry, list) and len(entry) == 4
            and all(isinstance(n, int) and not isinstance(n, bool) for n in entry[:3])
            and isinstance(entry[3], str) and SHA256_HEX.fullmatch(entry[3]) is not None)


def listing_digest(lines: Iterable[tuple[str, int, str]]) -> str:
    """sha256 of sorted `"<path> <size> <digest>\\n"` lines."""
    listing = hashlib.sha256()
    for relative, size, digest in sorted(lines):
        listing.update(f"{relative} {size} {digest}\n".encode())
    return listing.hexdigest()


def folder_digest(folder: Path, cache: DigestCache | None = None) -> str:
    """The digest of every file under `folder` (see the module docstring)."""
    return listing_digest(file_lines(folder, local_files(folder), cache))


def file_lines(
    root: Path, files: Iterable[tuple[str, Path]], cache: DigestCache | None = None, *, confined: bool = False
) -> list[tuple[str, int, str]]:
    """(relative path, size, sha256) of each file. `confined`: a file symlink that leads out of `root` is refused
    (a source tree must hold what it names; a Hugging Face snapshot, made of links into its blob store, is not)."""
    real_root = root.resolve()
    lines = []
    for relative, path in files:
        if confined and path.is_symlink() and not path.resolve().is_relative_to(real_root):
            raise ValueError(f"{path} is a symlink to {path.resolve()}, outside {root}")
        size = path.stat().st_size
        lines.append((relative, size, cache.sha256(path) if cache is not None else sha256_file(path)))
    return lines
