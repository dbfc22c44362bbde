"""Artifacts the agent must refuse: a flipped byte, a tampered manifest, a manifest signed by
another key, an unsigned one; URLs that expired or were issued to another device; and the
documented key rotation (stage, rotate, retire) with agents that trust a list of keys.
"""

from __future__ import annotations

import base64
import time

import pytest
from fault_harness import Crafted, MiniHub, agent, enroll, register_crafted, wait_until
from fault_models import good_mlp

from edgehub.agent.config import public_keys
from edgehub.agent.download import VerificationError, verify_artifact
from edgehub.hub.control.url_signing import sign_artifact_url
from edgehub.hub.home import HubPaths
from edgehub.hub.serve.enrollment import enroll_device
from edgehub.hub.serve.service import HubOptions, HubService
from edgehub.protocol.messages import BenchmarkSettings
from edgehub.zoo.signing import HubKey, list_keys, retire_key, rotate_key, stage_next_key
from edgehub.zoo.store import ArtifactStore

BENCH = BenchmarkSettings(time_budget_s=0.2, warmup_runs=1, min_runs=3, threads=1, timeout_s=30)


def _swap_model(other_sha: str, other_size: int):
    """An attacker with write access to the registry points the manifest at another file; the
    signature covers the old content, so it no longer verifies."""
    def tamper(signed):
        manifest = signed.manifest.model_copy(update={"sha256": other_sha, "size_bytes": other_size})
        return signed.model_copy(update={"manifest": manifest})
    return tamper


def test_tampered_and_foreign_artifacts_are_rejected_reported_never_activated(tmp_path):
    paths = HubPaths.from_home(tmp_path / "home")
    hub = HubService(paths, options=HubOptions(benchmark=BENCH, tick_s=0.3)).start()
    gets: list[str] = []
    hub.http.fault = lambda sha: gets.append(sha)  # records every GET of a body; cuts nothing
    device = None
    try:
        models = tmp_path / "models"
        models.mkdir()
        good, refs = good_mlp(models / "good.onnx")
        evil, _ = good_mlp(models / "evil.onnx", seed=66)
        evil_sha, evil_size = ArtifactStore(paths.artifacts_dir).put_file(evil)
        crafted = [
            Crafted("good", good, references=refs),
            Crafted("flipped", good_mlp(models / "f.onnx", seed=1)[0], flip_byte=True),
            Crafted("tampered", good_mlp(models / "t.onnx", seed=2)[0], tamper=_swap_model(evil_sha, evil_size)),
            Crafted("foreign-key", good_mlp(models / "k.onnx", seed=3)[0],
                    signer=HubKey.load_or_create(tmp_path / "attacker-keys")),
            Crafted("unsigned", good_mlp(models / "u.onnx", seed=4)[0],
                    tamper=lambda s: s.model_copy(update={"signature": ""})),
        ]
        records = {r.label: r for r in register_crafted(paths, hub.registry, "signed", crafted)}
        _, config_path = enroll(paths, "cam-01", tmp_path / "agents" / "cam-01")
        device = agent(config_path, tmp_path / "cam-01.log").start()
        hub.fleet.deploy("signed", 1, ["x86-cpu"])
        wait_until(lambda: (d := hub.fleet.get_device("cam-01")) is not None
                   and d.active_variant == records["good"].id, 90, "the good variant active")

        expected = {"flipped": "sha256 mismatch", "tampered": "bad signature",
                    "foreign-key": "trusted keys are", "unsigned": "bad signature"}
        for label, needle in expected.items():
            record = records[label]
            report = hub.fleet.reports("cam-01", [record.id]).get(record.id)
            assert report is not None and not report.ok and report.error.startswith("rejected"), (label, report)
            assert needle in report.error, (label, report.error)
            assert hub.fleet.get_device("cam-01").active_variant != record.id
        # A bad signature costs no download at all; the flipped file was fetched, failed, and deleted.
        for label in ("tampered", "foreign-key", "unsigned"):
            assert records[label].sha256 not in gets and evil_sha not in gets, label
        assert records["flipped"].sha256 in gets
        cache = tmp_path / "agents" / "cam-01" / "cache"
        assert not list(cache.glob(f"{records['flipped'].sha256}*"))
        assert not list(cache.glob(f"{evil_sha}*"))
        assert device.alive()
    finally:
        if device is not None:
            device.stop()
        hub.stop()


