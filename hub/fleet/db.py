"""What every fleet repository shares: the engine, a session factory, and the change log writer.

The repositories (devices, traffic, plans, rollouts, views) each own their tables and take this
object; a write that spans two of them (a rollout step moves an alias) calls the other module's
function with the same session, so it stays one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from edgehub.hub.fleet.records import ChangeKind
from edgehub.hub.fleet.schema import ChangeRow
from edgehub.zoo.records import utcnow


@dataclass(frozen=True)
class FleetDb:
    engine: Engine
    sessions: sessionmaker = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sessions", sessionmaker(self.engine, expire_on_commit=False))


def note_change(session: Session, kind: ChangeKind, keys: Iterable[str]) -> None:
    """Append to the change log (hub workers reconcile what it names)."""
    now = utcnow()
    rows = [{"kind": kind, "key": k, "at": now} for k in dict.fromkeys(keys)]
    if rows:
        session.execute(ChangeRow.__table__.insert(), rows)
