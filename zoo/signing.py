"""The hub's ed25519 signing keys: one active key signs every new manifest; rotation is planned.

In `<home>/keys/`::

    hub_ed25519.pem / .pub    the active key (signs); made on first use
    next_ed25519.pem          the next key, staged before it signs (optional)
    trusted/<key_id>.pub      earlier keys, still trusted for the manifests they signed

Rotation (documented in docs/RELIABILITY.md): `stage_next_key` makes the next key, so every
agent config written from then on (`fleet enroll`) trusts it too, and existing agents get it in
their `trusted_keys`; `rotate_key` makes it the signer and keeps the old public key as trusted,
so manifests signed before keep verifying; `retire_key` drops an old key once no variant in use
needs it. Agents pick the key by the manifest's key_id and refuse a key they do not know.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from edgehub.protocol.manifest import Manifest, SignedManifest, key_id_of

PRIVATE_KEY_FILE = "hub_ed25519.pem"
PUBLIC_KEY_FILE = "hub_ed25519.pub"
NEXT_KEY_FILE = "next_ed25519.pem"
TRUSTED_DIR = "trusted"

log = logging.getLogger(__name__)


class HubKeyError(Exception):
    """The key file exists but cannot be used (wrong type, corrupt, unreadable)."""


def _write_atomic(path: Path, data: bytes, mode: int, *, exclusive: bool) -> bool:
    """Write `data` to `path` via a temp file in the same directory.

    With `exclusive`, the file is only created if absent (hard link, which fails on an existing
    name) and False is returned if another process won the race; otherwise it is replaced.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, mode)  # before any byte is written: the key is never world-readable
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:
            # Filesystems without hard links: accept a tiny race rather than fail outright.
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


