"""Writing thousands of generated files fast."""

from __future__ import annotations

import os
from pathlib import Path


def overwrite(path: Path, data: bytes) -> Path:
    """Write in place: opening with O_TRUNC makes ext4 flush on close, which costs ms per example."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(descriptor, data, 0)
        os.ftruncate(descriptor, len(data))
    finally:
        os.close(descriptor)
    return path
