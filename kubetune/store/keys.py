"""Store keys: relative POSIX paths under a store's root, validated in one place.

Every store (S3 or local) accepts exactly the same keys, so an output written locally can be published to S3
unchanged and a key can never escape its root (no ``..``, no absolute paths, no backslashes that Windows tools or
some S3 gateways would treat as separators).
"""

from __future__ import annotations

# S3's limit on a key's UTF-8 length; enforcing it everywhere keeps local and S3 stores interchangeable.
MAX_KEY_BYTES = 1024

# Names the local store uses for in-flight writes; reserved so that no key can collide with a temp file.
TEMP_MARKER = ".kubetune-tmp-"


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid object key, else raise ``ValueError`` saying why."""
    if not isinstance(key, str):
        raise TypeError(f"store key must be a str, got {type(key).__name__}")
    if key == "":
        raise ValueError("store key must not be empty")
    problem = _key_problem(key)
    if problem:
        raise ValueError(f"invalid store key {key!r}: {problem}")
    return key


def validate_prefix(prefix: str) -> str:
    """Return a normalised prefix: ``""`` (the store root) or a valid key, without a trailing ``/``.

    A prefix names a folder: ``list("a/b")`` covers ``a/b/...`` but not ``a/bc``.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"store prefix must be a str, got {type(prefix).__name__}")
    trimmed = prefix.removesuffix("/")
    if trimmed == "":
        if prefix:
            raise ValueError("invalid store prefix '/': prefixes are relative; use '' for the store root")
        return ""
    problem = _key_problem(trimmed)
    if problem:
        raise ValueError(f"invalid store prefix {prefix!r}: {problem}")
    return trimmed


def join_key(prefix: str, relative: str) -> str:
    """The key of ``relative`` inside folder ``prefix`` (either may be a multi-segment path)."""
    prefix = validate_prefix(prefix)
    validate_key(relative)
    return validate_key(f"{prefix}/{relative}" if prefix else relative)


def relative_key(prefix: str, key: str) -> str:
    """``key`` with the folder ``prefix`` removed; ``key`` must lie inside ``prefix``."""
    prefix = validate_prefix(prefix)
    if not prefix:
        return key
    head = prefix + "/"
    if not key.startswith(head):
        raise ValueError(f"key {key!r} is not inside prefix {prefix!r}")
    return key[len(head) :]


def _key_problem(key: str) -> str | None:
    if key.startswith("/"):
        return "must be relative (no leading '/')"
    if "\\" in key:
        return "must use '/' as separator (backslash found)"
    for char in key:
        if char == "\x00":
            return "contains a NUL character"
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return f"contains control character {char!r}"
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} bytes"
    for segment in key.split("/"):
        if segment == "":
            return "contains an empty path segment ('//' or a trailing '/')"
        if segment in (".", ".."):
            return f"contains a {segment!r} segment"
        if segment.startswith(TEMP_MARKER):
            return f"segments starting with {TEMP_MARKER!r} are reserved for in-flight writes"
    return None
