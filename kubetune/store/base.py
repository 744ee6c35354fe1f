"""The ``Store`` interface every backend implements, and the folder transfers built on it."""

from __future__ import annotations

import builtins
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kubetune.store.keys import join_key, relative_key, validate_key, validate_prefix


@dataclass(frozen=True, order=True)
class ObjectInfo:
    key: str
    size: int
    etag: str = field(default="", compare=False)  # S3's ETag (changes with the content); "" where a store has none


@dataclass(frozen=True)
class Upload:
    key: str
    path: Path


@dataclass(frozen=True)
class Download:
    key: str
    path: Path
    sha256: str | None = None


class Store(ABC):
    """Objects under one root (``s3://bucket/prefix`` or a local folder), addressed by relative POSIX keys.

    Prefixes name folders: ``list("a/b")`` covers ``a/b/...`` but not ``a/bc``; ``""`` is the root.
    Writes of a single object are atomic: readers see the previous object or the complete new one.
    """

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike[str]) -> None: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_file(self, key: str, path: str | os.PathLike[str], *, sha256: str | None = None) -> None:
        """Download ``key`` to ``path``; with ``sha256``, raise ``IntegrityError`` on mismatch and leave ``path`` as
        it was (never a partial or unverified file)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    def read_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes a chunk at a time, unverified (the caller checks the digest): serving a large file
        without holding it in memory or copying it to disk. Backends stream; this default reads it whole."""
        yield self.get_bytes(key)

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        """Every object under the folder ``prefix``, recursively, sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under the folder ``prefix`` (which must not be the root)."""

    @abstractmethod
    def uri_for(self, key: str) -> str: ...

    def put_files(self, uploads: Sequence[Upload]) -> None:
        """Upload many files; backends override this to transfer them concurrently."""
        for upload in uploads:
            self.put_file(upload.key, upload.path)

    def get_files(self, downloads: Sequence[Download]) -> None:
        """Download many files, each verified like ``get_file``; backends override this to go concurrently."""
        for download in downloads:
            self.get_file(download.key, download.path, sha256=download.sha256)

    def put_dir(self, prefix: str, local_dir: str | os.PathLike[str]) -> builtins.list[ObjectInfo]:
        """Upload every file under ``local_dir`` to ``prefix/<relative path>``; returns what was uploaded."""
        prefix = validate_prefix(prefix)
        files = local_files(Path(local_dir))
        uploads = [Upload(join_key(prefix, relative), path) for relative, path in files]
        self.put_files(uploads)
        return [ObjectInfo(upload.key, upload.path.stat().st_size) for upload in uploads]

    def get_dir(self, prefix: str, local_dir: str | os.PathLike[str]) -> builtins.list[ObjectInfo]:
        """Download every object under ``prefix`` into ``local_dir/<relative path>``; returns what was downloaded."""
        prefix = validate_prefix(prefix)
        objects = self.list(prefix)
        # Validating each relative key keeps a foreign object named like "../x" from landing outside local_dir.
        downloads = [
            Download(info.key, Path(local_dir, validate_key(relative_key(prefix, info.key)))) for info in objects
        ]
        self.get_files(downloads)
        return objects


def local_files(local_dir: Path) -> builtins.list[tuple[str, Path]]:
    """Every regular file under ``local_dir`` as (relative POSIX path, path), sorted.

    File symlinks are followed (Hugging Face caches are made of them); a symlinked folder is refused rather than
    silently skipped or followed into a loop.
    """
    if not local_dir.is_dir():
        raise NotADirectoryError(f"not a folder: {local_dir}")
    found: builtins.list[tuple[str, Path]] = []
    for folder, dirnames, filenames in os.walk(local_dir):
        for name in dirnames:
            if Path(folder, name).is_symlink():
                raise ValueError(f"refusing to follow symlinked folder {Path(folder, name)}")
        for name in filenames:
            path = Path(folder, name)
            if not path.is_file():
                raise ValueError(f"not a regular file (dangling symlink, socket or device?): {path}")
            found.append((path.relative_to(local_dir).as_posix(), path))
    return sorted(found)
