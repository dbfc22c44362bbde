"""Several models per device, the pure parts: targets per model, the slot planner (v1 and v2
layouts), the memory budget across slots, and the protocol's v2 bodies."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from test_fleet_planner import candidate

from edgehub.hub.control.memory_budget import SlotChoice, SlotOption, fit_budget
from edgehub.hub.control.planner import SlotWant, desired_of_plan, plan_device
from edgehub.hub.control.targets import resolve_target, resolve_targets
from edgehub.hub.fleet.records import AliasRecord, DesiredSummary
from edgehub.protocol.base import MessageError
from edgehub.protocol.messages import BenchmarkSettings, DesiredState, DeviceState, ModelSlot, SlotState
from edgehub.protocol.wire import encode, parse_body

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
SETTINGS = BenchmarkSettings()


def alias(scope: str, model: str, version: int, minutes: int) -> AliasRecord:
    return AliasRecord(scope=scope, name="production", model=model, version=version,
                       updated_at=T0 + timedelta(minutes=minutes))


# ---- targets: one per model ---------------------------------------------------------------------

def test_targets_are_one_per_model_newest_decision_first():
    production = {"profile:x86-cpu": [alias("profile:x86-cpu", "detector", 1, 0), alias("profile:x86-cpu", "cls", 3, 2)],
                  "group:lab": [alias("group:lab", "detector", 2, 5)]}
    targets = resolve_targets("x86-cpu", ["lab"], production, [], {})
    assert [(t.model, t.version) for t in targets] == [("detector", 2), ("cls", 3)]
    assert [(t.model, t.version) for t in resolve_targets("x86-cpu", [], production, [], {})] == \
        [("cls", 3), ("detector", 1)]
    # A one-model agent gets the newest decision, as before slots existed.
    assert resolve_target("x86-cpu", ["lab"], production, [], {}).model == "detector"
    assert resolve_targets("rpi5", [], production, [], {}) == []


# ---- the slot planner ---------------------------------------------------------------------------

def want(model: str, version: int = 1, winner: str | None = None) -> SlotWant:
    return SlotWant(target=(model, version), candidate_ids=(f"{model}-fp32", f"{model}-int8"), winner=winner)


def test_plan_device_adds_settles_and_drops_slots_with_one_generation_each_change():
    first = plan_device(None, [want("b"), want("a")], set(), SETTINGS, protocol=2)
    assert first.generation == 1 and [s.model for s in first.slots] == ["a", "b"]
    assert all(s.activate is None for s in first.slots)
    body = desired_of_plan("d1", first, {"a": [candidate("a-fp32"), candidate("a-int8")],
                                          "b": [candidate("b-fp32"), candidate("b-int8")]}, {})
    assert body.schema_version == 2 and body.model is None and [s.model for s in body.slots] == ["a", "b"]
    current = DesiredSummary.of(parse_body(encode(body), DesiredState))
    assert current.protocol == 2 and current.model == "a"  # the first slot in the summary's columns
    assert plan_device(current, [want("b"), want("a")], set(), SETTINGS, protocol=2) is None  # no churn

    # One slot's winner: one new generation, the other slot untouched.
    second = plan_device(current, [want("a", winner="a-int8"), want("b")], set(), SETTINGS, protocol=2)
    assert second.generation == 2
    assert {s.model: s.activate for s in second.slots} == {"a": "a-int8", "b": None}
    current = DesiredSummary(generation=2, slots=second.slots, protocol=2, model="a", version=1)

    # b is no longer targeted: its slot goes; c targeted without variants yet: kept as it is (absent).
    third = plan_device(current, [want("a", winner="a-int8")], {"c"}, SETTINGS, protocol=2)
    assert third.generation == 3 and [s.model for s in third.slots] == ["a"]
    # b targeted but waiting (a cohort deciding, no variants for the profile yet): kept.
    assert plan_device(current, [want("a", winner="a-int8")], {"b"}, SETTINGS, protocol=2) is None


def test_a_one_model_agent_gets_one_slot_in_the_v1_layout():
    plan = plan_device(None, [want("a", winner="a-int8"), want("b")], set(), SETTINGS, protocol=1)
    assert plan.protocol == 1 and [s.model for s in plan.slots] == ["a"]
    body = desired_of_plan("d1", plan, {"a": [candidate("a-fp32"), candidate("a-int8")]}, {})
    assert body.schema_version == 1 and body.slots is None and body.model == "a" and body.activate == "a-int8"
    assert "slots" not in {k for k, v in body.model_dump().items() if v is not None}
    current = DesiredSummary.of(body)
    assert plan_device(current, [want("a", winner="a-int8")], set(), SETTINGS, protocol=1) is None
    # The agent upgrades and announces v2: the same slot, now in the v2 layout (a new generation).
    upgraded = plan_device(current, [want("a", winner="a-int8"), want("b")], set(), SETTINGS, protocol=2)
    assert upgraded.protocol == 2 and [s.model for s in upgraded.slots] == ["a", "b"]
    assert upgraded.slots[0].activate == "a-int8" and upgraded.generation == current.generation + 1


# ---- memory budget --------------------------------------------------------------------------------

def choice(model: str, *options: tuple[str, float, float], running: bool = False) -> SlotChoice:
    return SlotChoice(model=model, running=running,
                      options=[SlotOption(variant_id=v, p50_ms=ms, peak_mb=mb) for v, ms, mb in options])


def test_budget_keeps_winners_that_fit_and_moves_the_fewest_slots_otherwise():
    a = choice("a", ("a-fp32", 1.0, 300), ("a-int8", 1.5, 120))
    b = choice("b", ("b-fp32", 2.0, 250), ("b-int8", 2.2, 200))
    assert fit_budget([a, b], 600).winners == {"a": "a-fp32", "b": "b-fp32"}
    assert fit_budget([a, b], None).reasons == {}
    tight = fit_budget([a, b], 450)
    # One slot moved suffices: a-int8 + b-fp32 = 370 MB (b-int8 alone would give 500 MB).
    assert tight.winners == {"a": "a-int8", "b": "b-fp32"} and tight.total_mb == 370
    assert "a-int8 instead of the faster a-fp32" in tight.reasons["a"] and "450 MB" in tight.reasons["a"]


def test_budget_leaves_out_a_new_model_before_a_running_one():
    running = choice("a", ("a-fp32", 1.0, 300), running=True)
    new = choice("b", ("b-fp32", 2.0, 250), ("b-int8", 2.2, 200))
    outcome = fit_budget([running, new], 400)
    assert outcome.winners == {"a": "a-fp32", "b": None}
    assert outcome.reasons["b"].startswith("left out") and "200 MB" in outcome.reasons["b"]
    assert outcome.total_mb == 300


# ---- protocol v2 bodies -----------------------------------------------------------------------------

def test_v2_bodies_validate_and_v1_bodies_read_as_one_slot():
    slot = ModelSlot(model="fashion-mnist", version=2, candidates=[candidate("f-int8")], activate="f-int8")
    body = DesiredState(schema_version=2, device_id="d1", generation=4, slots=[slot])
    assert parse_body(encode(body), DesiredState).model_slots() == [slot]
    v1 = DesiredState(device_id="d1", generation=1, model="m", version=1, candidates=[candidate("m-fp32")])
    assert [s.model for s in v1.model_slots()] == ["m"] and v1.all_candidates()[0].variant_id == "m-fp32"
    for bad, why in (
            ({"schema_version": 1, "slots": []}, "slots need schema_version 2"),
            ({"schema_version": 2, "slots": [], "model": "m"}, "no top-level model"),
            ({"schema_version": 2, "slots": [slot.model_dump(mode="json")] * 2}, "two slots for one model"),
            ({"schema_version": 2, "slots": [{**slot.model_dump(mode="json"), "model": "a/b"}]}, "slots.0.model"),
            ({"schema_version": 3}, "schema_version")):
        payload = {"device_id": "d1", "generation": 1, **bad}
        with pytest.raises(MessageError, match=why):
            parse_body(encode_dict(payload), DesiredState)
    state = DeviceState(schema_version=2, device_id="d1", online=True, active_variant="a1",
                        slots=[SlotState(model="a", active_variant="a1"), SlotState(model="b", active_variant="b1")])
    assert state.active_variants == ["a1", "b1"]
    assert DeviceState(device_id="d1", online=True, active_variant="x").active_variants == ["x"]


def encode_dict(payload: dict) -> bytes:
    import json

    return json.dumps(payload).encode()
