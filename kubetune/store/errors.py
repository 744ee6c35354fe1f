"""Errors the store raises beyond ``ValueError`` (bad keys/URIs) and the backends' own I/O errors."""

from __future__ import annotations


class StoreError(Exception):
    """Base class for store failures."""


class ObjectNotFoundError(StoreError, FileNotFoundError):
    """The key does not exist in the store (also catchable as ``FileNotFoundError``)."""

    def __init__(self, uri: str) -> None:
        super().__init__(f"no object at {uri}")
        self.uri = uri


class IntegrityError(StoreError):
    """Downloaded content does not match the expected sha256; nothing was written at the destination."""

    def __init__(self, uri: str, expected: str, actual: str) -> None:
        super().__init__(f"sha256 mismatch for {uri}: expected {expected}, got {actual}")
        self.uri = uri
        self.expected = expected
        self.actual = actual
