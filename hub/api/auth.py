"""Who is asking: a bearer token (API) or the console's session cookie (which holds the token, HttpOnly,
SameSite=Strict), checked against the token store on every request, so a revoked or expired token
stops working at once. Roles are checked per route (`require`). Console forms also carry a CSRF
token: an HMAC of the session's token id under a per-hub secret, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Depends, HTTPException, Request

from edgehub.hub.access.roles import Role, allows
from edgehub.hub.access.tokens import Principal

SESSION_COOKIE = "edgehub_session"


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def principal(request: Request) -> Principal:
    """The caller, or 401 (the same answer for a missing, malformed, unknown, expired or revoked token)."""
    token = _bearer(request) or request.cookies.get(SESSION_COOKIE)
    found = request.app.state.tokens.verify(token) if token else None
    if found is None:
        raise HTTPException(401, "a valid API token is needed (Authorization: Bearer <token>); "
                                 "`edgehub hub token create NAME --role ROLE` makes one",
                            headers={"WWW-Authenticate": "Bearer"})
    request.state.principal = found
    return found


def require(role: Role):
    """A dependency: the caller, if their role includes `role`; else 403."""

    def check(who: Principal = Depends(principal)) -> Principal:
        if not allows(who.role, role):
            raise HTTPException(403, f"the token {who.name!r} has the role {who.role}; this needs {role} or above")
        return who

    return check


def csrf_token(secret: bytes, who: Principal) -> str:
    return hmac.new(secret, f"csrf:{who.token_id}".encode(), hashlib.sha256).hexdigest()


def check_csrf(secret: bytes, who: Principal, value: str | None) -> None:
    if not value or not hmac.compare_digest(value, csrf_token(secret, who)):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")
