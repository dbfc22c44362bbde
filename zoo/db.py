"""Engines for the registry database: SQLite on one machine, PostgreSQL for a fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # SQLite ignores foreign keys unless asked, per connection; WAL lets readers (the HTTP
    # server, `edgehub zoo`) run while a publish writes.
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def make_engine(url: str, connect_args: dict[str, Any] | None = None) -> Engine:
    """A SQLAlchemy engine for `url`, set up the same way for every edgehub table.

    SQLite: foreign keys on, WAL, parent directory created, in-memory databases shared.
    PostgreSQL: psycopg 3 driver, pre-ping (survives a database restart).
    """
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        # psycopg 3 is the driver we ship; plain "postgresql://" would mean psycopg2.
        parsed = parsed.set(drivername="postgresql+psycopg")
    args = dict(connect_args or {})
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, connect_args=args)
    database = parsed.database or ""
    if database in ("", ":memory:"):
        # One shared connection, or every session would see its own empty in-memory database.
        args.setdefault("check_same_thread", False)
        engine = create_engine(parsed, poolclass=StaticPool, connect_args=args)
    else:
        if not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args=args)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


__all__ = ["make_engine"]
