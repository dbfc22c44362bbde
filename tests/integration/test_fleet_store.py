"""FleetStore on SQLite and PostgreSQL: devices, idempotent events, reports, desired states."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edgehub.hub.fleet.records import FleetError, SelectionRecord
from edgehub.hub.fleet.store import FleetStore
from edgehub.protocol.messages import (
    ActivationResult,
    AgentError,
    BenchmarkReport,
    DesiredState,
    DeviceState,
    Hardware,
    Latency,
)
from edgehub.protocol.wire import encode, parse_event

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


@pytest.fixture
def store(fleet_store: FleetStore) -> FleetStore:
    return fleet_store


def bench(event_id: str, variant: str = "v-int8", device: str = "dev-1", *, at: datetime = T0, p50: float = 2.0,
          ok: bool = True, error: str | None = None, generation: int = 1) -> BenchmarkReport:
    latency = Latency(p50_ms=p50, p90_ms=p50, p99_ms=p50 * 2, mean_ms=p50, runs=50) if ok else None
    return BenchmarkReport(event_id=event_id, device_id=device, generation=generation, variant_id=variant, ok=ok,
                           error=error, latency=latency, peak_rss_mb=100.0, agreement=1.0, at=at)


def online_state(device: str = "dev-1", active: str | None = "v-int8") -> DeviceState:
    return DeviceState(device_id=device, online=True, profile="x86-cpu", agent_version="0.1.0",
                       runtimes={"onnxruntime": "1.20.1"}, hardware=Hardware(arch="x86_64", cores=4, ram_mb=8000),
                       active_variant=active, cached_variants=[active] if active else [], generation_seen=2, at=T0)


# ---- devices -------------------------------------------------------------------------------------

def test_enroll_and_read(store: FleetStore):
    rec = store.enroll("dev-1", "x86-cpu", "hash-1", tags=["lab", "b", "lab"])
    assert rec.id == "dev-1" and rec.profile == "x86-cpu" and rec.tags == ["b", "lab"]
    assert rec.online is False and rec.state is None and rec.last_seen is None and rec.active_variant is None
    assert rec.enrolled_at.tzinfo is not None
    assert store.get_device("dev-1") == rec
    assert store.password_hash("dev-1") == "hash-1"
    assert store.get_device("nope") is None and store.password_hash("nope") is None


def test_duplicate_enroll_is_an_error_replace_issues_new_credentials(store: FleetStore):
    first = store.enroll("dev-1", "x86-cpu", "hash-1")
    with pytest.raises(FleetError, match="already enrolled"):
        store.enroll("dev-1", "rpi-4", "hash-2")
    assert store.password_hash("dev-1") == "hash-1" and store.get_device("dev-1").profile == "x86-cpu"
    store.update_state(online_state())
    again = store.enroll("dev-1", "rpi-4", "hash-2", tags=["new"], replace=True)
    assert again.profile == "rpi-4" and again.tags == ["new"] and store.password_hash("dev-1") == "hash-2"
    assert again.enrolled_at == first.enrolled_at
    assert again.state is not None  # what the device reported is kept
    assert len(store.devices()) == 1


def test_replace_of_unknown_device_enrolls_it(store: FleetStore):
    assert store.enroll("dev-9", "x86-cpu", "h", replace=True).id == "dev-9"


def test_devices_listed_by_id_and_filtered_by_profile(store: FleetStore):
    store.enroll("dev-b", "x86-cpu", "h")
    store.enroll("dev-a", "rpi-4", "h")
    store.enroll("dev-c", "x86-cpu", "h")
    assert [d.id for d in store.devices()] == ["dev-a", "dev-b", "dev-c"]
    assert [d.id for d in store.devices("x86-cpu")] == ["dev-b", "dev-c"]
    assert store.devices("coral-edgetpu") == []


def test_revoke(store: FleetStore):
    store.enroll("dev-1", "x86-cpu", "h")
    store.enroll("dev-2", "x86-cpu", "h")
    store.set_desired(DesiredState(device_id="dev-1", generation=1))
    store.revoke("dev-1")
    assert store.get_device("dev-1") is None and store.password_hash("dev-1") is None
    assert store.desired("dev-1") is None
    assert [d.id for d in store.devices()] == ["dev-2"]
    with pytest.raises(FleetError, match="no device"):
        store.revoke("dev-1")
    # A revoked device can be enrolled again.
    assert store.enroll("dev-1", "x86-cpu", "h2").id == "dev-1"


# ---- state ----------------------------------------------------------------------------------------

def test_state_of_unknown_device_returns_false(store: FleetStore):
    assert store.update_state(online_state("ghost")) is False
    assert store.get_device("ghost") is None and store.devices() == []


def test_online_state_stored(store: FleetStore):
    store.enroll("dev-1", "x86-cpu", "h")
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    assert store.update_state(online_state()) is True
    rec = store.get_device("dev-1")
    assert rec.online is True and rec.active_variant == "v-int8"
    assert rec.state == online_state()
    assert rec.last_seen is not None and rec.last_seen >= before


def test_last_will_keeps_what_was_known_and_flips_online(store: FleetStore):
    store.enroll("dev-1", "x86-cpu", "h")
    store.update_state(online_state())
    will = DeviceState(device_id="dev-1", online=False, profile="x86-cpu")  # what the Last Will carries
    assert store.update_state(will) is True
    rec = store.get_device("dev-1")
    assert rec.online is False
    assert rec.state.online is False
    assert rec.state.runtimes == {"onnxruntime": "1.20.1"} and rec.state.hardware.cores == 4
    assert rec.state.active_variant == "v-int8" and rec.active_variant == "v-int8"
    # Back online with a new variant: everything is replaced.
    assert store.update_state(online_state(active="v-fp32"))
    rec = store.get_device("dev-1")
    assert rec.online is True and rec.active_variant == "v-fp32" and rec.state.active_variant == "v-fp32"


def test_last_will_as_first_state_is_stored(store: FleetStore):
    store.enroll("dev-1", "x86-cpu", "h")
    assert store.update_state(DeviceState(device_id="dev-1", online=False))
    rec = store.get_device("dev-1")
    assert rec.online is False and rec.state is not None and rec.state.runtimes == {}


# ---- events ---------------------------------------------------------------------------------------

def mixed_batch() -> list:
    return [
        bench("evt-bench-0001"),
        ActivationResult(event_id="evt-act-00001", device_id="dev-1", generation=2, variant_id="v-int8", ok=True,
                         at=T0 + timedelta(seconds=5)),
        AgentError(event_id="evt-err-00001", device_id="dev-1", generation=2, error="download failed", at=T0),
    ]


def test_record_events_once_each_when_redelivered(store: FleetStore):
    assert store.record_events(mixed_batch()) == 3
    assert store.record_events(mixed_batch()) == 0
    assert store.count_events() == 3
    # A batch mixing old and new events counts only the new ones.
    assert store.record_events([*mixed_batch(), bench("evt-bench-0002", variant="v-fp32")]) == 1
    assert store.count_events() == 4


def test_record_events_repeated_inside_one_batch(store: FleetStore):
    batch = mixed_batch()
    assert store.record_events([batch[0], batch[0], batch[1], batch[0], batch[2], batch[1]]) == 3
    assert store.count_events() == 3
    assert len(store.reports("dev-1", ["v-int8"])) == 1


def test_record_no_events(store: FleetStore):
    assert store.record_events([]) == 0
    assert store.record_events(iter([])) == 0
    assert store.count_events() == 0


def test_record_events_accepts_a_generator(store: FleetStore):
    assert store.record_events(e for e in mixed_batch()) == 3


def test_events_read_back_by_device(store: FleetStore):
    store.record_events([*mixed_batch(), bench("evt-other-0001", device="dev-2")])
    bodies = store.events("dev-1")
    assert sorted(b["event_id"] for b in bodies) == ["evt-act-00001", "evt-bench-0001", "evt-err-00001"]
    assert {b["kind"] for b in bodies} == {"benchmark", "activation", "error"}
    assert len(store.events()) == 4 and [b["event_id"] for b in store.events("dev-2")] == ["evt-other-0001"]
    assert parse_event(json.dumps(store.events("dev-2")[0]).encode(), device="dev-2") == bench("evt-other-0001",
                                                                                              device="dev-2")


def test_first_delivery_wins_for_a_repeated_event_id(store: FleetStore):
    store.record_events([bench("evt-bench-0001", p50=2.0)])
    store.record_events([bench("evt-bench-0001", p50=9.0)])  # same id, different body: a duplicate
    assert [b["latency"]["p50_ms"] for b in store.events()] == [2.0]


def test_events_survive_reopening(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/fleet.db"
    first = FleetStore(url)
    assert first.record_events(mixed_batch()) == 3
    first.close()
    second = FleetStore(url)
    try:
        assert second.record_events(mixed_batch()) == 0 and second.count_events() == 3
        assert "v-int8" in second.reports("dev-1", ["v-int8"])
    finally:
        second.close()


# ---- benchmark rows -------------------------------------------------------------------------------

def test_reports_keep_newest_per_device_and_variant(store: FleetStore):
    store.record_events([bench("evt-new-00001", at=T0 + timedelta(minutes=5), p50=3.0)])
    store.record_events([bench("evt-old-00001", at=T0, p50=9.0)])  # late delivery of an older report
    assert store.reports("dev-1", ["v-int8"])["v-int8"].event_id == "evt-new-00001"
    store.record_events([bench("evt-newer-0001", at=T0 + timedelta(minutes=10), p50=1.0)])
    got = store.reports("dev-1", ["v-int8"])["v-int8"]
    assert got.event_id == "evt-newer-0001" and got.latency.p50_ms == 1.0
    assert got == bench("evt-newer-0001", at=T0 + timedelta(minutes=10), p50=1.0)


def test_reports_newest_within_one_batch(store: FleetStore):
    store.record_events([bench("evt-b-000002", at=T0 + timedelta(seconds=2)), bench("evt-b-000001", at=T0),
                         bench("evt-b-000003", at=T0 + timedelta(seconds=1))])
    assert store.reports("dev-1", ["v-int8"])["v-int8"].event_id == "evt-b-000002"


def test_reports_are_per_device_and_filtered_by_variant(store: FleetStore):
    store.record_events([bench("evt-d1-int8-1", "v-int8", "dev-1", p50=2.0),
                         bench("evt-d1-fp32-1", "v-fp32", "dev-1", p50=4.0),
                         bench("evt-d2-int8-1", "v-int8", "dev-2", p50=7.0)])
    d1 = store.reports("dev-1", ["v-int8", "v-fp32", "v-missing"])
    assert set(d1) == {"v-int8", "v-fp32"} and d1["v-int8"].latency.p50_ms == 2.0
    assert store.reports("dev-2", ["v-int8"])["v-int8"].latency.p50_ms == 7.0
    assert store.reports("dev-1", ["v-fp32"]).keys() == {"v-fp32"}
    assert store.reports("dev-1", []) == {}
    assert store.reports("dev-3", ["v-int8"]) == {}


def test_non_benchmark_events_make_no_report(store: FleetStore):
    store.record_events(mixed_batch()[1:])  # an ok activation and an error
    assert store.reports("dev-1", ["v-int8"]) == {}


def test_failed_activation_turns_the_report_into_a_failure(store: FleetStore):
    store.record_events([bench("evt-bench-0001", at=T0)])
    ok = ActivationResult(event_id="evt-act-00001", device_id="dev-1", generation=2, variant_id="v-int8", ok=True,
                          at=T0 + timedelta(seconds=1))
    store.record_events([ok])
    assert store.reports("dev-1", ["v-int8"])["v-int8"].ok is True
    failed = ActivationResult(event_id="evt-act-00002", device_id="dev-1", generation=3, variant_id="v-int8",
                              ok=False, rolled_back_to="v-fp32", error="health check: NaN outputs",
                              at=T0 + timedelta(seconds=2))
    assert store.record_events([failed]) == 1
    report = store.reports("dev-1", ["v-int8"])["v-int8"]
    assert report.ok is False and report.latency is None
    assert "after activation" in report.error and "NaN outputs" in report.error
    assert report.generation == 3 and report.event_id == "evt-act-00002"
    assert store.count_events() == 3
    assert [b["kind"] for b in store.events() if b["event_id"] == "evt-act-00002"] == ["activation"]


def test_failed_activation_without_earlier_report(store: FleetStore):
    store.record_events([ActivationResult(event_id="evt-act-00009", device_id="dev-1", generation=1,
                                          variant_id="v-fp16", ok=False)])
    report = store.reports("dev-1", ["v-fp16"])["v-fp16"]
    assert report.ok is False and "unknown error" in report.error


def test_wire_edge_values_store_on_every_backend(store: FleetStore):
    # What parse_event accepts, the database must take: a naive time, the largest generation.
    raw = json.loads(encode(bench("evt-edge-00001")))
    raw.update(at="2025-03-01T12:00:00", generation=2**31 - 1, error="line\nbreak \u2603")
    event = parse_event(json.dumps(raw).encode(), device="dev-1")
    assert store.record_events([event]) == 1
    assert store.record_events([bench("evt-edge-00002", at=T0 + timedelta(days=1))]) == 1  # compares times
    got = store.reports("dev-1", ["v-int8"])["v-int8"]
    assert got.event_id == "evt-edge-00002"


# ---- desired, deployments, selections -------------------------------------------------------------

def test_desired_set_get_overwrite(store: FleetStore):
    store.enroll("dev-1", "x86-cpu", "h")
    assert store.desired("dev-1") is None
    d1 = DesiredState(device_id="dev-1", generation=1, model="mnist", version=1, at=T0)
    store.set_desired(d1)
    assert store.desired("dev-1") == d1
    d2 = d1.model_copy(update={"generation": 2, "activate": "v-int8"})
    store.set_desired(d2)
    assert store.desired("dev-1") == d2
    assert store.desired("dev-2") is None


def test_deployments_newest_per_profile_wins(store: FleetStore):
    assert store.deployment_for("x86-cpu") is None
    store.deploy("mnist", 1, ["x86-cpu", "rpi-4", "x86-cpu"])
    assert store.deployment_for("x86-cpu") == ("mnist", 1) and store.deployment_for("rpi-4") == ("mnist", 1)
    store.deploy("mnist", 2, ["x86-cpu"])
    assert store.deployment_for("x86-cpu") == ("mnist", 2) and store.deployment_for("rpi-4") == ("mnist", 1)
    store.deploy("mnist", 1, ["x86-cpu"])  # a rollback to an older version is a newer deployment
    assert store.deployment_for("x86-cpu") == ("mnist", 1)
    store.deploy("resnet", 3, ("rpi-4",))
    assert store.deployment_for("rpi-4") == ("resnet", 3)
    # Another model is a second slot, not a replacement: both stay in production.
    assert store.deployment_for("rpi-4", "mnist") == ("mnist", 1)
    assert sorted(a.model for a in store.aliases("profile:rpi-4")) == ["mnist", "resnet"]
    assert store.deployment_for("coral-edgetpu") is None


def test_selections_save_overwrite_read(store: FleetStore):
    assert store.selection("dev-1") is None
    first = SelectionRecord(device_id="dev-1", model="mnist", version=1, winner="v-int8",
                            explanation={"winner": "v-int8", "verdicts": [{"variant_id": "v-int8", "reason": "x"}]},
                            decided_at=T0)
    store.save_selection(first)
    assert store.selection("dev-1") == first
    second = SelectionRecord(device_id="dev-1", model="mnist", version=2, winner=None,
                             explanation={"winner": None, "verdicts": []}, decided_at=T0 + timedelta(hours=1))
    store.save_selection(second)
    assert store.selection("dev-1") == second
    assert store.selection("dev-2") is None


# ---- batches, groups, aliases, rollouts, cohorts, views -----------------------------------

from edgehub.hub.fleet.records import (  # noqa: E402
    CohortDecisionRecord,
    EnrollRequest,  # noqa: E402
    RolloutOutcome,
)
from edgehub.hub.fleet.views import StatusFilter  # noqa: E402


def enroll_fleet(store: FleetStore, n: int, profile: str = "x86-cpu", tags: list[str] | None = None,
                 prefix: str = "dev") -> list[str]:
    ids = [f"{prefix}-{i:03d}" for i in range(n)]
    assert store.enroll_many([EnrollRequest(id=i, profile=profile, password_hash="h", tags=tags or [])
                              for i in ids], simulated=True) == n
    return ids


def test_enroll_many_and_tags(store: FleetStore):
    ids = enroll_fleet(store, 5, tags=["lab"])
    assert store.get_device(ids[0]).simulated and store.get_device(ids[0]).tags == ["lab"]
    with pytest.raises(FleetError, match="already enrolled"):
        store.enroll_many([EnrollRequest(id=ids[0], profile="x86-cpu", password_hash="h")])
    # replace: new profile, tags and hash; nothing duplicated
    assert store.enroll_many([EnrollRequest(id=ids[0], profile="rpi5", password_hash="h2", tags=["b"])],
                             replace=True) == 0
    assert store.get_device(ids[0]).profile == "rpi5" and store.password_hash(ids[0]) == "h2"
    assert store.device_ids(tag="lab") == ids[1:] and store.device_ids(tag="b") == [ids[0]]
    records = store.set_tags(ids[1:3], add=["edge", "lab"], remove=["lab"])
    assert [r.tags for r in records] == [["edge"], ["edge"]]
    assert store.device_ids(tag="edge") == ids[1:3] and store.device_ids(tag="lab") == ids[3:]
    assert store.device_ids(profile="x86-cpu", tag="edge") == ids[1:3]
    with pytest.raises(FleetError, match="no device 'ghost'"):
        store.set_tags(["ghost", ids[1]], add=["x"])
    assert store.get_device(ids[1]).tags == ["edge"]  # the failed call changed nothing
    store.revoke(ids[1])
    assert store.device_ids(tag="edge") == [ids[2]]
    store.enroll("solo", "x86-cpu", "h", tags=["edge"])
    assert "solo" in store.device_ids(tag="edge") and not store.get_device("solo").simulated


def test_change_log_follows_writes(store: FleetStore):
    start = store.last_change_id()
    ids = enroll_fleet(store, 2)
    store.deploy("m", 1, ["x86-cpu"])
    store.set_tags([ids[0]], add=["lab"])
    changes = store.changes_after(start)
    assert [(c.kind, c.key) for c in changes] == [("device", ids[0]), ("device", ids[1]), ("profile", "x86-cpu"),
                                                  ("device", ids[0])]
    assert changes == sorted(changes, key=lambda c: c.id) and store.last_change_id() == changes[-1].id
    assert store.changes_after(changes[-1].id) == []
    assert store.prune_changes(datetime.now(timezone.utc) + timedelta(seconds=1)) >= 4
    assert store.changes_after(0) == []


def test_deploy_sets_the_profile_production_alias(store: FleetStore):
    store.deploy("m", 1, ["x86-cpu", "rpi5"])
    store.deploy("m", 2, ["x86-cpu"])
    aliases = {(a.scope, a.name): (a.model, a.version) for a in store.aliases()}
    assert aliases == {("profile:x86-cpu", "production"): ("m", 2), ("profile:rpi5", "production"): ("m", 1)}
    store.set_alias("group:lab", "canary", "m", 3)
    assert store.aliases("group:lab")[0].version == 3
    assert store.delete_alias("group:lab", "canary") and not store.delete_alias("group:lab", "canary")
    assert store.deployment_for("x86-cpu") == ("m", 2)  # the history is kept as before
    store.set_alias("profile:rpi5", "production", "m", 5)  # e.g. a rollout on profile:rpi5 completed
    assert store.deployment_for("rpi5") == ("m", 5)
    store.set_alias("profile:rpi5", "canary", "m", 6)
    assert store.deployment_for("rpi5") == ("m", 5)


def test_ingest_is_one_batch(store: FleetStore):
    ids = enroll_fleet(store, 3)
    rollout_id = store.create_rollout(model="m", version=2, selector="lab", scope="group:lab",
                                      state={"status": "running", "stage": 0},
                                      members={ids[0]: 0, ids[1]: 0, ids[2]: 1})
    before = store.last_change_id()
    result = store.ingest(
        [online_state(ids[0]), online_state("ghost"), online_state(ids[1], active="v-fp32")],
        [bench("evt-batch-001", device=ids[0]), bench("evt-batch-002", device=ids[1], variant="v-fp32"),
         bench("evt-batch-001", device=ids[0])],
        cohort_of=lambda profile, s: f"{profile}|{s.hardware.cores}c",
        outcomes=[RolloutOutcome(rollout_id=rollout_id, device_id=ids[0], status="activated", variant_id="v"),
                  RolloutOutcome(rollout_id=rollout_id, device_id=ids[1], status="failed", detail="health check")],
        notify=[ids[2]])
    assert result.new_events == 2 and result.unknown == {"ghost"} and result.changed == {ids[0], ids[1]}
    assert store.get_device(ids[0]).cohort == "x86-cpu|4c" and store.get_device(ids[0]).online
    assert store.count_events() == 2 and set(store.reports_many(ids, ["v-int8", "v-fp32"])) == {ids[0], ids[1]}
    assert store.rollout_counts(rollout_id) == {0: {"activated": 1, "failed": 1}, 1: {"pending": 1}}
    assert [(c.kind, c.key) for c in store.changes_after(before)] == [("device", ids[2])]
    # A failure is final: a later "activated" does not hide it.
    store.ingest([], [], outcomes=[RolloutOutcome(rollout_id=rollout_id, device_id=ids[1], status="activated")])
    assert store.rollout_counts(rollout_id)[0] == {"activated": 1, "failed": 1}
    # The same state again changes nothing that matters to reconciliation.
    assert store.ingest([online_state(ids[0])], [], cohort_of=lambda p, s: f"{p}|{s.hardware.cores}c").changed == set()


def test_report_facts_carry_what_selection_reads(store: FleetStore):
    store.record_events([bench("evt-facts-001", p50=3.0), bench("evt-facts-002", variant="v-bad", ok=False,
                                                                error="crashed")])
    facts = store.report_facts(["dev-1"], ["v-int8", "v-bad", "v-none"])["dev-1"]
    full = store.reports("dev-1", ["v-int8"])["v-int8"]
    assert set(facts) == {"v-int8", "v-bad"}
    assert facts["v-int8"].latency.p50_ms == full.latency.p50_ms == 3.0 and facts["v-int8"].latency.p99_ms == 6.0
    assert facts["v-int8"].agreement == 1.0 and facts["v-int8"].peak_rss_mb == 100.0 and facts["v-int8"].ok
    assert not facts["v-bad"].ok and facts["v-bad"].error == "crashed" and facts["v-bad"].latency is None
    assert store.reported_variants(["dev-1", "dev-2"]) == {"dev-1": {"v-int8", "v-bad"}}


def test_desired_summaries_and_pages(store: FleetStore):
    ids = enroll_fleet(store, 3)
    for n, device in enumerate(ids):
        store.set_desired(DesiredState(device_id=device, generation=n + 1, model="m", version=1, activate="v"))
    summaries = store.desired_summaries([*ids, "ghost"])
    assert set(summaries) == set(ids) and summaries[ids[2]].generation == 3
    assert summaries[ids[0]].model == "m" and summaries[ids[0]].activate == "v" and summaries[ids[0]].candidate_ids == ()
    pages = list(store.desired_pages(page=2))
    assert [len(p) for p in pages] == [2, 1] and sorted(b["device_id"] for p in pages for b in p) == ids


def test_selection_digest_changes_with_the_decision(store: FleetStore):
    record = SelectionRecord(device_id="dev-1", model="m", version=1, winner="a", explanation={"x": 1}, decided_at=T0)
    store.save_selection(record)
    assert store.selection_digests(["dev-1", "dev-2"]) == {("dev-1", record.model): record.digest()}
    later = record.model_copy(update={"decided_at": T0 + timedelta(hours=1)})
    assert later.digest() == record.digest()  # when is not what
    assert record.model_copy(update={"winner": "b"}).digest() != record.digest()


def test_rollout_rows_cas_members_and_aliases(store: FleetStore):
    ids = enroll_fleet(store, 4, tags=["lab"])
    state = {"status": "running", "stage": 0}
    rid = store.create_rollout(model="m", version=2, selector="lab", scope="group:lab", state=state,
                               members={ids[0]: 0, ids[1]: 1, ids[2]: 1},
                               alias_effects=[{"action": "set", "name": "canary", "model": "m", "version": 2}])
    assert store.aliases("group:lab")[0].name == "canary"
    with pytest.raises(FleetError, match="already active"):
        store.create_rollout(model="m", version=3, selector="lab", scope="group:lab", state=state, members={})
    assert store.rollout_member_ids(rid) == ids[:3] and store.rollout_member_ids(rid, [1]) == ids[1:3]
    assert store.rollout_members([ids[0], ids[3]]) == {ids[0]: [(rid, 0, "pending")]}
    assert store.save_rollout(rid, expected=("running", 0), state={"status": "running", "stage": 1},
                              scope="group:lab", only_stage=1)
    assert not store.save_rollout(rid, expected=("running", 0), state={"status": "paused", "stage": 0},
                                  scope="group:lab")  # someone moved it first
    assert store.get_rollout(rid).stage == 1 and store.changes_after(0)[-1].key == f"{rid}:1"
    store.save_rollout(rid, expected=("running", 1), state={"status": "rolled_back", "stage": 1}, scope="group:lab",
                       alias_effects=[{"action": "delete", "name": "canary"}])
    assert store.aliases("group:lab") == [] and store.rollouts(active_only=True) == []
    assert store.rollout_members(ids) == {}  # only active rollouts count
    store.save_plans(outcomes=[RolloutOutcome(rollout_id=rid, device_id=ids[0], status="activated")])
    assert [s for _, s in store.rollout_timeline(rid)] == ["activated"]
    assert [r.id for r in store.rollouts(model="m")] == [rid] and store.rollouts(model="x") == []


def test_cohort_samples_and_monotonic_decisions(store: FleetStore):
    ids = enroll_fleet(store, 3)
    key = ("x86-cpu|4c", "m", 1)
    store.save_plans(samples=[(key, ids[0], "sampled"), (key, ids[1], "sampled"), (key, ids[0], "again")])
    assert store.cohort_samples([key, ("other", "m", 1)]) == {key: {ids[0]: "sampled", ids[1]: "sampled"},
                                                             ("other", "m", 1): {}}

    def decision(winner: str, used: int) -> CohortDecisionRecord:
        return CohortDecisionRecord(cohort=key[0], model="m", version=1, winner=winner, reports_used=used,
                                    explanation={"winner": winner}, decided_at=T0)

    store.save_plans(decisions=[decision("int8", 4)])
    store.save_plans(decisions=[decision("fp32", 2)])  # made from fewer reports: ignored
    assert store.cohort_decisions([key])[key].winner == "int8"
    store.save_plans(decisions=[decision("fp16", 6)])
    assert store.cohort_decisions([key])[key].winner == "fp16" and store.cohort_decisions([("o", "m", 1)]) == {}


def test_status_rows_and_summary_with_filters(store: FleetStore):
    lab = enroll_fleet(store, 4, tags=["lab"], prefix="lab")
    pis = enroll_fleet(store, 2, profile="rpi5", prefix="pi")
    store.enroll("real-1", "x86-cpu", "h")
    store.ingest([online_state(lab[0]), online_state(lab[1], active="v-fp32"), online_state(pis[0])],
                 [bench("evt-view-0001", device=lab[0], p50=1.5)])
    store.save_selection(SelectionRecord(device_id=lab[0], model="m", version=1, winner="v-int8", explanation={},
                                         decided_at=T0))
    rows = store.status_rows()
    assert [r["device"] for r in rows] == sorted([*lab, *pis, "real-1"])
    row = next(r for r in rows if r["device"] == lab[0])
    assert row["online"] and row["simulated"] and row["p50_ms"] == 1.5 and row["selected_variant"] == "v-int8"
    assert row["runtimes"] == {"onnxruntime": "1.20.1"} and row["tags"] == ["lab"] and row["rollout"] is None
    assert [r["device"] for r in store.status_rows(StatusFilter(group="lab", online=True))] == lab[:2]
    assert [r["device"] for r in store.status_rows(StatusFilter(profile="rpi5"))] == pis
    assert [r["device"] for r in store.status_rows(StatusFilter(simulated=False))] == ["real-1"]
    assert len(store.status_rows(limit=3)) == 3 and store.status_rows(limit=3, offset=6)[0]["device"] == "real-1"
    summary = store.status_summary()
    assert (summary["devices"], summary["online"], summary["simulated"], summary["settled"]) == (7, 3, 6, 1)
    assert summary["profiles"]["rpi5"] == {"devices": 2, "online": 1, "settled": 0}
    rid = store.create_rollout(model="m", version=2, selector="lab", scope="group:lab",
                               state={"status": "running", "stage": 0}, members={lab[0]: 0, lab[1]: 1})
    assert [r["device"] for r in store.status_rows(StatusFilter(rollout=rid))] == lab[:2]
    assert store.status_rows(StatusFilter(rollout=rid))[0]["rollout"] == {"id": rid, "stage": 0, "status": "pending",
                                                                         "targeted": True}
    in_rollout = store.status_summary(StatusFilter(rollout=rid))
    assert in_rollout["devices"] == 2 and in_rollout["rollouts"][0]["counts"] == {0: {"pending": 1}, 1: {"pending": 1}}


@pytest.mark.parametrize("device_id", ["edgehub-hub", "edgehub-hub-1", "edgehub-hub-anything"])
def test_the_hub_broker_user_names_cannot_be_enrolled(store: FleetStore, device_id: str):
    """A device named like a hub worker would get (and overwrite) that worker's broker password."""
    with pytest.raises(FleetError, match="reserved"):
        store.enroll(device_id, "x86-cpu", "h")
    with pytest.raises(FleetError, match="reserved"):
        store.enroll_many([EnrollRequest(id="cam-01", profile="x86-cpu", password_hash="h"),
                           EnrollRequest(id=device_id, profile="x86-cpu", password_hash="h")])
    assert store.devices() == []  # nothing enrolled, not even the good id of the batch
