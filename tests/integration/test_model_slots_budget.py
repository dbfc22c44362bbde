"""Two models on a device whose memory limit both fastest variants together exceed: the hub's
reconcile moves one slot to a smaller eligible variant, says why, and leaves a new model out when
nothing fits; a v1 device of the same fleet gets one model and no budget applies."""

from __future__ import annotations

import uuid

from edgehub.hub.control.selection import Policy
from edgehub.hub.control.settings import FleetSettings
from edgehub.hub.control.worker import FleetService
from edgehub.hub.fleet.records import EnrollRequest
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.home import HubPaths
from edgehub.hub.publish.pipeline import PublishOptions, publish
from edgehub.protocol.messages import (
    BenchmarkReport,
    BenchmarkSettings,
    DeviceState,
    Hardware,
    Latency,
)
from edgehub.zoo.profiles import load_profiles
from edgehub.zoo.registry import Registry


def report(device: str, variant: str, p50: float, peak: float) -> BenchmarkReport:
    return BenchmarkReport(event_id=uuid.uuid4().hex, device_id=device, generation=1, variant_id=variant, ok=True,
                           runtime="onnxruntime", latency=Latency(p50_ms=p50, p90_ms=p50, p99_ms=p50 * 1.2,
                                                                  mean_ms=p50, runs=50), agreement=1.0,
                           peak_rss_mb=peak)


def test_the_memory_budget_moves_or_leaves_out_a_slot(tmp_path, tiny_mlp):
    paths = HubPaths.from_home(tmp_path / "home")
    registry, store = Registry(paths.db_url), FleetStore(paths.db_url)
    variants = {}
    for name in ("alpha", "beta"):
        outcome = publish(PublishOptions(source=str(tiny_mlp["onnx"]), name=name, eval_path=tiny_mlp["eval"]),
                          paths, registry)
        variants[name] = {v.label: v.id for v in outcome.variants}
    store.enroll_many([EnrollRequest(id=d, profile="x86-cpu", password_hash="h") for d in ("v2-dev", "v1-dev")])
    hw = Hardware(arch="x86_64", cores=4, ram_mb=4096)
    store.ingest([DeviceState(schema_version=2, device_id="v2-dev", online=True, hardware=hw, slots=[]),
                  DeviceState(device_id="v1-dev", online=True, hardware=hw)],
                 # fp32 is the fastest of each model and the largest (300 MB); fp16 is 10% slower and 120 MB.
                 [report(d, v, 1.0 if label == "fp32" else 1.1 if label == "fp16" else 5.0,
                         300 if label == "fp32" else 120 if label == "fp16" else 400)
                  for d in ("v2-dev", "v1-dev") for m in variants.values() for label, v in m.items()])
    store.deploy("alpha", 1, ["x86-cpu"])
    store.deploy("beta", 1, ["x86-cpu"])

    def reconcile(limit_mb: float) -> FleetService:
        settings = FleetSettings(fleet="default", broker_url="mqtt://127.0.0.1:9", username="u", password="p",
                                 artifact_base_url="http://127.0.0.1:9/", url_secret=b"s" * 32,
                                 policy=Policy(memory_limit_mb=limit_mb), benchmark=BenchmarkSettings(),
                                 share_group="g")
        service = FleetService(settings, registry, store, load_profiles())
        service._reconcile(store.device_ids())
        return service

    reconcile(450)
    desired = store.desired("v2-dev")
    activate = {s.model: s.activate for s in desired.slots}
    # 300 + 300 > 450: one slot moves to its fp16 (300 + 120 fits), the other keeps fp32.
    labels = {m: next(label for label, v in variants[m].items() if v == activate[m]) for m in activate}
    assert sorted(labels.values()) == ["fp16", "fp32"]
    moved = next(s for s in store.selections_many(["v2-dev"])["v2-dev"] if s.explanation.get("memory"))
    assert "instead of the faster" in moved.explanation["memory"]["reason"] and moved.winner.endswith("fp16")
    # The v1 device runs one model (the newest deployment), so no budget across models applies.
    v1 = store.desired("v1-dev")
    assert v1.schema_version == 1 and v1.model == "beta" and v1.activate == variants["beta"]["fp32"]

    reconcile(200)  # even the smallest eligible pair (240 MB) does not fit: one model is left out
    left_out = next(s for s in store.selections_many(["v2-dev"])["v2-dev"] if s.winner is None)
    assert left_out.explanation["memory"]["reason"].startswith("left out")
    # Its slot leaves the desired state (the device stops serving it); the other runs its fp16.
    [kept] = store.desired("v2-dev").slots
    assert kept.model != left_out.model and kept.activate == variants[kept.model]["fp16"]
