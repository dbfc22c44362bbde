"""The audit log: who did what, when, and whether it worked. Every action through the API, the
console and the local CLI's fleet-changing commands is one row."""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import sessionmaker

from edgehub.hub.access.schema import AuditRow
from edgehub.zoo.records import utcnow
from edgehub.zoo.schema import Base


def local_actor() -> str:
    """The actor of a command run on the hub machine itself."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "local:unknown"


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    ok: bool
    detail: dict

    def as_json(self) -> dict:
        return {"id": self.id, "at": self.at.isoformat(), "actor": self.actor, "action": self.action,
                "target": self.target, "ok": self.ok, "detail": self.detail}


class AuditLog:
    def __init__(self, engine: Engine):
        Base.metadata.create_all(engine, tables=[AuditRow.__table__])
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def record(self, actor: str, action: str, target: str, ok: bool = True, detail: dict | None = None,
               now: datetime | None = None) -> None:
        with self.sessions.begin() as session:
            session.add(AuditRow(at=now or utcnow(), actor=actor, action=action, target=target, ok=ok,
                                 detail=detail or {}))

    def entries(self, *, limit: int = 100, offset: int = 0, actor: str | None = None) -> tuple[int, list[AuditEntry]]:
        """(total matching, newest first page)."""
        where = [AuditRow.actor == actor] if actor else []
        with self.sessions() as session:
            total = session.scalar(select(func.count()).select_from(AuditRow).where(*where)) or 0
            rows = session.scalars(select(AuditRow).where(*where).order_by(AuditRow.id.desc())
                                   .limit(limit).offset(offset)).all()
        return total, [AuditEntry(r.id, r.at, r.actor, r.action, r.target, r.ok, r.detail or {}) for r in rows]
