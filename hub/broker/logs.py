"""The managed broker's log files: rotation by size, reading what a start wrote, the tail shown in errors."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from edgehub.hub.broker.tools import MAX_LOG_BYTES, tail


def rotate(path: Path, max_bytes: int = MAX_LOG_BYTES) -> bool:
    """Move `path` to `path`.1 once it is over `max_bytes`; True if it was moved."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > max_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
            return True
    return False


def written_since(path: Path, offset: int, needle: str) -> bool:
    """Whether `needle` appears in what was appended to `path` after `offset`."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return needle.encode() in fh.read()
    except OSError:
        return False


def log_tail(log_path: Path, out_path: Path, lines: int = 20) -> str:
    """The last lines of the broker's log and its stdout/stderr (never holds passwords)."""
    parts = tail(log_path, lines)
    out = tail(out_path, lines)
    if out:
        parts += ["-- stdout/stderr --", *out]
    return "\n".join(parts)
