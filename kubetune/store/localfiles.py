"""Atomic local file writes shared by both stores: a reader of ``path`` sees the old file or the whole new one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubetune.store.keys import TEMP_MARKER


def temp_path_beside(path: Path) -> Path:
    # Same directory as the target, so the final rename never crosses a filesystem boundary.
    return path.with_name(f"{TEMP_MARKER}{secrets.token_hex(6)}-{path.name}")


@contextmanager
def atomic_destination(path: Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces ``path``, on any error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_beside(path)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
