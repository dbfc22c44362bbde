"""The hub's ed25519 key: created once, kept private, signatures the agent can verify."""

from __future__ import annotations

import base64
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edgehub.protocol.manifest import Manifest, SignatureError, TensorSpec, verify_manifest
from edgehub.zoo.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, HubKey, HubKeyError


def _manifest(**overrides: object) -> Manifest:
    fields: dict = dict(
        variant_id="mnist-v1-int8",
        model="mnist",
        version=1,
        format="onnx",
        precision="int8",
        sha256="ab" * 32,
        size_bytes=12345,
        inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", 1, 28, 28])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 10])],
        recipe=[{"pass": "quantize_static", "scheme": "reduce_range"}],
        created_at="2025-01-01T00:00:00+00:00",
    )
    fields.update(overrides)
    return Manifest(**fields)


def test_key_created_once_and_reused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = HubKey.load_or_create(keys)
    pem_bytes = (keys / PRIVATE_KEY_FILE).read_bytes()
    second = HubKey.load_or_create(keys)

    assert first.key_id == second.key_id
    assert first.public_raw == second.public_raw and len(first.public_raw) == 32
    assert (keys / PRIVATE_KEY_FILE).read_bytes() == pem_bytes
    assert sorted(p.name for p in keys.iterdir()) == [PRIVATE_KEY_FILE, PUBLIC_KEY_FILE]
    assert repr(first) == f"HubKey(key_id={first.key_id!r})"  # no key material in logs


def test_private_key_mode_0600_and_public_file(tmp_path: Path) -> None:
    key = HubKey.load_or_create(tmp_path / "keys")
    pem = tmp_path / "keys" / PRIVATE_KEY_FILE
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    pub_text = (tmp_path / "keys" / PUBLIC_KEY_FILE).read_text().strip()
    assert pub_text == key.public_b64
    assert base64.b64decode(pub_text) == key.public_raw


def test_public_file_restored_if_deleted(tmp_path: Path) -> None:
    key = HubKey.load_or_create(tmp_path)
    (tmp_path / PUBLIC_KEY_FILE).unlink()
    assert HubKey.load_or_create(tmp_path).key_id == key.key_id
    assert (tmp_path / PUBLIC_KEY_FILE).read_text().strip() == key.public_b64


def test_concurrent_first_use_yields_one_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(lambda _: HubKey.load_or_create(keys).key_id, range(16)))
    assert len(ids) == 1
    assert HubKey.load_or_create(keys).key_id in ids
    assert not [p for p in keys.iterdir() if p.name.endswith(".tmp")]


def test_sign_then_verify(tmp_path: Path) -> None:
    key = HubKey.load_or_create(tmp_path)
    manifest = _manifest()
    signed = key.sign(manifest)
    assert signed.key_id == key.key_id
    assert verify_manifest(signed, key.public_raw) == manifest
    # Survives the JSON round trip the manifest takes over MQTT.
    reparsed = type(signed).model_validate_json(signed.model_dump_json())
    assert verify_manifest(reparsed, key.public_raw) == manifest


def test_tampered_manifest_rejected(tmp_path: Path) -> None:
    key = HubKey.load_or_create(tmp_path)
    signed = key.sign(_manifest())
    tampered = signed.model_copy(
        update={"manifest": signed.manifest.model_copy(update={"sha256": "cd" * 32})}
    )
    with pytest.raises(SignatureError, match="bad signature"):
        verify_manifest(tampered, key.public_raw)


def test_other_keys_signature_rejected(tmp_path: Path) -> None:
    trusted = HubKey.load_or_create(tmp_path / "trusted")
    other = HubKey.load_or_create(tmp_path / "other")
    assert trusted.key_id != other.key_id
    signed = other.sign(_manifest())
    with pytest.raises(SignatureError, match="signed by key"):
        verify_manifest(signed, trusted.public_raw)
    # Claiming the trusted key's id does not help a forger.
    forged = signed.model_copy(update={"key_id": trusted.key_id})
    with pytest.raises(SignatureError, match="bad signature"):
        verify_manifest(forged, trusted.public_raw)


def test_corrupt_or_wrong_key_file(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / PRIVATE_KEY_FILE).write_bytes(b"not a pem")
    with pytest.raises(HubKeyError, match="cannot load hub key"):
        HubKey.load_or_create(tmp_path / "a")

    (tmp_path / "b").mkdir()
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "b" / PRIVATE_KEY_FILE).write_bytes(ec_pem)
    with pytest.raises(HubKeyError, match="expected an ed25519 key"):
        HubKey.load_or_create(tmp_path / "b")
