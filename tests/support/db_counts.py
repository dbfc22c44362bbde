"""Row counts of every table in a database (cheap proof that a failed write left nothing behind).

Reflected from the database itself, so it sees the zoo's and the fleet's tables whichever of
them the test imported."""

from __future__ import annotations

from sqlalchemy import Engine, MetaData, func, select


def row_counts(engine: Engine) -> dict[str, int]:
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        return {t.name: conn.scalar(select(func.count()).select_from(t)) or 0 for t in meta.sorted_tables}
