"""Writing build outputs atomically: each file appears complete or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubetune.datasets_new.samples import BuiltRecord

# Records per block written: about 1 MB for samples of a few hundred words, a size the allocator reuses block after
# block (one 100 MB buffer for the whole file spent more time in fresh memory than in joining and encoding).
_RECORDS_PER_BLOCK = 1024


def jsonl_blocks(records: Sequence[BuiltRecord]) -> Iterator[bytes]:
    """The JSONL text of `records`, one line per record, each ending in a newline, as UTF-8 blocks."""
    for start in range(0, len(records), _RECORDS_PER_BLOCK):
        block = records[start:start + _RECORDS_PER_BLOCK]
        lines = [record.line for record in block]
        lines.append("")  # ends the last line
        yield "\n".join(lines).encode("utf-8")


def stats_bytes(stats: Mapping[str, Any]) -> bytes:
    return (json.dumps(stats, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def write_files_atomically(contents: Mapping[Path, Iterable[bytes]]) -> None:
    """Write every file (given as the blocks of its bytes) to a temporary sibling first, then rename them all into
    place.

    A failure while writing leaves no output path touched; temporary files are removed.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for target, blocks in contents.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            staged.append((Path(temporary_name), target))
            os.fchmod(handle, 0o644)  # mkstemp makes files private; outputs are ordinary readable files
            with os.fdopen(handle, "wb") as stream:
                for block in blocks:
                    stream.write(block)
                stream.flush()
                os.fsync(stream.fileno())
        for temporary, target in staged:
            os.replace(temporary, target)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
