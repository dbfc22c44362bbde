"""File facts both sides compute the same way."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20  # 1 MiB: large enough to hash GB-sized models quickly, small enough for RAM


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (models can be larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
