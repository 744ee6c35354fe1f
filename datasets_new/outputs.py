"""Writing build outputs atomically: each file appears complete or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kubetune.datasets_new.samples import BuiltRecord


def jsonl_bytes(records: Iterable[BuiltRecord]) -> bytes:
    return "".join([record.line + "\n" for record in records]).encode("utf-8")


def stats_bytes(stats: Mapping[str, Any]) -> bytes:
    return (json.dumps(stats, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def write_files_atomically(contents: Mapping[Path, bytes]) -> None:
    """Write every file to a temporary sibling first, then rename them all into place.

    A failure while writing leaves no output path touched; temporary files are removed.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for target, data in contents.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            staged.append((Path(temporary_name), target))
            os.fchmod(handle, 0o644)  # mkstemp makes files private; outputs are ordinary readable files
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        for temporary, target in staged:
            os.replace(temporary, target)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
