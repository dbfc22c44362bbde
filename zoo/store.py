"""Content-addressed artifact store: every object lives at root/sha[:2]/sha, written atomically."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from edgehub.protocol.files import sha256_file

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20  # 1 MiB: large enough to hash GB-sized models quickly, small enough for RAM


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; directories cannot be opened this way on Windows.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    """A directory of immutable blobs named by their sha256.

    Writers never expose a partial object: data goes to a temp file in the object's own
    directory, is fsynced and verified, then renamed into place with `os.replace`.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        """Where the object `sha256` lives (whether or not it exists). Rejects malformed digests."""
        if not isinstance(sha256, str) or not _SHA_RE.match(sha256):
            raise ValueError(f"not a sha256 digest (64 lower-case hex chars): {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        """True if the object is stored."""
        return self.path_for(sha256).is_file()

    def size(self, sha256: str) -> int:
        """Size in bytes of a stored object; FileNotFoundError if absent."""
        path = self.path_for(sha256)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise FileNotFoundError(f"artifact {sha256} is not in the store {self.root}") from None

    def put_file(self, src: Path) -> tuple[str, int]:
        """Store a copy of `src`; return (sha256, size). An existing object is not rewritten."""
        src = Path(src)
        if not src.is_file():
            raise FileNotFoundError(f"cannot store {src}: not a file")
        sha = sha256_file(src)
        if self.has(sha):
            return sha, self.size(sha)

        def copy(dst: BinaryIO) -> str:
            # Hash again while copying: if `src` changed after the first pass, we would
            # otherwise file wrong bytes under the old name.
            digest = hashlib.sha256()
            with open(src, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
            return digest.hexdigest()

        return sha, self._write_atomic(sha, copy)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store `data`; return (sha256, size). An existing object is not rewritten."""
        sha = hashlib.sha256(data).hexdigest()
        if self.has(sha):
            return sha, self.size(sha)

        def write(dst: BinaryIO) -> str:
            dst.write(data)
            return sha

        return sha, self._write_atomic(sha, write)

    def remove(self, sha256: str) -> None:
        """Delete an object (only for rolling back objects written by a failed publish)."""
        self.path_for(sha256).unlink(missing_ok=True)

    def list(self) -> list[str]:
        """All stored digests, sorted. Temp files and strays are ignored."""
        found = []
        for shard in self.root.iterdir():
            if not shard.is_dir() or len(shard.name) != 2:
                continue
            for entry in shard.iterdir():
                if _SHA_RE.match(entry.name) and entry.name[:2] == shard.name and entry.is_file():
                    found.append(entry.name)
        return sorted(found)

    def _write_atomic(self, sha: str, fill: Callable[[BinaryIO], str]) -> int:
        """Fill a temp file via `fill(fileobj) -> sha256 of what it wrote`, then publish it."""
        final = self.path_for(sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{sha[:12]}.", suffix=".tmp", dir=final.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as dst:
                written_sha = fill(dst)
                dst.flush()
                os.fsync(dst.fileno())
            if written_sha != sha:
                raise OSError(
                    f"source changed while it was being stored (expected {sha}, got {written_sha})"
                )
            size = tmp.stat().st_size
            # mkstemp makes 0600; objects are not secret, and the HTTP server may be another user.
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return size


__all__ = ["ArtifactStore"]
