"""The contract between hub and agent: tensor specs, signed variant manifests, MQTT bodies.

Every side may import this module: it needs only pydantic and cryptography, and stays free
of torch, onnx, and anything from the hub or converters.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from edgehub.protocol.compatibility import Requirements

SCHEMA_VERSION = 1


class TensorSpec(BaseModel):
    """One model input or output. Dynamic dimensions are named strings (e.g. "batch")."""

    model_config = ConfigDict(frozen=True)

    name: str
    dtype: str  # numpy dtype name: "float32", "int64", "uint8", ...
    shape: list[int | str]


class Manifest(BaseModel):
    """What the hub vouches for about one variant; signed with the hub's ed25519 key."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    variant_id: str
    model: str
    version: int
    format: str
    precision: str
    sha256: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    references_sha256: str | None = None
    recipe: list[dict] = Field(default_factory=list)
    created_at: str
    # What the device's runtime must offer (protocol/compatibility.py); None in manifests signed
    # before requirements existed.
    requires: Requirements | None = None

    def canonical_bytes(self) -> bytes:
        """Deterministic bytes to sign: sorted keys, no whitespace. `requires` is left out when
        unset, so manifests signed before it existed still verify."""
        body = self.model_dump(mode="json")
        if body.get("requires") is None:
            body.pop("requires", None)
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class SignedManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest: Manifest
    signature: str  # base64 ed25519 signature of manifest.canonical_bytes()
    key_id: str  # first 16 hex chars of sha256 of the raw public key


def key_id_of(public_key_raw: bytes) -> str:
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


class SignatureError(Exception):
    """A manifest whose signature does not verify against the trusted key."""


def verify_manifest(signed: SignedManifest, public_keys: bytes | Sequence[bytes]) -> Manifest:
    """Return the manifest if its signature checks out with one of the trusted keys, else raise.

    `public_keys` is one raw ed25519 key or several (key rotation: the hub's current key and the
    keys it used before or will use next); the manifest's `key_id` picks the key to check with.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = [public_keys] if isinstance(public_keys, (bytes, bytearray)) else list(public_keys)
    by_id = {key_id_of(bytes(k)): bytes(k) for k in keys}
    key = by_id.get(signed.key_id)
    if key is None:
        trusted = ", ".join(by_id) or "none"
        raise SignatureError(f"manifest signed by key {signed.key_id}, trusted keys are {trusted}")
    try:
        signature = base64.b64decode(signed.signature, validate=True)
        Ed25519PublicKey.from_public_bytes(key).verify(signature, signed.manifest.canonical_bytes())
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(f"bad signature on manifest of {signed.manifest.variant_id}") from exc
    return signed.manifest
