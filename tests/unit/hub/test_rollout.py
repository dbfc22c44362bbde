"""The rollout state machine and target resolution: pure functions, no I/O, no clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgehub.hub.control.targets import resolve_target
from edgehub.hub.fleet.groups import GroupError, parse_selector, scopes_of
from edgehub.hub.fleet.records import AliasRecord
from edgehub.hub.rollout.machine import (
    RolloutError,
    RolloutSpec,
    RolloutState,
    StageCounts,
    StageSize,
    abort,
    alias_effects,
    approve,
    assign_stages,
    decide,
    late_member_stage,
    parse_error_threshold,
    parse_fraction,
    parse_stage_size,
    pause,
    resume,
    start,
)

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=timezone.utc)


def spec(**kw) -> RolloutSpec:
    return RolloutSpec(**{"model": "m", "version": 2, "selector": "lab", **kw})


def counts(*stages: tuple[int, int, int]) -> dict[int, StageCounts]:
    return {i: StageCounts(total=t, activated=a, failed=f) for i, (t, a, f) in enumerate(stages)}


# ---- parsing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,fraction,count", [("5%", 0.05, None), ("0.05", 0.05, None), ("20", None, 20),
                                                 ("100%", 1.0, None), (" 12.5% ", 0.125, None)])
def test_parse_stage_size(text, fraction, count):
    size = parse_stage_size(text)
    assert size.count == count
    assert size.fraction == pytest.approx(fraction) if fraction is not None else size.fraction is None


@pytest.mark.parametrize("text", ["", "abc", "0%", "150%", "-3", "0", "5%%"])
def test_parse_stage_size_rejects(text):
    with pytest.raises(RolloutError):
        parse_stage_size(text)


def test_parse_fraction():
    assert parse_fraction("95%", "x") == pytest.approx(0.95) and parse_fraction("0.1", "x") == 0.1
    for bad in ("101%", "-0.1", "x"):
        with pytest.raises(RolloutError):
            parse_fraction(bad, "threshold")


def test_stage_size_devices():
    assert StageSize(fraction=0.05).devices(1000) == 50
    assert StageSize(fraction=0.05).devices(10) == 1  # at least one device
    assert StageSize(fraction=0.05).devices(0) == 0
    assert StageSize(count=20).devices(10) == 10 and StageSize(count=20).devices(100) == 20
    assert StageSize(fraction=0.3).devices(10) == 3  # no float round-up to 4


def test_selector_parsing():
    assert parse_selector("lab").scope == "group:lab" and parse_selector("lab").matches("x86-cpu", ["lab"])
    p = parse_selector("profile:rpi5")
    assert p.kind == "profile" and p.scope == "profile:rpi5" and str(p) == "profile:rpi5"
    assert p.matches("rpi5", []) and not p.matches("x86-cpu", ["rpi5"])
    for bad in ("", "Lab", "a b", "profile:", "lab:x"):
        with pytest.raises(GroupError):
            parse_selector(bad)
    assert scopes_of("x86-cpu", ["b", "a", "a"]) == ["profile:x86-cpu", "group:a", "group:b"]


# ---- stage assignment ----------------------------------------------------------------------------

def test_assign_stages_online_first_and_sizes():
    members = [(f"d{i:03d}", i % 2 == 0) for i in range(100)]
    stages = assign_stages(members, spec(stages=[StageSize(fraction=0.1), StageSize(fraction=0.5)]), seed="s")
    assert sorted(stages) == sorted(d for d, _ in members)
    by_stage = {s: [d for d, x in stages.items() if x == s] for s in (0, 1, 2)}
    assert [len(by_stage[s]) for s in (0, 1, 2)] == [10, 40, 50]
    online = {d for d, on in members if on}
    assert set(by_stage[0]) <= online and set(by_stage[1]) <= online  # 50 online fill stages 0 and 1
    assert not set(by_stage[2]) & online


def test_assign_stages_is_stable_and_seeded():
    members = [(f"d{i}", True) for i in range(50)]
    a = assign_stages(members, spec(), seed="one")
    assert a == assign_stages(list(reversed(members)), spec(), seed="one")
    canaries = [d for d, s in a.items() if s == 0]
    assert len(canaries) == 3  # ceil(5% of 50)
    others = [{d for d, s in assign_stages(members, spec(), seed=seed).items() if s == 0} for seed in "abcdefgh"]
    assert len({frozenset(o) for o in others}) > 1  # a different seed picks other canaries


def test_late_members_join_the_last_stage():
    assert late_member_stage(spec()) == 1
    assert late_member_stage(spec(stages=[StageSize(count=1), StageSize(fraction=0.5)])) == 2


# ---- transitions ----------------------------------------------------------------------------------

def test_start_state():
    s = start(spec(), T0)
    assert s.status == "running" and s.stage == 0 and s.stage_started_at == T0 and s.active
    assert s.targets(0) and not s.targets(1)
    assert [t.status for t in s.history] == ["running"]


def test_canary_success_advances_then_completes():
    s = start(spec(success_threshold=0.9), T0)
    assert decide(s, counts((10, 8, 0), (90, 0, 0)), T0) is s  # 80% < 90%: wait
    s2 = decide(s, counts((10, 9, 0), (90, 0, 0)), T0 + timedelta(seconds=5))
    assert s2.status == "running" and s2.stage == 1 and s2.targets(1)
    assert s2.stage_started_at == T0 + timedelta(seconds=5) and "stage 1 started" in s2.reason
    assert s2.history[-1].counts == StageCounts(total=10, activated=9, failed=0)
    assert decide(s2, counts((10, 9, 0), (90, 70, 0)), T0) is s2  # 79 of 100
    s3 = decide(s2, counts((10, 10, 0), (90, 81, 0)), T0 + timedelta(seconds=9))
    assert s3.status == "completed" and not s3.active and not s3.targets(0)
    assert decide(s3, counts((10, 0, 10), (90, 0, 90)), T0) is s3  # terminal


def test_failures_past_the_error_threshold_roll_back():
    s = start(spec(error_threshold=0.1), T0)
    assert decide(s, counts((10, 5, 1), (90, 0, 0)), T0) is s  # 10% is not past 10%
    rolled = decide(s, counts((10, 5, 2), (90, 0, 0)), T0)
    assert rolled.status == "rolled_back" and not rolled.active and "2 of 10" in rolled.reason
    assert [(e.action, e.name) for e in alias_effects(s, rolled)] == [("delete", "canary")]


def test_error_threshold_counts_every_targeted_stage():
    s = decide(start(spec(error_threshold=0.1), T0), counts((10, 10, 0), (90, 0, 0)), T0)
    assert s.stage == 1
    # Late failures in the canary count too: 12 of 100 targeted.
    assert decide(s, counts((10, 2, 8), (90, 40, 4)), T0).status == "rolled_back"


def test_empty_group_completes_and_zero_threshold():
    s = start(spec(), T0)
    assert decide(s, {}, T0).stage == 1
    strict = start(spec(error_threshold=0.0), T0)
    assert decide(strict, counts((20, 19, 1)), T0).status == "rolled_back"


def test_soak_time_holds_a_stage():
    s = start(spec(min_soak_s=60), T0)
    assert decide(s, counts((5, 5, 0), (95, 0, 0)), T0 + timedelta(seconds=59)) is s
    assert decide(s, counts((5, 5, 0), (95, 0, 0)), T0 + timedelta(seconds=60)).stage == 1


def test_pause_resume_abort():
    s = start(spec(), T0)
    paused = pause(s, T0)
    assert paused.status == "paused" and paused.active and paused.targets(0)
    assert decide(paused, counts((10, 10, 0), (90, 0, 0)), T0) is paused  # no advance while paused
    assert decide(paused, counts((10, 0, 5), (90, 0, 0)), T0).status == "rolled_back"  # safety still applies
    with pytest.raises(RolloutError, match="cannot pause"):
        pause(paused, T0)
    running = resume(paused, T0)
    assert running.status == "running" and running.stage_started_at == s.stage_started_at
    with pytest.raises(RolloutError, match="cannot resume"):
        resume(running, T0)
    aborted = abort(running, T0)
    assert aborted.status == "aborted" and "rolled back" in aborted.reason and not aborted.active
    with pytest.raises(RolloutError, match="cannot abort"):
        abort(aborted, T0)
    assert [t.status for t in aborted.history] == ["running", "paused", "running", "aborted"]


def test_stage_waits_for_approval_then_goes_on():
    s = start(spec(on_success="approve", stages=[StageSize(count=2), StageSize(count=5)]), T0)
    waiting = decide(s, counts((2, 2, 0), (3, 0, 0), (5, 0, 0)), T0 + timedelta(seconds=1))
    assert waiting.status == "waiting" and waiting.stage == 0 and waiting.active and "waiting for approval" in waiting.reason
    assert not waiting.targets(1)  # the next stage starts only when approved
    assert decide(waiting, counts((2, 2, 0), (3, 0, 0), (5, 0, 0)), T0) is waiting
    assert alias_effects(s, waiting) == []  # the canary alias stays while it waits
    with pytest.raises(RolloutError, match="cannot approve"):
        approve(s, T0)
    approved = approve(waiting, T0 + timedelta(seconds=2))
    assert approved.status == "running" and approved.stage == 1 and approved.targets(1)
    assert approved.stage_started_at == T0 + timedelta(seconds=2) and "approved by the operator" in approved.reason
    # The last stage completes without an approval; a failure while waiting still rolls back.
    later = T0 + timedelta(seconds=3)
    last = decide(approve(decide(approved, counts((2, 2, 0), (3, 3, 0)), later), later),
                  counts((2, 2, 0), (3, 3, 0), (5, 5, 0)), later)
    assert last.status == "completed"
    assert decide(waiting, counts((2, 0, 2), (3, 0, 0)), T0).status == "rolled_back"


def test_error_threshold_as_a_device_count_and_pause_on_error():
    assert parse_error_threshold("3") == (1.0, 3) and parse_error_threshold("20%") == (0.2, None)
    with pytest.raises(RolloutError, match="error threshold"):
        parse_error_threshold("lots")
    s = start(spec(error_threshold=1.0, error_count=2), T0)
    assert decide(s, counts((100, 10, 2)), T0) is s  # 2 is not past 2
    assert decide(s, counts((100, 10, 3)), T0).status == "rolled_back"
    held = start(spec(error_threshold=0.1, on_error="pause"), T0)
    paused = decide(held, counts((10, 0, 5)), T0)
    assert paused.status == "paused" and "on error: pause" in paused.reason and "5 of 10" in paused.reason
    assert decide(paused, counts((10, 0, 9)), T0) is paused  # stays paused: the operator decides
    assert alias_effects(held, paused) == []  # nothing rolled back yet
    assert abort(paused, T0).status == "aborted"


def test_alias_effects():
    s = start(spec(), T0)
    (set_canary,) = alias_effects(None, s)
    assert (set_canary.action, set_canary.name, set_canary.model, set_canary.version) == ("set", "canary", "m", 2)
    assert alias_effects(s, pause(s, T0)) == [] and alias_effects(pause(s, T0), s) == []
    done = decide(decide(s, counts((1, 1, 0)), T0), counts((1, 1, 0), (9, 9, 0)), T0)
    effects = alias_effects(s, done)
    assert [(e.action, e.name) for e in effects] == [("set", "production"), ("delete", "canary")]
    assert effects[0].version == 2
    assert [(e.action, e.name) for e in alias_effects(s, abort(s, T0))] == [("delete", "canary")]


def test_state_round_trips_as_json():
    s = decide(start(spec(stages=[StageSize(count=3)]), T0), counts((3, 3, 0)), T0 + timedelta(seconds=1))
    again = RolloutState.model_validate_json(s.model_dump_json())
    assert again == s and again.spec.stages == [StageSize(count=3)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["decide", "pause", "resume", "approve", "abort"]),
                          st.integers(0, 20), st.integers(0, 20), st.integers(0, 20)), max_size=25))
def test_property_transitions_are_sane(steps):
    """Stages never go back, terminal states stay terminal, every change is in the history."""
    s = start(spec(stages=[StageSize(count=2), StageSize(count=5)], error_threshold=0.25, on_success="approve"), T0)
    for n, (action, a, f, extra) in enumerate(steps):
        now = T0 + timedelta(seconds=n)
        before = s
        try:
            if action == "decide":
                s = decide(s, {0: StageCounts(total=2 + extra, activated=min(a, 2 + extra),
                                              failed=min(f, 2 + extra - min(a, 2 + extra)))}, now)
            else:
                s = {"pause": pause, "resume": resume, "approve": approve, "abort": abort}[action](s, now)
        except RolloutError:
            assert s is before
            continue
        assert s.stage >= before.stage and s.stage < s.spec.stage_count
        if not before.active:
            assert s is before
        if s is not before:
            assert len(s.history) == len(before.history) + 1 and s.history[-1].status == s.status


# ---- which version a device should run -------------------------------------------------------------

def alias(scope: str, version: int, minutes: int) -> AliasRecord:
    return AliasRecord(scope=scope, name="production", model="m", version=version,
                       updated_at=T0 + timedelta(minutes=minutes))


def test_resolve_target_order():
    production = {"profile:x86-cpu": [alias("profile:x86-cpu", 1, 0)], "group:lab": [alias("group:lab", 2, 5)]}
    running = start(spec(version=3), T0)
    assert resolve_target("x86-cpu", [], production, [], {}).version == 1
    lab = resolve_target("x86-cpu", ["lab"], production, [], {})
    assert lab.version == 2 and lab.rollout is None and "group:lab" in lab.why
    # In a rollout's targeted stage: the rollout's version; in a later stage: production.
    assert resolve_target("x86-cpu", ["lab"], production, [(7, 0, "pending")], {7: running}).version == 3
    assert resolve_target("x86-cpu", ["lab"], production, [(7, 0, "pending")], {7: running}).rollout == 7
    assert resolve_target("x86-cpu", ["lab"], production, [(7, 1, "pending")], {7: running}).version == 2
    # A newer profile deployment wins over an older group alias.
    production["profile:x86-cpu"] = [alias("profile:x86-cpu", 4, 9)]
    assert resolve_target("x86-cpu", ["lab"], production, [], {}).version == 4
    assert resolve_target("rpi5", [], production, [], {}) is None
    # A rollout no longer active does not target anyone.
    assert resolve_target("x86-cpu", [], production, [(7, 0, "failed")], {7: abort(running, T0)}).version == 4


def test_member_outcomes_come_from_one_rule():
    from edgehub.hub.rollout.machine import member_outcome

    assert member_outcome() is None  # nothing learnt yet: pending
    assert member_outcome(activation_ok=True) == ("activated", None)
    assert member_outcome(activation_ok=False, error="health check failed") == (
        "failed", "activation failed: health check failed")
    assert member_outcome(nothing_eligible=True)[0] == "failed"
    assert member_outcome(running_new_winner=True) == ("activated", None)
    # A failed activation is a failure even if the device runs the winner (it rolled back to it).
    assert member_outcome(activation_ok=False, running_new_winner=True)[0] == "failed"
