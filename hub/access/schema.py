"""Tables of the access layer: API tokens (hashed) and the audit log. They share the registry's
`Base`, so the same database (SQLite or PostgreSQL) holds them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from edgehub.zoo.schema import Base, UTCDateTime


class TokenRow(Base):
    __tablename__ = "api_tokens"

    # The public half of a token (`eh_<id>_<secret>`): found by primary key, shown in lists and logs.
    id: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String, index=True)
    role: Mapped[str] = mapped_column(String)
    secret_hash: Mapped[str] = mapped_column(String)  # sha256 of the secret half, hex
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditRow(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String, index=True)  # "token:<name>" or "local:<os user>"
    action: Mapped[str] = mapped_column(String)  # e.g. rollout.abort
    target: Mapped[str] = mapped_column(String)  # e.g. rollout:3
    ok: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