@pytest.fixture
def mini(tmp_path):
    hub = MiniHub(tmp_path / "minihub")
    yield hub
    hub.stop()


def test_expired_and_other_devices_urls_are_refused_and_reported(mini, tmp_path):
    model, refs = good_mlp(tmp_path / "m.onnx")
    _, path = mini.add_device("cam-01", tmp_path / "agents" / "cam-01")
    mini.add_device("cam-02", tmp_path / "agents" / "cam-02")
    expired = mini.candidate("cam-01", "m-expired", model, references=refs)
    expired = expired.model_copy(update={"url": sign_artifact_url(mini.http.base_url, expired.sha256, "cam-01",
                                                                  mini.secret, ttl_s=60, now=time.time() - 3600)})
    stolen = mini.candidate("cam-02", "m-stolen", model, references=refs)  # a URL issued to cam-02
    device = agent(path, tmp_path / "cam-01.log").start()
    try:
        mini.desired("cam-01", 1, [expired, stolen])
        wait_until(lambda: len(mini.event_bodies("cam-01", "error")) >= 2, 30, "two error reports")
        errors = {e["variant_id"]: e["error"] for e in mini.event_bodies("cam-01", "error")}
        assert "403" in errors["m-expired"] and "expired" in errors["m-expired"]
        assert "403" in errors["m-stolen"] and "another device" in errors["m-stolen"]
        assert mini.http.bytes_sent == 0
        assert "sig=" not in device.log()  # the signed URL is never logged
    finally:
        device.stop()


def test_key_rotation_stage_rotate_retire(tmp_path):
    paths = HubPaths.from_home(tmp_path / "home")
    keys = paths.keys_dir
    first = HubKey.load_or_create(keys)
    model, _ = good_mlp(tmp_path / "m.onnx")

    def signed_by(key: HubKey):
        from edgehub.protocol.files import sha256_file
        from edgehub.protocol.manifest import Manifest

        manifest = Manifest(variant_id="v", model="m", version=1, format="onnx", precision="fp32",
                            sha256=sha256_file(model), size_bytes=model.stat().st_size, inputs=[], outputs=[],
                            created_at="2026-01-01")
        return key.sign(manifest)

    old_manifest = signed_by(first)
    early = enroll_device(paths, "early", "x86-cpu", data_dir=tmp_path / "early")  # enrolled before any rotation
    assert public_keys(early) == [first.public_raw]

    staged = stage_next_key(keys)
    assert [k.role for k in list_keys(keys)] == ["active", "next"]
    assert HubKey.load_or_create(keys).key_id == first.key_id  # staging does not change the signer
    ready = enroll_device(paths, "ready", "x86-cpu", data_dir=tmp_path / "ready")
    assert public_keys(ready) == [first.public_raw, staged.public_raw]

    old_id, new_id = rotate_key(keys)
    assert (old_id, new_id) == (first.key_id, staged.key_id)
    active = HubKey.load_or_create(keys)
    assert active.key_id == staged.key_id
    new_manifest = signed_by(active)
    # The prepared agent takes both old and new manifests; the unprepared one refuses the new.
    assert verify_artifact(model, old_manifest, public_keys(ready)).variant_id == "v"
    assert verify_artifact(model, new_manifest, public_keys(ready)).variant_id == "v"
    with pytest.raises(VerificationError, match="trusted keys are"):
        verify_artifact(model, new_manifest, public_keys(early))
    later = enroll_device(paths, "later", "x86-cpu", data_dir=tmp_path / "later")
    assert public_keys(later) == [staged.public_raw, first.public_raw]  # the old key, until retired

    retire_key(keys, old_id)
    assert [k.role for k in list_keys(keys)] == ["active"]
    latest = enroll_device(paths, "latest", "x86-cpu", data_dir=tmp_path / "latest")
    with pytest.raises(VerificationError, match="trusted keys are"):
        verify_artifact(model, old_manifest, public_keys(latest))
    with pytest.raises(Exception, match="active key"):
        retire_key(keys, new_id)
    with pytest.raises(Exception, match="no trusted earlier key"):
        retire_key(keys, "../hub_ed25519")


