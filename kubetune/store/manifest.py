"""Stage outputs are published atomically: every file first, ``manifest.json`` last.

An output exists only once its manifest does, so a job that dies mid-upload leaves nothing a reader would trust.
The manifest lists each file's size and sha256. Its serialisation is canonical (sorted keys, compact separators,
ASCII), so the sha256 of its bytes (`manifest_digest`) names one publication. What identifies the output's *content*,
and feeds the keys of later stages, is `content_digest`: the stage and its files only, without the manifest's
timestamp, input key or metadata, so identical content published twice, or in two stores, has one digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubetune.store.base import Download, Store, Upload, local_files
from kubetune.store.errors import ObjectNotFoundError, StoreError
from kubetune.store.hashing import SHA256_HEX, sha256_file
from kubetune.store.keys import join_key, validate_key, validate_prefix
from kubetune.store.local import LocalStore

MANIFEST_NAME = "manifest.json"
# Provenance beside the output (jobs/lineage.py): a time, a host, a run. Listed and verified, but not content.
LINEAGE_NAME = "lineage.json"
SCHEMA_VERSION = 1
# Far above any real manifest (a few hundred bytes a file): a bigger one is read no further than this.
MAX_MANIFEST_BYTES = 64 << 20

_FIELDS = {"schema", "stage", "inputKey", "createdAt", "files", "metadata"}
_FILE_FIELDS = {"path", "size", "sha256"}


class ManifestError(StoreError):
    """A ``manifest.json`` exists but is not a valid manifest."""


@dataclass(frozen=True)
class ManifestFile:
    path: str  # relative to the output's prefix
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    stage: str
    input_key: str
    created_at: str  # RFC 3339, UTC
    files: tuple[ManifestFile, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "stage": self.stage,
            "inputKey": self.input_key,
            "createdAt": self.created_at,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            "metadata": self.metadata,
        }

    def to_bytes(self) -> bytes:
        """The canonical ``manifest.json`` bytes: what ``publish`` stores and ``manifest_digest`` hashes."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False).encode("ascii")

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """Parse and validate; raises ``ValueError`` (or ``TypeError``) naming the first problem."""
        if not isinstance(data, dict):
            raise TypeError("a manifest must be a JSON object")
        unknown = sorted(set(data) - _FIELDS)
        missing = sorted(_FIELDS - set(data))
        if unknown or missing:
            raise ValueError(f"manifest fields: missing {missing}, unknown {unknown}")
        if type(data["schema"]) is not int or data["schema"] != SCHEMA_VERSION:
            raise ValueError(f"unsupported manifest schema {data['schema']!r} (this kubetune reads {SCHEMA_VERSION})")
        if not isinstance(data["files"], list):
            raise TypeError("manifest 'files' must be a list")
        if not isinstance(data["metadata"], dict):
            raise TypeError("manifest 'metadata' must be an object")
        files = tuple(_parse_file(entry) for entry in data["files"])
        manifest = cls(
            stage=data["stage"],
            input_key=data["inputKey"],
            created_at=data["createdAt"],
            files=files,
            metadata=data["metadata"],
        )
        manifest.validate()
        return manifest

    def validate(self) -> None:
        if not isinstance(self.stage, str) or not self.stage:
            raise ValueError(f"manifest stage must be a non-empty string, got {self.stage!r}")
        if not isinstance(self.input_key, str) or not SHA256_HEX.fullmatch(self.input_key):
            raise ValueError(f"manifest inputKey must be 64 lowercase hex characters, got {self.input_key!r}")
        _check_rfc3339(self.created_at)
        paths = [validate_key(f.path) for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("manifest lists a file path more than once")
        if MANIFEST_NAME in paths:
            raise ValueError(f"manifest cannot list its own {MANIFEST_NAME}")


def manifest_digest(manifest: Manifest) -> str:
    """sha256 of the ``manifest.json`` bytes as ``publish`` stores them: one publication (its time included)."""
    return hashlib.sha256(manifest.to_bytes()).hexdigest()


def content_digest(manifest: Manifest) -> str:
    """The output's content digest: sha256 of the stage name and the sorted ``path size sha256`` lines of its files.

    Nothing else goes in: not ``createdAt`` (the same content published again would change every later key), not the
    input key (two specs that produce identical files feed identical inputs downstream), not metadata (counts and
    summaries derived from the files, or timings), not the top-level ``lineage.json`` (who made it, when and where).
    """
    listing = hashlib.sha256(f"{manifest.stage}\n".encode())
    for entry in sorted(manifest.files, key=lambda f: f.path):
        if entry.path == LINEAGE_NAME:
            continue
        listing.update(f"{entry.path} {entry.size} {entry.sha256}\n".encode())
    return listing.hexdigest()


def publish(
    store: Store,
    prefix: str,
    local_dir: str | os.PathLike[str],
    *,
    stage: str,
    input_key: str,
    metadata: dict[str, Any] | None = None,
) -> Manifest:
    """Upload every file under ``local_dir`` to ``prefix``, then write ``manifest.json`` there, last."""
    prefix = validate_prefix(prefix)
    entries = local_files(Path(local_dir))
    if any(relative == MANIFEST_NAME for relative, _ in entries):
        raise ValueError(f"{local_dir} contains a top-level {MANIFEST_NAME}, which would clash with the manifest")
    manifest = Manifest(
        stage=stage,
        input_key=input_key,
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        files=tuple(ManifestFile(relative, path.stat().st_size, sha256_file(path)) for relative, path in entries),
        metadata=dict(metadata or {}),
    )
    manifest.validate()
    manifest_bytes = manifest.to_bytes()  # fails on non-JSON metadata before anything is uploaded
    manifest_key = join_key(prefix, MANIFEST_NAME)
    # A manifest left from an earlier attempt would vouch for files we are about to overwrite: withdraw it first.
    store.delete(manifest_key)
    store.put_files([Upload(join_key(prefix, relative), path) for relative, path in entries])
    store.put_bytes(manifest_key, manifest_bytes)
    return manifest


def read_manifest(store: Store, prefix: str) -> Manifest | None:
    """The manifest published at ``prefix``, or None when there is none (the output is absent or incomplete)."""
    key = join_key(prefix, MANIFEST_NAME)
    try:
        raw = _read_bounded(store, key)
    except ObjectNotFoundError:
        return None
    try:
        manifest = Manifest.from_json(json.loads(raw))
    except (ValueError, TypeError) as error:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        raise ManifestError(f"invalid manifest at {store.uri_for(key)}: {error}") from error
    if manifest.to_bytes() != raw:
        # The output's digest is the hash of these bytes; only the canonical form makes that unambiguous.
        raise ManifestError(f"manifest at {store.uri_for(key)} is not in canonical form (write it with publish)")
    return manifest


def fetch(store: Store, prefix: str, dest: str | os.PathLike[str], manifest: Manifest | None = None) -> Manifest:
    """Download every file the manifest at ``prefix`` lists into ``dest``, each verified against its sha256."""
    prefix = validate_prefix(prefix)
    if manifest is None:
        manifest = read_manifest(store, prefix)
        if manifest is None:
            raise ObjectNotFoundError(store.uri_for(join_key(prefix, MANIFEST_NAME)))
    store.get_files([Download(join_key(prefix, f.path), Path(dest, f.path), f.sha256) for f in manifest.files])
    return manifest


def _read_bounded(store: Store, key: str) -> bytes:
    """The manifest's bytes; a local one (which may be any file: a hand-made copy of a disk image, say) is read no
    further than MAX_MANIFEST_BYTES. A backend's own get_bytes keeps its retries of a dropped connection."""
    if not isinstance(store, LocalStore):
        return store.get_bytes(key)
    chunks, size = [], 0
    for chunk in store.read_chunks(key):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"invalid manifest at {store.uri_for(key)}: larger than {MAX_MANIFEST_BYTES} bytes")
    return b"".join(chunks)


def _parse_file(entry: Any) -> ManifestFile:
    if not isinstance(entry, dict) or set(entry) != _FILE_FIELDS:
        raise ValueError(f"each manifest file entry needs exactly {sorted(_FILE_FIELDS)}, got {entry!r}")
    path, size, sha256 = entry["path"], entry["size"], entry["sha256"]
    validate_key(path)
    if type(size) is not int or size < 0:
        raise ValueError(f"file {path!r}: size must be a non-negative integer, got {size!r}")
    if not isinstance(sha256, str) or not SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"file {path!r}: sha256 must be 64 lowercase hex characters, got {sha256!r}")
    return ManifestFile(path, size, sha256)


def _check_rfc3339(value: Any) -> None:
    if not isinstance(value, str) or "T" not in value:
        raise ValueError(f"createdAt must be an RFC 3339 timestamp, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"createdAt must be an RFC 3339 timestamp, got {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"createdAt must carry a time zone (e.g. 'Z'), got {value!r}")
