"""Row counts of every table in a database (cheap proof that a failed write left nothing behind).

Reflected from the database itself, so it sees the zoo's and the fleet's tables whichever of
them the test imported."""

from __future__ import annotations

from sqlalchemy import Engine, MetaData, func, select

# The audit log records refused and failed actions too (who tried what): it is meant to grow.
APPEND_ONLY = {"audit_log"}


def row_counts(engine: Engine) -> dict[str, int]:
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        return {t.name: conn.scalar(select(func.count()).select_from(t)) or 0 for t in meta.sorted_tables
                if t.name not in APPEND_ONLY}


def home_contents(home) -> tuple:
    """What a hub home holds that a failed publish must leave as it was: the row count of every
    table, the models with their latest version, and the objects in the artifact store."""
    from edgehub.hub.home import HubPaths
    from edgehub.zoo.registry import Registry
    from edgehub.zoo.store import ArtifactStore

    paths = HubPaths.from_home(home)
    registry = Registry(paths.db_url)
    try:
        counts = row_counts(registry.engine)
        models = [(m.name, m.latest_version) for m in registry.list_models()]
    finally:
        registry.close()
    return counts, models, sorted(ArtifactStore(paths.artifacts_dir).list())
