"""Downloads under faults: an agent killed mid-download, a connection cut by the network, a cache
that must stay under its limit, a disk that is full. Real agent processes, a real broker and
artifact server (tests/fault_harness.MiniHub), real model files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fault_harness import MiniHub, agent, wait_until
from fault_models import good_mlp

from edgehub.agent.cache import MB, CacheEntry, CacheFull, make_room, plan_eviction
from edgehub.agent.local_state import InstalledVariant, LocalState
from edgehub.protocol.manifest import Manifest, SignedManifest


@pytest.fixture
def mini(tmp_path):
    hub = MiniHub(tmp_path / "minihub")
    yield hub
    hub.stop()


def _benchmarks(mini: MiniHub, device: str) -> dict[str, dict]:
    return {e["variant_id"]: e for e in mini.event_bodies(device, "benchmark")}


def test_agent_killed_mid_download_resumes_and_verifies(mini, tmp_path):
    model, refs = good_mlp(tmp_path / "big.onnx", hidden=16384)  # 1.5 MB
    size = model.stat().st_size
    mini.http.max_bytes_per_s = size / 4  # about 4 s for the whole file
    config, path = mini.add_device("cam-01", tmp_path / "agents" / "cam-01")
    candidate = mini.candidate("cam-01", "m-big", model, references=refs)
    part = config.data_dir / "cache" / f"{candidate.sha256}.onnx.part"
    log = tmp_path / "cam-01.log"
    first = agent(path, log).start()
    mini.desired("cam-01", 1, [candidate])
    wait_until(lambda: part.exists() and part.stat().st_size > size * 0.3, 60, "the download to be under way")
    first.kill9()
    kept = part.stat().st_size
    # The server notices the dead peer only when a write fails: wait until it stops sending.
    counts = [-1]
    wait_until(lambda: counts.append(mini.http.bytes_sent) or counts[-1] == counts[-2], 10,
               "the server to stop sending", interval=1.0)
    sent_before = mini.http.bytes_sent
    assert 0 < kept < size
    assert not (config.data_dir / "cache" / f"{candidate.sha256}.onnx").exists()  # a part is never used
    assert "m-big" not in (config.data_dir / "state.json").read_text()

    mini.http.max_bytes_per_s = None
    second = agent(path, log).start()
    try:
        wait_until(lambda: "m-big" in _benchmarks(mini, "cam-01"), 60, "the benchmark report")
        report = _benchmarks(mini, "cam-01")["m-big"]
        assert report["ok"] and report["agreement"] == 1.0, report
        done = config.data_dir / "cache" / f"{candidate.sha256}.onnx"
        assert hashlib.sha256(done.read_bytes()).hexdigest() == candidate.sha256 and not part.exists()
        # Resumed, not restarted: after the restart the server sent only the missing bytes
        # (and the small reference file), not the whole model again.
        resent = mini.http.bytes_sent - sent_before
        assert resent <= size - kept + refs.stat().st_size + 4096, (resent, size, kept)
        print(f"\nkilled at {kept}/{size} bytes; the restart fetched {resent} bytes")
    finally:
        second.stop()


def test_connection_cut_mid_body_resumes_without_a_report_of_failure(mini, tmp_path):
    model, refs = good_mlp(tmp_path / "mlp.onnx", hidden=4096)
    size = model.stat().st_size
    config, path = mini.add_device("cam-01", tmp_path / "agents" / "cam-01")
    candidate = mini.candidate("cam-01", "m-cut", model, references=refs)
    cuts = [size // 3, size // 3]  # the first two GETs of the model each end a third of the way in
    gets: list[str] = []

    def fault(sha: str) -> int | None:
        gets.append(sha)
        return cuts.pop(0) if sha == candidate.sha256 and cuts else None

    mini.http.fault = fault
    device = agent(path, tmp_path / "cam-01.log").start()
    try:
        mini.desired("cam-01", 1, [candidate])
        wait_until(lambda: "m-cut" in _benchmarks(mini, "cam-01"), 60, "the benchmark report")
        assert _benchmarks(mini, "cam-01")["m-cut"]["ok"]
        assert gets.count(candidate.sha256) == 3  # two cut, one that finished: resumed each time
        assert mini.http.bytes_sent <= size + refs.stat().st_size + 4096
        assert not mini.event_bodies("cam-01", "error")  # retried inside the download: nothing to report
    finally:
        device.stop()


def test_cache_limit_evicts_least_recently_used_never_active_or_previous(mini, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    # 0.84 MB each under a 2 MB limit: two fit, three do not.
    files = {name: good_mlp(models / f"{name}.onnx", hidden=8738, seed=i) for i, name in enumerate("abcd")}
    config, path = mini.add_device("cam-01", tmp_path / "agents" / "cam-01", cache_limit_mb=2)
    cands = {n: mini.candidate("cam-01", f"m-{n}", m, references=r) for n, (m, r) in files.items()}
    device = agent(path, tmp_path / "cam-01.log").start()
    try:
        mini.desired("cam-01", 1, [cands["a"], cands["b"], cands["c"]], activate="m-a")
        wait_until(lambda: any(e["ok"] for e in mini.event_bodies("cam-01", "activation")), 60, "a active")
        mini.desired("cam-01", 2, list(cands.values()), activate="m-d")
        wait_until(lambda: len([e for e in mini.event_bodies("cam-01", "activation") if e["ok"]]) == 2, 60,
                   "d active")
        cache = config.data_dir / "cache"
        models_left = {p.name.split(".")[0] for p in cache.glob("*.onnx")}
        assert models_left == {cands["a"].sha256, cands["d"].sha256}  # previous and active
        used = sum(p.stat().st_size for p in cache.iterdir())
        assert used <= config.cache_limit_mb * MB
        assert "cache: evicted" in device.log()
        assert all(e["ok"] for e in mini.event_bodies("cam-01", "benchmark"))
    finally:
        device.stop()


def test_full_disk_guard_refuses_the_download_and_reports(mini, tmp_path):
    model, refs = good_mlp(tmp_path / "mlp.onnx")
    # Ask for more free space than this disk has: the guard must trip on the real statvfs figure.
    config, path = mini.add_device("cam-01", tmp_path / "agents" / "cam-01", min_free_mb=1 << 40)
    device = agent(path, tmp_path / "cam-01.log").start()
    try:
        mini.desired("cam-01", 1, [mini.candidate("cam-01", "m-1", model, references=refs)])
        wait_until(lambda: mini.event_bodies("cam-01", "error"), 60, "an error report")
        error = mini.event_bodies("cam-01", "error")[0]
        assert error["variant_id"] == "m-1" and "not enough disk space" in error["error"], error
        assert mini.http.bytes_sent == 0
        assert not any((config.data_dir / "cache").glob("*"))
        assert device.alive()
    finally:
        device.stop()


# ---- the eviction decision (pure) and its application to real files ---------------------------

def test_plan_eviction_orders_by_last_use_and_skips_protected():
    entries = [CacheEntry("variant:old", 40, 1.0), CacheEntry("variant:active", 40, 0.5, protected=True),
               CacheEntry("variant:new", 40, 9.0), CacheEntry("file:stray.part", 10, 99.0, stray=True)]
    evict = plan_eviction(entries, incoming=50, limit=140, free=10**9, min_free=0)
    assert [e.key for e in evict] == ["file:stray.part", "variant:old"]
    assert plan_eviction(entries, incoming=5, limit=140, free=10**9, min_free=0) == []
    # Disk, not the limit, is short: evict until the reserve is kept.
    evict = plan_eviction(entries, incoming=30, limit=10**6, free=100, min_free=100)
    assert sum(e.size for e in evict) >= 30
    with pytest.raises(CacheFull, match="over the cache limit"):
        plan_eviction(entries, incoming=200, limit=140, free=10**9, min_free=0)
    with pytest.raises(CacheFull, match="active and previous"):
        plan_eviction([CacheEntry("variant:a", 100, 1, True)], incoming=50, limit=120, free=10**9, min_free=0)
    with pytest.raises(CacheFull, match="not enough disk space"):
        plan_eviction(entries, incoming=10, limit=10**6, free=10**3, min_free=10**6)


def _installed(cache: Path, name: str, size: int, used: float) -> InstalledVariant:
    path = cache / f"{name}.onnx"
    path.write_bytes(b"x" * size)
    manifest = Manifest(variant_id=name, model="m", version=1, format="onnx", precision="fp32", sha256="0" * 64,
                        size_bytes=size, inputs=[], outputs=[], created_at="2026-01-01")
    return InstalledVariant(variant_id=name, sha256="0" * 64, format="onnx", path=path, last_used=used,
                            manifest=SignedManifest(manifest=manifest, signature="", key_id=""))


def test_make_room_deletes_files_and_keeps_active_and_previous(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    state = LocalState()
    for name, used in (("v1", 1.0), ("v2", 2.0), ("v3", 3.0), ("v4", 4.0)):
        state.installed[name] = _installed(cache, name, MB, used)
    state.slot("m").active, state.slot("m").previous = state.installed["v1"], state.installed["v2"]  # the two oldest
    (cache / "other.onnx.part").write_bytes(b"p" * 1000)
    dest = cache / "new.onnx"
    evicted = make_room(state, cache, dest, MB, limit_mb=3, min_free_mb=0)
    assert evicted == ["file:other.onnx.part", "variant:v3", "variant:v4"]
    assert sorted(state.installed) == ["v1", "v2"]
    assert sorted(p.name for p in cache.iterdir()) == ["v1.onnx", "v2.onnx"]
    with pytest.raises(CacheFull):
        make_room(state, cache, dest, MB, limit_mb=2, min_free_mb=0)
    assert sorted(state.installed) == ["v1", "v2"]  # a refusal evicts nothing


def test_a_cached_file_changed_on_disk_is_fetched_again_not_loaded(mini, tmp_path):
    """Verified at download is not enough: a model file that changes in the cache afterwards (bad
    flash, a process writing where it should not) is checked again before activation, and
    replaced, never loaded."""
    model, refs = good_mlp(tmp_path / "mlp.onnx")
    config, path = mini.add_device("cam-01", tmp_path / "agents" / "cam-01")
    candidate = mini.candidate("cam-01", "m-1", model, references=refs)
    gets: list[str] = []
    mini.http.fault = lambda sha: gets.append(sha)
    device = agent(path, tmp_path / "cam-01.log").start()
    try:
        mini.desired("cam-01", 1, [candidate])
        wait_until(lambda: "m-1" in _benchmarks(mini, "cam-01"), 60, "the benchmark")
        cached = config.data_dir / "cache" / f"{candidate.sha256}.onnx"
        data = bytearray(cached.read_bytes())
        data[-10] ^= 0xFF
        cached.write_bytes(bytes(data))
        mini.desired("cam-01", 2, [candidate], activate="m-1")
        wait_until(lambda: mini.event_bodies("cam-01", "activation"), 60, "the activation")
        assert mini.event_bodies("cam-01", "activation")[0]["ok"]
        assert gets.count(candidate.sha256) == 2  # fetched again
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == candidate.sha256
        assert "failed verification" in device.log()
    finally:
        device.stop()
