"""The contract between hub and agent: tensor specs, signed variant manifests, MQTT bodies.

Every side may import this module: it needs only pydantic and cryptography, and stays free
of torch, onnx, and anything from the hub or converters.
"""

from __future__ import annotations

import base64
import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

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

    def canonical_bytes(self) -> bytes:
        """Deterministic bytes to sign: sorted keys, no whitespace."""
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()


class SignedManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest: Manifest
    signature: str  # base64 ed25519 signature of manifest.canonical_bytes()
    key_id: str  # first 16 hex chars of sha256 of the raw public key


def key_id_of(public_key_raw: bytes) -> str:
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


class SignatureError(Exception):
    """A manifest whose signature does not verify against the trusted key."""


def verify_manifest(signed: SignedManifest, public_key_raw: bytes) -> Manifest:
    """Return the manifest if its signature checks out with `public_key_raw`, else raise."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if signed.key_id != key_id_of(public_key_raw):
        raise SignatureError(
            f"manifest signed by key {signed.key_id}, trusted key is {key_id_of(public_key_raw)}"
        )
    try:
        signature = base64.b64decode(signed.signature, validate=True)
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(
            signature, signed.manifest.canonical_bytes()
        )
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(f"bad signature on manifest of {signed.manifest.variant_id}") from exc
    return signed.manifest
