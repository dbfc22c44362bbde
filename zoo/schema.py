"""The registry's tables (SQLAlchemy 2.0 declarative). One `Base` so fleet tables can join later.

Portable by construction: only generic types (String, Integer, JSON, DateTime), so the same
metadata runs on SQLite for one machine and PostgreSQL for a fleet.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, stored as UTC.

    PostgreSQL keeps the zone (timestamptz); SQLite keeps none, so values are normalised to
    UTC on the way in and tagged as UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; the registry stores only aware times")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base for every edgehub table (registry now, fleet state later)."""


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    versions: Mapped[list[ModelVersionRow]] = relationship(back_populates="model")


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    source_kind: Mapped[str] = mapped_column(String)
    source_ref: Mapped[str] = mapped_column(String)
    source_sha256: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    model: Mapped[ModelRow] = relationship(back_populates="versions", lazy="joined")


class VariantRow(Base):
    __tablename__ = "variants"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("variants.id"), nullable=True, index=True
    )
    # Position in the batch it was registered with: a stable "created order" even when
    # several variants share one created_at timestamp.
    position: Mapped[int] = mapped_column(Integer, default=0)
    label: Mapped[str] = mapped_column(String)
    recipe: Mapped[list] = mapped_column(JSON)
    format: Mapped[str] = mapped_column(String)
    precision: Mapped[str] = mapped_column(String)
    size_bytes: Mapped[int] = mapped_column(BigInteger)  # models pass 2 GiB
    sha256: Mapped[str] = mapped_column(String, index=True)
    inputs: Mapped[list] = mapped_column(JSON)
    outputs: Mapped[list] = mapped_column(JSON)
    metrics: Mapped[dict] = mapped_column(JSON)
    references_sha256: Mapped[str | None] = mapped_column(String, nullable=True)
    # none_as_null: "no manifest" is SQL NULL, not the JSON value null.
    signed_manifest: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    notes: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    model_version: Mapped[ModelVersionRow] = relationship(lazy="joined")
    profiles: Mapped[list[VariantProfileRow]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="VariantProfileRow.profile"
    )


class VariantProfileRow(Base):
    __tablename__ = "variant_profiles"

    variant_id: Mapped[str] = mapped_column(ForeignKey("variants.id"), primary_key=True)
    profile: Mapped[str] = mapped_column(String, primary_key=True, index=True)


__all__ = ["Base", "ModelRow", "ModelVersionRow", "UTCDateTime", "VariantProfileRow", "VariantRow"]

