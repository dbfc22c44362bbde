"""API tokens: `eh_<id>_<secret>`, shown once at creation and stored as the sha256 of the secret.

The secret is 32 random bytes, so a plain sha256 is as strong as a slow password hash here (there
is nothing to guess by brute force), and it keeps checking a request to one indexed lookup and one
hash. The id is the public half: lists, the audit log and error messages name a token by its name
and id, never by its secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import sessionmaker

from edgehub.hub.access.roles import ROLES, Role
from edgehub.hub.access.schema import TokenRow
from edgehub.zoo.records import utcnow
from edgehub.zoo.schema import Base

_TOKEN_RE = re.compile(r"^eh_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
_DURATION_RE = re.compile(r"^(\d+)([mhd])$")
# last_used_at is written at most this often per token: a console page is several requests.
_TOUCH_EVERY = timedelta(minutes=1)


class TokenError(ValueError):
    """Bad input to a token command (one line)."""


@dataclass(frozen=True)
class Principal:
    """Who a request is: the token's name and role (`id` for the audit log)."""

    token_id: str
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"token:{self.name}"


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def as_json(self) -> dict:
        iso = lambda t: t.isoformat() if t else None  # noqa: E731
        return {"id": self.id, "name": self.name, "role": self.role, "created_at": iso(self.created_at),
                "expires_at": iso(self.expires_at), "revoked_at": iso(self.revoked_at),
                "last_used_at": iso(self.last_used_at)}


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h`, `30m` -> a timedelta."""
    match = _DURATION_RE.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise TokenError(f"invalid duration {text!r}: use e.g. 30m, 12h or 90d")
    n, unit = int(match.group(1)), match.group(2)
    return timedelta(minutes=n) if unit == "m" else timedelta(hours=n) if unit == "h" else timedelta(days=n)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _info(row: TokenRow) -> TokenInfo:
    return TokenInfo(row.id, row.name, row.role, row.created_at, row.expires_at, row.revoked_at, row.last_used_at)


class TokenStore:
    def __init__(self, engine: Engine):
        Base.metadata.create_all(engine, tables=[TokenRow.__table__])
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def create(self, name: str, role: str, expires_in: timedelta | None = None,
               now: datetime | None = None) -> tuple[str, TokenInfo]:
        """A new token; returns (the token, shown once; its record)."""
        if not _NAME_RE.match(name):
            raise TokenError(f"invalid token name {name!r}: lower-case letters, digits and . _ @ -, at most 64")
        if role not in ROLES:
            raise TokenError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        now = now or utcnow()
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        row = TokenRow(id=token_id, name=name, role=role, secret_hash=_digest(secret), created_at=now,
                       expires_at=now + expires_in if expires_in else None)
        with self.sessions.begin() as session:
            session.add(row)
        return f"eh_{token_id}_{secret}", _info(row)

    def verify(self, token: str, now: datetime | None = None) -> Principal | None:
        """The principal of a valid token; None for a malformed, unknown, wrong, expired or revoked one
        (the caller answers 401 without saying which)."""
        match = _TOKEN_RE.match(token or "")
        if not match:
            return None
        token_id, secret = match.groups()
        now = now or utcnow()
        with self.sessions() as session:
            row = session.get(TokenRow, token_id)
        if row is None or not hmac.compare_digest(row.secret_hash, _digest(secret)):
            return None
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return None
        if row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY:
            with self.sessions.begin() as session:
                session.execute(update(TokenRow).where(TokenRow.id == token_id).values(last_used_at=now))
        return Principal(row.id, row.name, row.role)  # type: ignore[arg-type]

    def revoke(self, name_or_id: str, now: datetime | None = None) -> list[TokenInfo]:
        """Revoke every live token with this name (or this id); an unknown one is an error."""
        now = now or utcnow()
        with self.sessions.begin() as session:
            rows = session.scalars(select(TokenRow).where(
                (TokenRow.name == name_or_id) | (TokenRow.id == name_or_id), TokenRow.revoked_at.is_(None))).all()
            if not rows:
                raise TokenError(f"no live token named {name_or_id!r}; see `edgehub hub token list`")
            for row in rows:
                row.revoked_at = now
            return [_info(r) for r in rows]

    def list(self) -> list[TokenInfo]:
        with self.sessions() as session:
            return [_info(r) for r in session.scalars(select(TokenRow).order_by(TokenRow.created_at))]
