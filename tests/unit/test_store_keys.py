"""Store keys are relative POSIX paths, validated identically for every backend (docs/contracts.md, Store layout)."""

from __future__ import annotations

import pytest

from kubetune.store import join_key, validate_key, validate_prefix
from kubetune.store.keys import MAX_KEY_BYTES, relative_key

VALID_KEYS = [
    "manifest.json",
    "default/demo/train/0123456789abcdef/adapter/adapter_model.safetensors",
    "default/demo/train/0123456789abcdef/checkpoints/checkpoint-00000050/optimizer.pt",
    ".hidden",
    "a..b/c...d",
    "...",
    "with space/ünïcode-名前.txt",
    "x" * MAX_KEY_BYTES,
]

INVALID_KEYS = [
    ("", "must not be empty"),
    ("/etc/passwd", "relative"),
    ("..", "'..' segment"),
    ("a/../b", "'..' segment"),
    ("../escape", "'..' segment"),
    (".", "'.' segment"),
    ("./a", "'.' segment"),
    ("a//b", "empty path segment"),
    ("a/", "empty path segment"),
    ("a\\b", "backslash"),
    ("a\x00b", "NUL"),
    ("line\nbreak", "control character"),
    ("tab\there", "control character"),
    ("del\x7f", "control character"),
    ("x" * (MAX_KEY_BYTES + 1), "longer than"),
    ("é" * (MAX_KEY_BYTES // 2 + 1), "longer than"),  # the limit counts UTF-8 bytes, not characters
    (".kubetune-tmp-abc123-model.bin", "reserved"),
    ("out/.kubetune-tmp-1/x", "reserved"),
]


@pytest.mark.parametrize("key", VALID_KEYS)
def test_valid_keys_are_returned_unchanged(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(("key", "reason"), INVALID_KEYS)
def test_invalid_keys_are_rejected_with_the_reason(key: str, reason: str) -> None:
    with pytest.raises(ValueError, match="store key") as raised:
        validate_key(key)
    assert reason in str(raised.value)


def test_a_key_that_is_not_a_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        validate_key(b"bytes/key")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prefix", "normalised"),
    [
        ("", ""),
        ("runs", "runs"),
        ("runs/", "runs"),
        ("default/demo/train/0123456789abcdef", "default/demo/train/0123456789abcdef"),
        ("default/demo/", "default/demo"),
    ],
)
def test_prefixes_name_folders_and_lose_one_trailing_slash(prefix: str, normalised: str) -> None:
    assert validate_prefix(prefix) == normalised


@pytest.mark.parametrize("prefix", ["/", "/runs", "runs//", "a//b", "a/../b", "..", "a\\b", "a\x01"])
def test_invalid_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="store prefix"):
        validate_prefix(prefix)


@pytest.mark.parametrize(
    ("prefix", "relative", "key"),
    [
        ("", "manifest.json", "manifest.json"),
        ("default/demo", "train/a.bin", "default/demo/train/a.bin"),
        ("default/demo/", "a.bin", "default/demo/a.bin"),
    ],
)
def test_join_key_places_a_relative_path_inside_a_folder(prefix: str, relative: str, key: str) -> None:
    assert join_key(prefix, relative) == key
    assert relative_key(prefix, key) == relative


@pytest.mark.parametrize(("prefix", "relative"), [("runs", "../other"), ("runs", "/abs"), ("runs", ""), ("/", "a")])
def test_join_key_cannot_escape_or_produce_an_invalid_key(prefix: str, relative: str) -> None:
    with pytest.raises(ValueError):
        join_key(prefix, relative)


def test_relative_key_refuses_a_key_outside_the_folder() -> None:
    with pytest.raises(ValueError, match="not inside"):
        relative_key("runs/a", "runs/ab/file")