class HubKey:
    """An ed25519 private key plus the facts devices need to trust it."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self._public_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> HubKey:
        return cls(Ed25519PrivateKey.generate())

    def private_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @classmethod
    def load(cls, pem_path: Path) -> HubKey:
        """The key in `pem_path` (HubKeyError if it is not a usable ed25519 key)."""
        return cls(cls._load_pem(Path(pem_path)))

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> HubKey:
        """Load `keys_dir/hub_ed25519.pem`, creating it (mode 0600) on first use.

        Also (re)writes `hub_ed25519.pub`: the raw public key as base64 text, to copy to devices.
        Safe against two processes creating the key at once: exactly one key wins.
        """
        keys_dir = Path(keys_dir)
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem_path = keys_dir / PRIVATE_KEY_FILE
        if not pem_path.exists():
            fresh = Ed25519PrivateKey.generate()
            pem = fresh.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            # If another process created the key meanwhile, fall through and load theirs.
            _write_atomic(pem_path, pem, 0o600, exclusive=True)
        key = cls(cls._load_pem(pem_path))
        key._write_public(keys_dir / PUBLIC_KEY_FILE)
        return key

    @staticmethod
    def _load_pem(pem_path: Path) -> Ed25519PrivateKey:
        if os.name == "posix" and stat.S_IMODE(pem_path.stat().st_mode) & 0o077:
            log.warning(
                "hub key %s is readable by other users; run: chmod 600 %s",
                pem_path,
                pem_path,
            )
        try:
            loaded = serialization.load_pem_private_key(pem_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise HubKeyError(f"cannot load hub key {pem_path}: {exc}") from exc
        if not isinstance(loaded, Ed25519PrivateKey):
            raise HubKeyError(
                f"hub key {pem_path} is a {type(loaded).__name__}, expected an ed25519 key"
            )
        return loaded

    def _write_public(self, pub_path: Path) -> None:
        text = (self.public_b64 + "\n").encode()
        # Rewrite only when missing or stale, so a read-only deployment can still load the key.
        if pub_path.exists() and pub_path.read_bytes() == text:
            return
        _write_atomic(pub_path, text, 0o644, exclusive=False)

    @property
    def public_raw(self) -> bytes:
        """The 32-byte raw public key (what `verify_manifest` takes)."""
        return self._public_raw

    @property
    def public_b64(self) -> str:
        """The raw public key as base64 text (the content of hub_ed25519.pub)."""
        return base64.b64encode(self._public_raw).decode()

    @property
    def key_id(self) -> str:
        """Short fingerprint that manifests carry, see `key_id_of`."""
        return key_id_of(self._public_raw)

    def sign(self, manifest: Manifest) -> SignedManifest:
        """Sign `manifest.canonical_bytes()`; the agent checks it with `verify_manifest`."""
        signature = self._private.sign(manifest.canonical_bytes())
        return SignedManifest(
            manifest=manifest,
            signature=base64.b64encode(signature).decode(),
            key_id=self.key_id,
        )

    def __repr__(self) -> str:  # never print key material
        return f"HubKey(key_id={self.key_id!r})"


# ---- rotation -------------------------------------------------------------------------------

class KeyInfo(BaseModel):
    key_id: str
    role: Literal["active", "next", "trusted"]
    public_b64: str


def _public_b64_of(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def stage_next_key(keys_dir: Path) -> HubKey:
    """The next key (made now if none is staged); it does not sign until `rotate_key`."""
    keys_dir = Path(keys_dir)
    HubKey.load_or_create(keys_dir)  # the active key exists first
    path = keys_dir / NEXT_KEY_FILE
    if not path.exists():
        _write_atomic(path, HubKey.generate().private_pem(), 0o600, exclusive=True)
    return HubKey.load(path)


def rotate_key(keys_dir: Path) -> tuple[str, str]:
    """Make the staged next key (or a new one) the signer; keep the old public key trusted.

    Returns (old key id, new key id). Agents that do not trust the new key yet refuse the
    manifests it signs: stage first, update the agents, then rotate."""
    keys_dir = Path(keys_dir)
    old = HubKey.load_or_create(keys_dir)
    new = stage_next_key(keys_dir)
    trusted = keys_dir / TRUSTED_DIR
    trusted.mkdir(mode=0o700, exist_ok=True)
    # Order matters for a crash half-way: the old public key is kept before the new key signs.
    _write_atomic(trusted / f"{old.key_id}.pub", (old.public_b64 + "\n").encode(), 0o644, exclusive=False)
    _write_atomic(keys_dir / PRIVATE_KEY_FILE, new.private_pem(), 0o600, exclusive=False)
    (keys_dir / NEXT_KEY_FILE).unlink(missing_ok=True)
    HubKey.load_or_create(keys_dir)  # rewrites hub_ed25519.pub
    log.info("hub key rotated: %s -> %s (the old key stays trusted until retired)", old.key_id, new.key_id)
    return old.key_id, new.key_id


def retire_key(keys_dir: Path, key_id: str) -> None:
    """Stop trusting an earlier key: manifests it signed no longer verify on newly configured agents."""
    keys_dir = Path(keys_dir)
    if HubKey.load_or_create(keys_dir).key_id == key_id:
        raise HubKeyError(f"{key_id} is the active key; rotate first")
    path = keys_dir / TRUSTED_DIR / f"{key_id}.pub"
    if not key_id.isalnum() or not path.is_file():
        raise HubKeyError(f"no trusted earlier key {key_id!r}; see `edgehub hub keys list`")
    path.unlink()


def list_keys(keys_dir: Path) -> list[KeyInfo]:
    """The active key, the staged next key, then earlier trusted keys."""
    keys_dir = Path(keys_dir)
    active = HubKey.load_or_create(keys_dir)
    found = [KeyInfo(key_id=active.key_id, role="active", public_b64=active.public_b64)]
    if (keys_dir / NEXT_KEY_FILE).exists():
        nxt = HubKey.load(keys_dir / NEXT_KEY_FILE)
        found.append(KeyInfo(key_id=nxt.key_id, role="next", public_b64=nxt.public_b64))
    for path in sorted((keys_dir / TRUSTED_DIR).glob("*.pub")):
        text = path.read_text().strip()
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            raise HubKeyError(f"{path} is not a base64 public key") from None
        found.append(KeyInfo(key_id=key_id_of(raw), role="trusted", public_b64=_public_b64_of(raw)))
    return found


def trusted_public_keys(keys_dir: Path) -> list[str]:
    """Every public key an agent should trust (base64), the active key first."""
    return [k.public_b64 for k in list_keys(keys_dir)]


__all__ = ["HubKey", "HubKeyError", "KeyInfo", "NEXT_KEY_FILE", "PRIVATE_KEY_FILE", "PUBLIC_KEY_FILE",
           "TRUSTED_DIR", "list_keys", "retire_key", "rotate_key", "stage_next_key", "trusted_public_keys"]
