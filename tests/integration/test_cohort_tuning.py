"""A cohort shares its tuned runtime settings as it shares its variant: the sampled devices tune,
the hub pools their runs (the median p50 per setting), and the followers run the cohort's variant
with the pooled settings without tuning anything themselves."""

from __future__ import annotations

import uuid

from edgehub.hub.control.cohorts import CohortPolicy, cohort_key
from edgehub.hub.control.selection import Policy
from edgehub.hub.control.settings import FleetSettings
from edgehub.hub.control.worker import FleetService
from edgehub.hub.fleet.records import EnrollRequest
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.home import HubPaths
from edgehub.hub.publish.pipeline import PublishOptions, publish
from edgehub.protocol.messages import BenchmarkReport, BenchmarkSettings, DeviceState, Hardware, Latency
from edgehub.protocol.runtime_settings import RuntimeSettings
from edgehub.zoo.profiles import load_profiles
from edgehub.zoo.registry import Registry

DEVICES = ("cam-01", "cam-02", "cam-03")


def run(device: str, variant: str, p50: float, settings: RuntimeSettings | None = None) -> BenchmarkReport:
    return BenchmarkReport(event_id=uuid.uuid4().hex, device_id=device, generation=1, variant_id=variant, ok=True,
                           runtime="onnxruntime", latency=Latency(p50_ms=p50, p90_ms=p50, p99_ms=p50 * 1.2,
                                                                  mean_ms=p50, runs=50),
                           agreement=1.0, peak_rss_mb=50, settings=settings, slot="digits")


def test_followers_run_the_cohorts_variant_with_its_pooled_settings(tmp_path, tiny_mlp):
    paths = HubPaths.from_home(tmp_path / "home")
    registry, store = Registry(paths.db_url), FleetStore(paths.db_url)
    outcome = publish(PublishOptions(source=str(tiny_mlp["onnx"]), name="digits", eval_path=tiny_mlp["eval"]),
                      paths, registry)
    ids = {v.label: v.id for v in outcome.variants}
    store.enroll_many([EnrollRequest(id=d, profile="x86-cpu", password_hash="h") for d in DEVICES])
    hw = Hardware(arch="x86_64", cores=2, ram_mb=4096)
    store.ingest([DeviceState(schema_version=2, device_id=d, online=True, hardware=hw, slots=[],
                              runtimes={"onnxruntime": "1.20.0"}) for d in DEVICES], [], cohort_of=cohort_key)
    store.deploy("digits", 1, ["x86-cpu"])
    settings = FleetSettings(fleet="default", broker_url="mqtt://127.0.0.1:9", username="u", password="p",
                             artifact_base_url="http://127.0.0.1:9/", url_secret=b"s" * 32, policy=Policy(),
                             benchmark=BenchmarkSettings(), share_group="g", cohorts=CohortPolicy(sample_size=2),
                             tune_budget_s=30)
    service = FleetService(settings, registry, store, load_profiles())
    service._reconcile(store.device_ids())

    def slot(device: str):
        desired = store.desired(device)
        return desired.slots[0] if desired and desired.slots else None

    sampled = [d for d in DEVICES if slot(d) and len(slot(d).candidates) == len(ids)]
    [follower] = [d for d in DEVICES if d not in sampled]
    assert len(sampled) == 2 and all(slot(d).tuning is not None for d in sampled)
    # The samples measure every variant at the defaults (fp32 fastest) and tune it: one thread is
    # faster on both; two threads on one device only, and slower.
    reports = [run(d, v, 1.0 if label == "fp32" else 3.0) for d in sampled for label, v in ids.items()]
    reports += [run(sampled[0], ids["fp32"], 0.60, RuntimeSettings(threads=1)),
                run(sampled[1], ids["fp32"], 0.70, RuntimeSettings(threads=1)),
                run(sampled[0], ids["fp32"], 1.40, RuntimeSettings(threads=2))]
    store.ingest([], reports)
    service._reconcile(store.device_ids())
    for d in sampled:
        assert slot(d).activate == ids["fp32"] and slot(d).activate_settings == RuntimeSettings(threads=1)
    # The follower checks the cohort's variant itself first, and tunes nothing.
    assert [c.variant_id for c in slot(follower).candidates] == [ids["fp32"]] and slot(follower).tuning is None
    store.ingest([], [run(follower, ids["fp32"], 1.05)])
    service._reconcile(store.device_ids())
    mine = slot(follower)
    assert mine.activate == ids["fp32"] and mine.activate_settings == RuntimeSettings(threads=1) and mine.tuning is None
    [selection] = store.selections_many([follower])[follower]
    pooled = {tuple(sorted(p["settings"].items())): p for p in selection.explanation["pooled_pairs"]}
    assert pooled[(("threads", 1),)]["median_p50_ms"] == 0.60 and pooled[(("threads", 1),)]["selected"]
    assert pooled[()]["devices"] == 2  # the defaults, measured on both samples
    assert (("threads", 2),) in pooled  # one of the two tuning devices measured it: half is enough
    assert selection.explanation["settings"] == {"threads": 1}
