"""The hub sends a device only the variants its runtime can load: a device whose ONNX Runtime is too
old for the graphs' opset gets none of them, with the reason in its selection (`fleet explain`'s
"not sent"), while a device of the same profile with a newer runtime gets them all."""

from __future__ import annotations

from edgehub.hub.control.selection import Policy
from edgehub.hub.control.settings import FleetSettings
from edgehub.hub.control.worker import FleetService
from edgehub.hub.fleet.records import EnrollRequest
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.home import HubPaths
from edgehub.hub.publish.pipeline import PublishOptions, publish
from edgehub.protocol.messages import BenchmarkSettings, DeviceState, Hardware
from edgehub.zoo.profiles import load_profiles
from edgehub.zoo.registry import Registry


def test_candidates_follow_the_device_runtime_version(tmp_path, tiny_mlp):
    paths = HubPaths.from_home(tmp_path / "home")
    registry, store = Registry(paths.db_url), FleetStore(paths.db_url)
    outcome = publish(PublishOptions(source=str(tiny_mlp["onnx"]), name="digits", eval_path=tiny_mlp["eval"]),
                      paths, registry)
    for v in outcome.variants:  # publish read the requirements off each file and signed them
        requires = v.signed_manifest.manifest.requires
        assert requires is not None and requires.runtimes == ["onnxruntime"] and requires.onnx_opset >= 16
    store.enroll_many([EnrollRequest(id=d, profile="x86-cpu", password_hash="h") for d in ("old-ort", "new-ort")])
    hw = Hardware(arch="x86_64", cores=2, ram_mb=4096)
    store.ingest([DeviceState(device_id="old-ort", online=True, hardware=hw, runtimes={"onnxruntime": "1.12.1"}),
                  DeviceState(device_id="new-ort", online=True, hardware=hw, runtimes={"onnxruntime": "1.20.0"})], [])
    store.deploy("digits", 1, ["x86-cpu"])
    settings = FleetSettings(fleet="default", broker_url="mqtt://127.0.0.1:9", username="u", password="p",
                             artifact_base_url="http://127.0.0.1:9/", url_secret=b"s" * 32, policy=Policy(),
                             benchmark=BenchmarkSettings(), share_group="g")
    FleetService(settings, registry, store, load_profiles())._reconcile(store.device_ids())

    assert sorted(c.variant_id for c in store.desired("new-ort").candidates) == sorted(v.id for v in outcome.variants)
    old = store.desired("old-ort")
    assert old is None or old.candidates == []
    [selection] = store.selections_many(["old-ort"])["old-ort"]
    assert selection.winner is None
    not_sent = {n["variant_id"]: n["reason"] for n in selection.explanation["not_sent"]}
    assert set(not_sent) == {v.id for v in outcome.variants}
    assert all("onnxruntime 1.12.1 runs ONNX opset <= 15" in why for why in not_sent.values()), not_sent
