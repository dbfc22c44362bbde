"""The hub's ed25519 signing key: created once per hub home, then reused for every manifest."""

from __future__ import annotations

import base64
import logging
import os
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgehub.agent.protocol import Manifest, SignedManifest, key_id_of

PRIVATE_KEY_FILE = "hub_ed25519.pem"
PUBLIC_KEY_FILE = "hub_ed25519.pub"

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


__all__ = ["HubKey", "HubKeyError", "PRIVATE_KEY_FILE", "PUBLIC_KEY_FILE"]
