"""The registry: models, versions and variants with lineage, in SQLite or PostgreSQL.

All reads and writes go through pydantic records (`edgehub.zoo.records`); ORM rows stay inside.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from edgehub.zoo.convert import variant_record, variant_row, version_record
from edgehub.zoo.db import make_engine
from edgehub.zoo.lineage import lineage_order
from edgehub.zoo.records import ModelSummary, ModelVersionRecord, VariantRecord
from edgehub.zoo.schema import Base, ModelRow, ModelVersionRow, VariantProfileRow, VariantRow


class RegistryError(Exception):
    """A registration that would break the registry's invariants (the message is one line)."""


class Registry:
    """Models, versions and variants behind a SQLAlchemy URL; creates its tables if missing.

    `connect_args` go to the DB driver (e.g. `{"options": "-csearch_path=s1"}` for PostgreSQL).
    """

    def __init__(self, url: str | None = None, *, connect_args: dict[str, Any] | None = None,
                 engine: Engine | None = None) -> None:
        """On `url`, or on an `engine` someone else owns (hub/context.py shares one): close() then
        leaves it open."""
        self._owns_engine = engine is None
        self.engine = engine if engine is not None else make_engine(url, connect_args)
        Base.metadata.create_all(self.engine)
        # expire_on_commit=False: rows are turned into records after the transaction ends.
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    # -- writes ---------------------------------------------------------------------------

    def register(self, version: ModelVersionRecord, variants: list[VariantRecord]) -> None:
        """Record a new model version and its variants in one transaction: all or nothing.

        Raises RegistryError if the version or any variant id exists, a variant names another
        model/version, or a parent is neither in the batch nor already registered.
        """
        label = f"{version.name} v{version.version}"
        ordered = self._check_batch(label, version, variants)
        position = {id(v): i for i, v in enumerate(variants)}
        try:
            with self._sessions.begin() as session:
                model_version_id = self._insert_version(session, label, version)
                self._check_existing(session, label, variants)
                session.add_all(
                    variant_row(v, model_version_id, position[id(v)]) for v in ordered
                )
        except IntegrityError as exc:
            # Only reachable when another writer raced us past the checks above.
            detail = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
            raise RegistryError(f"cannot register {label}: conflicting write ({detail})") from exc

    @staticmethod
    def _check_batch(
        label: str, version: ModelVersionRecord, variants: list[VariantRecord]
    ) -> list[VariantRecord]:
        seen: set[str] = set()
        for v in variants:
            if (v.model, v.version) != (version.name, version.version):
                raise RegistryError(
                    f"cannot register {label}: variant {v.id!r} belongs to {v.model} v{v.version}"
                )
            if v.id in seen:
                raise RegistryError(f"cannot register {label}: variant id {v.id!r} appears twice")
            seen.add(v.id)
        try:
            return lineage_order(variants, key=lambda v: v.id, parent=lambda v: v.parent)
        except ValueError as exc:
            raise RegistryError(f"cannot register {label}: {exc}") from None

    @staticmethod
    def _insert_version(session: Session, label: str, version: ModelVersionRecord) -> int:
        model = session.scalar(select(ModelRow).where(ModelRow.name == version.name))
        if model is None:
            model = ModelRow(name=version.name, created_at=version.created_at)
            session.add(model)
            session.flush()
        elif session.scalar(
            select(ModelVersionRow.id).where(
                ModelVersionRow.model_id == model.id, ModelVersionRow.version == version.version
            )
        ) is not None:
            raise RegistryError(f"cannot register {label}: that version already exists")
        row = ModelVersionRow(
            model_id=model.id,
            version=version.version,
            source_kind=version.source_kind,
            source_ref=version.source_ref,
            source_sha256=version.source_sha256,
            created_at=version.created_at,
        )
        session.add(row)
        session.flush()
        return row.id

    @staticmethod
    def _check_existing(session: Session, label: str, variants: list[VariantRecord]) -> None:
        ids = {v.id for v in variants}
        taken = sorted(session.scalars(select(VariantRow.id).where(VariantRow.id.in_(ids))))
        if taken:
            raise RegistryError(f"cannot register {label}: variant id {taken[0]!r} already exists")
        outside = {v.parent for v in variants if v.parent is not None and v.parent not in ids}
        found = set(session.scalars(select(VariantRow.id).where(VariantRow.id.in_(outside))))
        if outside - found:
            missing = sorted(outside - found)[0]
            raise RegistryError(f"cannot register {label}: parent variant {missing!r} is unknown")

    # -- reads ----------------------------------------------------------------------------

    def latest_version(self, name: str) -> ModelVersionRecord | None:
        """The highest version of `name`, or None if the model is unknown."""
        with self._sessions() as session:
            row = self._version_row(session, name, None)
            return version_record(row) if row else None

    def get_version(self, name: str, version: int) -> ModelVersionRecord | None:
        """One version of `name`, or None."""
        with self._sessions() as session:
            row = self._version_row(session, name, version)
            return version_record(row) if row else None

    def list_models(self) -> list[ModelSummary]:
        """Every model with its latest version and counts, ordered by name."""
        per_model = (
            select(
                ModelVersionRow.model_id,
                func.max(ModelVersionRow.version).label("latest"),
                func.count(ModelVersionRow.id).label("versions"),
            )
            .group_by(ModelVersionRow.model_id)
            .subquery()
        )
        variant_counts = (
            select(ModelVersionRow.model_id, func.count(VariantRow.id).label("variants"))
            .join(VariantRow, VariantRow.model_version_id == ModelVersionRow.id)
            .group_by(ModelVersionRow.model_id)
            .subquery()
        )
        query = (
            select(
                ModelRow.name,
                ModelRow.created_at,
                per_model.c.latest,
                per_model.c.versions,
                func.coalesce(variant_counts.c.variants, 0),
            )
            .join(per_model, per_model.c.model_id == ModelRow.id)
            .outerjoin(variant_counts, variant_counts.c.model_id == ModelRow.id)
            .order_by(ModelRow.name)
        )
        with self._sessions() as session:
            return [
                ModelSummary(
                    name=name, created_at=created, latest_version=latest, versions=n, variants=nv
                )
                for name, created, latest, n, nv in session.execute(query)
            ]

    def variants(self, name: str, version: int | None = None) -> list[VariantRecord]:
        """Variants of one version (None: the latest), parents before children, then in
        registration order. Empty if the model or version is unknown."""
        return self._variants(name, version, profile=None)

    def variants_for_profile(
        self, name: str, version: int | None, profile: str
    ) -> list[VariantRecord]:
        """The variants of one version (None: the latest) built for `profile`, in lineage order."""
        return self._variants(name, version, profile=profile)

    def get_variant(self, variant_id: str) -> VariantRecord | None:
        """One variant by id, or None."""
        with self._sessions() as session:
            row = session.get(VariantRow, variant_id)
            return variant_record(row) if row else None

    def close(self) -> None:
        """Release all database connections (of an engine this registry made)."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _version_row(session: Session, name: str, version: int | None) -> ModelVersionRow | None:
        query = select(ModelVersionRow).join(ModelRow).where(ModelRow.name == name)
        if version is None:
            query = query.order_by(ModelVersionRow.version.desc()).limit(1)
        else:
            query = query.where(ModelVersionRow.version == version)
        return session.scalar(query)

    def _variants(self, name: str, version: int | None, profile: str | None) -> list[VariantRecord]:
        with self._sessions() as session:
            version_row = self._version_row(session, name, version)
            if version_row is None:
                return []
            query = select(VariantRow).where(VariantRow.model_version_id == version_row.id)
            if profile is not None:
                query = query.join(VariantProfileRow).where(VariantProfileRow.profile == profile)
            rows: Iterable[VariantRow] = session.scalars(
                query.order_by(VariantRow.position, VariantRow.id)
            )
            records = [variant_record(row) for row in rows]
        return lineage_order(records, key=lambda v: v.id, parent=lambda v: v.parent)


__all__ = ["Registry", "RegistryError"]
