"""Errors the store raises beyond ``ValueError`` (bad keys) and the local backend's own ``OSError``s.

Every message is one line that names the store URI (and the S3 endpoint, where there is one) and says what to check,
so a CLI or the operator can show ``str(error)`` as it is; the backend's own exception stays on ``__cause__``.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class for store failures."""


class StoreConfigError(StoreError, ValueError):
    """The store URI or its settings cannot work: unsupported scheme, no bucket name, a malformed endpoint URL.
    Also a ``ValueError``: it is bad input, found before anything is sent."""


class StoreAccessError(StoreError):
    """The store's server could not be used for ``uri``; the subclasses say why. Never retried by the store."""

    def __init__(self, uri: str, endpoint: str | None, problem: str, hint: str) -> None:
        where = f"{uri} (endpoint {endpoint})" if endpoint else uri
        super().__init__(f"{problem} for {where}: {hint}")
        self.uri = uri
        self.endpoint = endpoint
        self.problem = problem
        self.hint = hint


class StoreCredentialsError(StoreAccessError):
    """No credentials were found, or the server does not accept them (unknown access key, wrong secret)."""


class StoreAccessDeniedError(StoreAccessError):
    """The server knows the credentials but they may not do this (policy, read-only identity)."""


class BucketNotFoundError(StoreAccessError):
    """The bucket named in the store URI does not exist at the endpoint."""


class StoreUnreachableError(StoreAccessError):
    """No connection to the endpoint after the request retries: closed port, unknown host, firewall, timeout."""


class StoreUnavailableError(StoreAccessError):
    """The server kept failing (5xx, throttling, dropped connections) after every retry."""


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


class NotAnObjectError(StoreError):
    """What sits at a key in a local store is no file the store wrote: a symbolic link (which may lead anywhere, or
    to /dev/zero), a folder, a device or a pipe. Never followed or read."""

    def __init__(self, uri: str, what: str) -> None:
        super().__init__(f"{uri} is {what}, not a file kubetune wrote (a store holds only regular files)")
        self.uri = uri
