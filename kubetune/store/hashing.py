"""Streaming sha256 of local files: model files are gigabytes, so never read one whole."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

CHUNK_SIZE = 1024 * 1024
# A sha256 as hexdigest() writes it (lower case): every digest kubetune stores or is given is checked against this.
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()
