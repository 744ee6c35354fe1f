"""Whether a published output still holds what its manifest lists, before anything reuses it.

A stage output is trusted by its manifest, but the files under it live on: a disk cleaner, an interrupted rsync, a
hand edit or a deleted file leave a manifest that vouches for bytes that are gone. Every file the manifest lists must
be there with its size; in a local store also with its sha256 (big files by a digest cache keyed on their stat, so a
second run of a finished manifest stays a matter of seconds). An S3 store is checked by size from one listing: its
ETags are no sha256, and reading every object back would cost the transfer again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kubetune.store.base import Store
from kubetune.store.errors import NotAnObjectError, ObjectNotFoundError
from kubetune.store.keys import join_key
from kubetune.store.local import LocalStore
from kubetune.store.manifest import Manifest


def output_problem(store: Store, prefix: str, manifest: Manifest,
                   sha256_of: Callable[[Path], str] | None = None, *, sizes_only: bool = False) -> str | None:
    """What is wrong with the output at `prefix` (one line naming the file), or None when every listed file is whole.
    `sizes_only`: every store is checked as S3 is, from one listing (a page drawn again every few seconds)."""
    if isinstance(store, LocalStore) and not sizes_only:
        return _local_problem(store, prefix, manifest, sha256_of)
    sizes = {info.key: info.size for info in store.list(prefix)}
    for entry in manifest.files:
        key = join_key(prefix, entry.path)
        if key not in sizes:
            return f"{store.uri_for(key)}: missing, though its manifest lists it"
        if sizes[key] != entry.size:
            return f"{store.uri_for(key)}: {sizes[key]} bytes where its manifest says {entry.size}"
    return None


def _local_problem(store: LocalStore, prefix: str, manifest: Manifest,
                   sha256_of: Callable[[Path], str] | None) -> str | None:
    from kubetune.store.hashing import sha256_file

    digest = sha256_of or sha256_file
    for entry in manifest.files:
        key = join_key(prefix, entry.path)
        try:
            path = store.regular_file(key)
        except ObjectNotFoundError:
            return f"{store.uri_for(key)}: missing, though its manifest lists it"
        except NotAnObjectError as error:
            return str(error)
        size = path.stat().st_size
        if size != entry.size:
            return f"{store.uri_for(key)}: {size} bytes where its manifest says {entry.size}"
        if digest(path) != entry.sha256:
            return f"{store.uri_for(key)}: its bytes changed since they were published (sha256 differs from its manifest)"
    return None