def test_keys_cli_lists_stages_rotates_retires(tmp_path):
    import json
    import subprocess
    import sys

    home = str(tmp_path / "home")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "edgehub.hub.cli", "hub", "keys", *args, "--home", home],
                              capture_output=True, text=True, timeout=60)

    first = json.loads(cli("list", "--json").stdout)
    assert [k["role"] for k in first] == ["active"]
    assert cli("stage").returncode == 0
    assert cli("rotate").returncode == 0
    now = json.loads(cli("list", "--json").stdout)
    assert [k["role"] for k in now] == ["active", "trusted"] and now[1]["key_id"] == first[0]["key_id"]
    assert base64.b64decode(now[0]["public_b64"]) != base64.b64decode(first[0]["public_b64"])
    bad = cli("retire", now[0]["key_id"])
    assert bad.returncode == 1 and "active key" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert cli("retire", first[0]["key_id"]).returncode == 0
    assert [k["role"] for k in json.loads(cli("list", "--json").stdout)] == ["active"]


def test_urls_of_a_stored_desired_state_are_signed_again_before_they_expire(mini, tmp_path):
    """hub/control/url_refresh.py: an old desired state is found and re-signed; the device downloads with
    the fresh URL what it could not with the stale one."""
    from edgehub.hub.control.url_refresh import needs_refresh, refreshed, url_expiry
    from edgehub.hub.control.url_signing import check_signature
    from edgehub.protocol.messages import DesiredState

    model, refs = good_mlp(tmp_path / "m.onnx")
    _, path = mini.add_device("cam-01", tmp_path / "agents" / "cam-01")
    now = time.time()
    old = mini.candidate("cam-01", "m-1", model, references=refs)
    stale_url = sign_artifact_url(mini.http.base_url, old.sha256, "cam-01", mini.secret, ttl_s=600, now=now - 3600)
    old = old.model_copy(update={"url": stale_url})
    desired = DesiredState(device_id="cam-01", generation=7, candidates=[old])
    assert url_expiry(stale_url) < now and needs_refresh(desired, now)
    fresh = refreshed(desired, mini.http.base_url, mini.secret, ttl_s=7 * 86400, now=now)
    assert not needs_refresh(fresh, now)
    assert fresh.generation == 7 and fresh.candidates[0].manifest == old.manifest
    for url, sha in ((fresh.candidates[0].url, old.sha256),
                     (fresh.candidates[0].references_url, old.manifest.manifest.references_sha256)):
        query = dict(part.split("=") for part in url.split("?")[1].split("&"))
        assert check_signature(sha, "cam-01", query["exp"], query["sig"], mini.secret, now=now) is None
    assert needs_refresh(fresh, now + 7 * 86400 - 3600)  # within the margin of the new deadline

    device = agent(path, tmp_path / "cam-01.log").start()
    try:
        mini.desired("cam-01", 7, [old])
        wait_until(lambda: mini.event_bodies("cam-01", "error"), 30, "the expired-URL error")
        mini.desired("cam-01", 7, fresh.candidates)  # what the hub publishes after refreshing
        wait_until(lambda: mini.event_bodies("cam-01", "benchmark"), 30, "the benchmark with the fresh URL")
        assert mini.event_bodies("cam-01", "benchmark")[0]["ok"]
    finally:
        device.stop()
