"""Resumable, sha256-checked uploads (what a remote publish sends: model, weights, data sets, recipe).

The client declares the size and sha256, then sends the bytes in chunks, each at the offset the hub
has (`PATCH` with `Upload-Offset`, tus-style); after a cut connection it asks for the offset and goes
on from there. The hub checks the sha256 when the last byte arrives: a corrupt upload is deleted and
never becomes usable, so a cut or damaged transfer registers nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from edgehub.hub.jobs.schema import UploadRow
from edgehub.hub.jobs.store import JobError
from edgehub.zoo.records import utcnow
from edgehub.zoo.schema import Base

DEFAULT_MAX_BYTES = 4 * 1024**3
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_ID_RE = re.compile(r"^[0-9a-f]{24}$")
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]")


class UploadError(JobError):
    """A bad upload request (one line); `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400, offset: int | None = None):
        super().__init__(message)
        self.status, self.offset = status, offset


@dataclass(frozen=True)
class Upload:
    id: str
    owner: str
    filename: str
    size: int
    sha256: str
    received: int
    complete: bool

    def as_json(self) -> dict:
        return {"id": self.id, "filename": self.filename, "size": self.size, "sha256": self.sha256,
                "offset": self.received, "complete": self.complete}


def _upload(r: UploadRow) -> Upload:
    return Upload(r.id, r.owner, r.filename, r.size, r.sha256, r.received, r.complete)


class UploadStore:
    def __init__(self, engine: Engine, root: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        Base.metadata.create_all(engine, tables=[UploadRow.__table__])
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.root, self.max_bytes = root, max_bytes

    def path(self, upload_id: str) -> Path:
        return self.root / upload_id

    def create(self, owner: str, filename: str, size: int, sha256: str) -> Upload:
        if not _SHA_RE.match(sha256 or ""):
            raise UploadError("sha256 must be 64 lower-case hex digits")
        if size < 0:
            raise UploadError("size must be >= 0")
        if size > self.max_bytes:
            raise UploadError(f"{filename}: {size} bytes is over the hub's upload limit of {self.max_bytes} bytes", 413)
        name = _SAFE_NAME_RE.sub("_", Path(filename).name)[:128] or "upload"
        row = UploadRow(id=secrets.token_hex(12), owner=owner, filename=name, size=size, sha256=sha256, received=0,
                        complete=False, created_at=utcnow())
        self.root.mkdir(parents=True, exist_ok=True)
        self.path(row.id).write_bytes(b"")
        with self.sessions.begin() as session:
            session.add(row)
        if size == 0:
            return self._complete(row.id)
        return _upload(row)

    def get(self, upload_id: str, owner: str | None = None) -> Upload:
        """An upload (of `owner`, when given: one caller cannot use another's files)."""
        row = None
        if _ID_RE.match(upload_id or ""):
            with self.sessions() as session:
                row = session.get(UploadRow, upload_id)
        if row is None or (owner is not None and row.owner != owner):
            raise UploadError(f"no upload {upload_id!r}", 404)
        return _upload(row)

    def append(self, upload_id: str, owner: str, offset: int, chunk: bytes) -> Upload:
        """Write `chunk` at `offset`, which must be where the upload stands (409 with the real offset
        otherwise, so the client resumes from there)."""
        upload = self.get(upload_id, owner)
        if upload.complete:
            raise UploadError(f"upload {upload_id} is already complete", 409, upload.size)
        if offset != upload.received:
            raise UploadError(f"upload {upload_id} is at offset {upload.received}, not {offset}", 409, upload.received)
        if offset + len(chunk) > upload.size:
            raise UploadError(f"upload {upload_id}: {offset + len(chunk)} bytes is more than the declared "
                              f"{upload.size}", 413)
        with open(self.path(upload_id), "r+b") as handle:
            handle.seek(offset)
            handle.write(chunk)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
        received = offset + len(chunk)
        with self.sessions.begin() as session:
            session.get(UploadRow, upload_id).received = received
        if received == upload.size:
            return self._complete(upload_id)
        return self.get(upload_id)

    def _complete(self, upload_id: str) -> Upload:
        digest = hashlib.sha256()
        with open(self.path(upload_id), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        with self.sessions.begin() as session:
            row = session.get(UploadRow, upload_id)
            matches = digest.hexdigest() == row.sha256
            if matches:
                row.complete = True
            else:
                session.delete(row)  # committed before the error is raised
            session.flush()
            found = _upload(row)
        if not matches:
            self.path(upload_id).unlink(missing_ok=True)
            raise UploadError(f"{found.filename}: the bytes received do not match the sha256 declared "
                              "(corrupted in transit?); the upload is discarded, send it again", 422)
        return found

    def complete_path(self, upload_id: str, owner: str) -> Path:
        """The file of a complete upload of `owner` (what a job reads)."""
        upload = self.get(upload_id, owner)
        if not upload.complete:
            raise UploadError(f"upload {upload_id} ({upload.filename}) is incomplete: {upload.received} of "
                              f"{upload.size} bytes", 409, upload.received)
        return self.path(upload_id)

    def find(self, owner: str, sha256: str, size: int) -> Upload | None:
        """A complete upload of the same bytes by the same owner (the client skips sending it again)."""
        with self.sessions() as session:
            row = session.scalars(select(UploadRow).where(UploadRow.owner == owner, UploadRow.sha256 == sha256,
                                                          UploadRow.size == size, UploadRow.complete.is_(True))
                                  .limit(1)).first()
        return _upload(row) if row else None
