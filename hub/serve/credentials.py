"""Device passwords: generated at enrolment, stored only as salted PBKDF2 hashes.

The broker checks passwords against its own accounts (the dynamic-security plugin); the hub's HTTP
artifact server checks the same passwords against these hashes. A verified (password, stored
hash) pair is cached briefly so ranged downloads (many requests) do not pay PBKDF2 each time;
the stored hash is looked up on every request, so a revoked or re-enrolled device is refused at
once, even by a hub process other than the one that revoked it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from typing import Callable

ITERATIONS = 120_000
CACHE_S = 30.0  # how long a verified password skips PBKDF2 (revocation is immediate regardless)


def new_password() -> str:
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, iterations: int = ITERATIONS) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        computed = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


class PasswordChecker:
    """authenticate(user, password) against stored hashes, with a short positive cache."""

    def __init__(self, lookup: Callable[[str], str | None]):
        self._lookup = lookup
        self._cache: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def __call__(self, user: str, password: str) -> bool:
        stored = self._lookup(user)  # every time: a revoked device has no hash any more
        if stored is None:
            return False
        key = (user, hashlib.sha256(password.encode()).hexdigest(), stored)
        now = time.monotonic()
        with self._lock:
            if self._cache.get(key, 0) > now:
                return True
        if not check_password(password, stored):
            return False
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if v > now}  # stays small
            self._cache[key] = now + CACHE_S
        return True

    def forget(self, user: str) -> None:
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != user}
