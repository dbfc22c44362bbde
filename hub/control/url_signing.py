"""Signed, expiring artifact URLs: `{base}/artifacts/{sha}?device=&exp=&sig=`.

The signature is HMAC-SHA256 (hub-only secret) over "sha|device|exp", so a URL is bound to one
object, one device and one deadline. The server also demands the device's own credentials (HTTP
Basic), so a leaked URL alone is not enough to fetch an artifact.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from edgehub.protocol.base import ID_PATTERN

SECRET_BYTES = 32
DEFAULT_TTL_S = 86400

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_SIG_RE = re.compile(r"^[0-9a-f]{64}$")
_EXP_RE = re.compile(r"^[0-9]{1,12}$")  # 12 digits: far past any real deadline, bounded parse
_DEVICE_RE = re.compile(ID_PATTERN)

log = logging.getLogger(__name__)


def _mac(sha256: str, device_id: str, exp: int, secret: bytes) -> str:
    # "|" cannot occur in a sha or a device id (ID_PATTERN), so the message is unambiguous.
    message = f"{sha256}|{device_id}|{exp}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < 16:
        raise ValueError("URL signing secret must be at least 16 bytes")


def sign_artifact_url(
    base_url: str,
    sha256: str,
    device_id: str,
    secret: bytes,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """A URL letting `device_id` (with its credentials) GET object `sha256` for `ttl_s` s."""
    _check_secret(secret)
    if not _SHA_RE.match(sha256):
        raise ValueError(f"not a sha256 digest (64 lower-case hex chars): {sha256!r}")
    if not _DEVICE_RE.match(device_id):
        raise ValueError(f"invalid device id {device_id!r} (expected {ID_PATTERN})")
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s}")
    exp = int(time.time() if now is None else now) + int(ttl_s)
    sig = _mac(sha256, device_id, exp, secret)
    return (
        f"{base_url.rstrip('/')}/artifacts/{sha256}"
        f"?device={quote(device_id, safe='')}&exp={exp}&sig={sig}"
    )


def check_signature(
    sha256: str,
    device_id: str,
    exp: str | int,
    sig: str,
    secret: bytes,
    now: float | None = None,
) -> str | None:
    """None if the signature is valid and unexpired, else the reason ("malformed",
    "bad signature", "expired"). The MAC is checked before the deadline so a forged URL
    learns nothing about expiry."""
    _check_secret(secret)
    exp_text = str(exp)
    if not (
        isinstance(sha256, str)
        and isinstance(device_id, str)
        and isinstance(sig, str)
        and _SHA_RE.match(sha256)
        and _DEVICE_RE.match(device_id)
        and _EXP_RE.match(exp_text)
        and _SIG_RE.match(sig)
    ):
        return "malformed"
    expected = _mac(sha256, device_id, int(exp_text), secret)
    if not hmac.compare_digest(expected, sig):
        return "bad signature"
    if int(exp_text) <= int(time.time() if now is None else now):
        return "expired"
    return None


def load_or_create_secret(path: Path) -> bytes:
    """Read the 32-byte URL signing secret at `path`, creating it (mode 0600) on first use.

    Written via a temp file and a hard link, so two processes starting at once agree on one
    secret and no reader ever sees a half-written file.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            os.chmod(tmp, 0o600)  # before any byte lands: the secret is never world-readable
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(SECRET_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:  # another process won the race; load its secret below
                log.debug("URL signing secret %s created concurrently; using it", path)
            except OSError:
                # Filesystems without hard links: accept a tiny race rather than fail.
                if not path.exists():
                    os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning("URL signing secret %s is readable by other users; run: chmod 600 %s",
                    path, path)
    data = path.read_bytes()
    if len(data) != SECRET_BYTES:
        raise ValueError(
            f"URL signing secret {path} has {len(data)} bytes, expected {SECRET_BYTES}; "
            "delete it to create a new one (outstanding URLs become invalid)"
        )
    return data


__all__ = ["DEFAULT_TTL_S", "SECRET_BYTES", "check_signature", "load_or_create_secret",
           "sign_artifact_url"]
