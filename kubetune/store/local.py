"""A store in a local folder (``file:///abs/dir``): the default for local runs and unit tests."""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from kubetune.store.base import ObjectInfo, Store
from kubetune.store.errors import IntegrityError, NotAnObjectError, ObjectNotFoundError, StoreConfigError
from kubetune.store.hashing import CHUNK_SIZE
from kubetune.store.keys import TEMP_MARKER, validate_key, validate_prefix
from kubetune.store.localfiles import NotRegularFileError, atomic_destination, open_regular


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        root_path = Path(root)
        if not root_path.is_absolute():
            raise ValueError(f"local store root must be an absolute path, got {str(root)!r}")
        self.root = root_path
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as error:  # a file in the way: the URI's fault, not the disk's
            raise StoreConfigError(f"local store root {root_path} is not a folder ({error.strerror} at "
                                   f"{error.filename}): name a folder") from None

    def __repr__(self) -> str:
        return f"LocalStore({self.root.as_uri()})"

    def check_writable(self) -> None:
        """Refuse, as a configuration mistake, a root nothing can be written under (a read-only mount, a folder of
        another user, /proc): found before a run starts instead of by each stage's first write, retried."""
        try:
            os.rmdir(tempfile.mkdtemp(prefix=f"{TEMP_MARKER}probe-", dir=self.root))
        except OSError as error:
            raise StoreConfigError(f"local store root {self.root} cannot be written ({error.strerror or error}): "
                                   "name a folder you can write") from None

    def put_file(self, key: str, path: str | os.PathLike[str]) -> None:
        with Path(path).open("rb") as source:
            self._write(key, source)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write(key, io.BytesIO(data))

    def get_file(self, key: str, path: str | os.PathLike[str], *, sha256: str | None = None) -> None:
        digest = hashlib.sha256()
        with atomic_destination(Path(path)) as temp:
            with self._open(key) as source, temp.open("wb") as target:
                _copy(source, target, digest)
            if sha256 is not None and digest.hexdigest() != sha256.lower():
                raise IntegrityError(self.uri_for(key), sha256, digest.hexdigest())

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as source:
            return source.read()

    def read_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self._open(key) as source:
            while chunk := source.read(chunk_size):
                yield chunk

    def exists(self, key: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self._path(key)).st_mode) and self._confined(self._path(key))
        except OSError:
            return False

    def regular_file(self, key: str) -> Path:
        """The path of the object at ``key`` for a reader that needs a path (llama.cpp): a regular file inside the
        root, reached through no symbolic link (``ObjectNotFoundError``, ``NotAnObjectError``)."""
        with self._open(key):
            return self._path(key)

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        prefix = validate_prefix(prefix)
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        found = []
        for folder, _, filenames in os.walk(base):
            for name in filenames:
                if name.startswith(TEMP_MARKER):
                    continue  # an in-flight (or crashed) write, not an object
                path = Path(folder, name)
                info = path.lstat()
                if stat.S_ISREG(info.st_mode):  # a symlink, pipe or device is nothing the store wrote
                    found.append(ObjectInfo(path.relative_to(self.root).as_posix(), info.st_size))
        return sorted(found)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._prune_empty_folders(path.parent)

    def delete_prefix(self, prefix: str) -> None:
        prefix = validate_prefix(prefix)
        if not prefix:
            raise ValueError("refusing to delete the whole store: delete_prefix needs a non-empty prefix")
        folder = self.root / prefix
        if folder.is_dir():
            shutil.rmtree(folder)
        self._prune_empty_folders(folder.parent)

    def uri_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _open(self, key: str) -> BinaryIO:
        """The object's file, opened for reading. Only a regular file the store could have written is read: a
        symlink (to a file out of the store, to /dev/zero), a folder in a symlinked path, a pipe (a read that never
        ends) or a device is refused, never followed."""
        path = self._path(key)
        try:
            handle = open_regular(path)
        except FileNotFoundError:
            raise ObjectNotFoundError(self.uri_for(key)) from None
        except NotRegularFileError as error:
            raise NotAnObjectError(self.uri_for(key), error.what) from None
        except NotADirectoryError:  # a file where a folder of the key should be
            raise ObjectNotFoundError(self.uri_for(key)) from None
        if not self._confined(path):
            handle.close()
            raise NotAnObjectError(self.uri_for(key), "reached through a symbolically linked folder")
        return handle

    def _confined(self, path: Path) -> bool:
        """Whether no symlink between the root and `path` leads elsewhere (the root itself may be one)."""
        real_root = os.path.realpath(self.root)
        return os.path.realpath(path) == os.path.join(real_root, path.relative_to(self.root))

    def _write(self, key: str, source: BinaryIO) -> None:
        target = self._path(key)
        with atomic_destination(target) as temp, temp.open("wb") as handle:
            _copy(source, handle)
            handle.flush()
            os.fsync(handle.fileno())

    def _prune_empty_folders(self, folder: Path) -> None:
        # Folders only exist to hold keys; drop the ones a delete left empty, never the root.
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or already gone concurrently)
            folder = folder.parent


def _copy(source: BinaryIO, target: BinaryIO, digest: hashlib._Hash | None = None) -> None:
    while chunk := source.read(CHUNK_SIZE):
        target.write(chunk)
        if digest is not None:
            digest.update(chunk)
