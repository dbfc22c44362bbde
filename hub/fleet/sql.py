"""Bulk SQL for the fleet store: portable upserts and IN-lists on SQLite and PostgreSQL.

A hub batch touches hundreds of devices; these helpers keep that to a few statements
(executemany, INSERT ... ON CONFLICT) instead of one query per device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from sqlalchemy import Table

T = TypeVar("T")

IN_CHUNK = 500  # ids per IN (...) list: far under SQLite's and PostgreSQL's parameter limits


class UnsupportedDatabase(Exception):
    pass


def chunks(items: Sequence[T] | Iterable[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def dialect_insert(session, table: Table):
    """The dialect's INSERT (with on_conflict_* methods) for `table`."""
    dialect = session.bind.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise UnsupportedDatabase(f"unsupported database {dialect}: use SQLite or PostgreSQL")
    return insert(table)


def insert_ignoring_duplicates(session, table: Table, rows: list[dict]) -> list:
    """INSERT ... ON CONFLICT DO NOTHING; returns the first column of the rows inserted."""
    if not rows:
        return []
    first = next(iter(rows[0]))
    result = session.execute(dialect_insert(session, table).on_conflict_do_nothing().returning(table.c[first]),
                             rows)
    return [r[0] for r in result.fetchall()]


def upsert(session, table: Table, rows: list[dict], keys: list[str], where=None) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE every other given column [WHERE where(table, excluded)]."""
    if not rows:
        return
    stmt = dialect_insert(session, table)
    columns = [c for c in rows[0] if c not in keys]
    condition = where(table, stmt.excluded) if where is not None else None
    if columns:
        stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in columns},
                                          where=condition)
    else:
        stmt = stmt.on_conflict_do_nothing()
    session.execute(stmt, rows)
