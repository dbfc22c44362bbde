"""API tokens (hashed, expiring, revocable), roles, the audit log, and the `publish --rollout` parser:
on a real SQLite database, no server."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from edgehub.hub.access.audit import AuditLog
from edgehub.hub.access.roles import ROLES, allows
from edgehub.hub.access.schema import TokenRow
from edgehub.hub.access.tokens import TokenError, TokenStore, parse_duration
from edgehub.hub.client.models import parse_publish_rollout
from edgehub.hub.rollout.machine import RolloutError
from edgehub.zoo.db import make_engine
from edgehub.zoo.records import utcnow


@pytest.fixture()
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/registry.db")
    yield engine
    engine.dispose()


def test_roles_include_the_ones_below():
    assert [r for r in ROLES if allows("operator", r)] == ["viewer", "publisher", "operator"]
    assert allows("admin", "operator") and not allows("viewer", "publisher") and not allows("root", "viewer")


def test_a_token_is_stored_hashed_and_checked(engine):
    store = TokenStore(engine)
    token, info = store.create("alice", "publisher")
    assert token.startswith(f"eh_{info.id}_") and info.role == "publisher"
    with store.sessions() as session:
        row = session.scalars(select(TokenRow)).one()
    assert token.split("_", 2)[2] not in row.secret_hash and len(row.secret_hash) == 64
    who = store.verify(token)
    assert (who.name, who.role, who.actor) == ("alice", "publisher", "token:alice")
    assert store.list()[0].last_used_at is not None
    # Wrong secret with a real id, malformed, empty: all refused the same way.
    assert store.verify(token[:-3] + ("aaa" if not token.endswith("aaa") else "bbb")) is None
    assert store.verify("eh_nothing") is None and store.verify("") is None


def test_expired_and_revoked_tokens_stop_working(engine):
    store = TokenStore(engine)
    token, _ = store.create("ci", "viewer", expires_in=timedelta(hours=1))
    assert store.verify(token) is not None
    assert store.verify(token, now=utcnow() + timedelta(hours=2)) is None
    other, info = store.create("bob", "operator")
    revoked = store.revoke("bob")
    assert [t.id for t in revoked] == [info.id] and store.verify(other) is None
    with pytest.raises(TokenError, match="no live token"):
        store.revoke("bob")  # already revoked: nothing live to revoke, and nothing changes
    assert store.verify(token) is not None


def test_bad_token_input_is_refused_and_leaves_nothing(engine):
    store = TokenStore(engine)
    with pytest.raises(TokenError, match="unknown role"):
        store.create("alice", "root")
    with pytest.raises(TokenError, match="invalid token name"):
        store.create("Alice Smith", "viewer")
    assert store.list() == []
    assert parse_duration("90d") == timedelta(days=90) and parse_duration("30m") == timedelta(minutes=30)
    for bad in ("0d", "1w", "soon"):
        with pytest.raises(TokenError, match="invalid duration"):
            parse_duration(bad)


def test_audit_log_pages_newest_first(engine):
    log = AuditLog(engine)
    for n in range(5):
        log.record("token:alice" if n % 2 else "local:root", "rollout.pause", f"rollout:{n}", ok=n != 3)
    total, page = log.entries(limit=2)
    assert total == 5 and [e.target for e in page] == ["rollout:4", "rollout:3"] and page[1].ok is False
    total, mine = log.entries(actor="token:alice")
    assert total == 2 and {e.target for e in mine} == {"rollout:1", "rollout:3"}


def test_publish_rollout_spec():
    r = parse_publish_rollout("canary=5%,stages=25%,50%,error=3,on_error=pause")
    assert (r.canary, r.stages, r.error_threshold, r.on_error, r.group) == ("5%", ["25%", "50%"], "3", "pause", None)
    assert parse_publish_rollout("group=lab,on_success=approve").for_group("m:2", "lab").on_success == "approve"
    with pytest.raises(RolloutError, match="unknown key"):
        parse_publish_rollout("canary=5%,speed=fast")
    with pytest.raises(RolloutError, match="not KEY=VALUE"):
        parse_publish_rollout("5%")
    with pytest.raises(RolloutError, match="bad --rollout"):
        parse_publish_rollout("on_error=explode")
