"""Fleet planner: the next desired state of a device, pure and churn-free."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from edgehub.hub.control.planner import next_desired
from edgehub.protocol.manifest import Manifest, SignedManifest, TensorSpec
from edgehub.protocol.messages import BenchmarkSettings, Candidate, DesiredState

DEV = "dev-1"
SETTINGS = BenchmarkSettings()


def candidate(variant_id: str, url_tag: str = "t1", model: str = "mnist", version: int = 1) -> Candidate:
    sha = hashlib.sha256(variant_id.encode()).hexdigest()
    manifest = Manifest(variant_id=variant_id, model=model, version=version, format="onnx", precision="fp32",
                        sha256=sha, size_bytes=100, inputs=[TensorSpec(name="x", dtype="float32", shape=["b", 4])],
                        outputs=[TensorSpec(name="y", dtype="float32", shape=["b", 2])],
                        created_at="2025-01-01T00:00:00Z")
    return Candidate(variant_id=variant_id, url=f"http://hub/a/{sha}?sig={url_tag}", sha256=sha, size_bytes=100,
                     format="onnx", precision="fp32",
                     manifest=SignedManifest(manifest=manifest, signature="c2ln", key_id="0" * 16))


V1 = [candidate("m-v1-fp32"), candidate("m-v1-int8")]
V2 = [candidate("m-v2-fp32", version=2), candidate("m-v2-int8", version=2)]


def first() -> DesiredState:
    d = next_desired(DEV, None, ("mnist", 1), V1, None, SETTINGS)
    assert d is not None
    return d


def test_first_desired_state():
    d = first()
    assert d.device_id == DEV and d.generation == 1
    assert (d.model, d.version) == ("mnist", 1)
    assert [c.variant_id for c in d.candidates] == ["m-v1-fp32", "m-v1-int8"]
    assert d.activate is None and d.benchmark == SETTINGS


def test_first_desired_ignores_a_winner():
    d = next_desired(DEV, None, ("mnist", 1), V1, "m-v1-int8", SETTINGS)
    assert d is not None and d.generation == 1 and d.activate is None


def test_no_deployment_means_no_change():
    assert next_desired(DEV, None, None, V1, None, SETTINGS) is None
    assert next_desired(DEV, first(), None, V1, "m-v1-int8", SETTINGS) is None


def test_same_deployment_same_candidates_is_no_change():
    d = first()
    assert next_desired(DEV, d, ("mnist", 1), V1, None, SETTINGS) is None


def test_fresh_urls_do_not_churn():
    d = first()
    refreshed = [candidate("m-v1-fp32", url_tag="t2"), candidate("m-v1-int8", url_tag="t2")]
    assert refreshed[0].url != V1[0].url
    assert next_desired(DEV, d, ("mnist", 1), refreshed, None, SETTINGS) is None


def test_winner_activates_with_next_generation():
    d = first()
    nxt = next_desired(DEV, d, ("mnist", 1), V1, "m-v1-int8", SETTINGS)
    assert nxt is not None
    assert nxt.generation == 2 and nxt.activate == "m-v1-int8"
    assert nxt.candidates == d.candidates and (nxt.model, nxt.version) == ("mnist", 1)
    assert nxt.benchmark == d.benchmark and nxt.device_id == DEV
    # The same winner again: nothing to do.
    assert next_desired(DEV, nxt, ("mnist", 1), V1, "m-v1-int8", SETTINGS) is None
    # A different winner later: another generation.
    again = next_desired(DEV, nxt, ("mnist", 1), V1, "m-v1-fp32", SETTINGS)
    assert again is not None and again.generation == 3 and again.activate == "m-v1-fp32"


def test_winner_not_among_candidates_is_ignored():
    d = first()
    assert next_desired(DEV, d, ("mnist", 1), V1, "m-v2-int8", SETTINGS) is None


def test_new_deployment_gives_new_candidates_and_keeps_activate():
    d = next_desired(DEV, first(), ("mnist", 1), V1, "m-v1-int8", SETTINGS)
    assert d is not None and d.activate == "m-v1-int8"
    nxt = next_desired(DEV, d, ("mnist", 2), V2, None, SETTINGS)
    assert nxt is not None
    assert nxt.generation == d.generation + 1
    assert (nxt.model, nxt.version) == ("mnist", 2)
    assert [c.variant_id for c in nxt.candidates] == ["m-v2-fp32", "m-v2-int8"]
    assert nxt.activate == "m-v1-int8"  # keep serving the old winner while benchmarking


def test_new_deployment_takes_precedence_over_a_stale_winner():
    d = first()
    nxt = next_desired(DEV, d, ("mnist", 2), V2, "m-v1-int8", SETTINGS)
    assert nxt is not None and nxt.version == 2 and nxt.activate is None


def test_changed_candidate_list_gives_new_generation():
    d = first()
    more = V1 + [candidate("m-v1-fp16")]
    nxt = next_desired(DEV, d, ("mnist", 1), more, None, SETTINGS)
    assert nxt is not None and nxt.generation == 2 and len(nxt.candidates) == 3


def test_changed_benchmark_settings_gives_new_generation():
    d = first()
    new_settings = BenchmarkSettings(time_budget_s=5.0)
    nxt = next_desired(DEV, d, ("mnist", 1), V1, None, new_settings)
    assert nxt is not None and nxt.generation == 2 and nxt.benchmark == new_settings
    assert next_desired(DEV, nxt, ("mnist", 1), V1, None, new_settings) is None


def test_generation_continues_from_current():
    d = first().model_copy(update={"generation": 41})
    nxt = next_desired(DEV, d, ("mnist", 1), V1, "m-v1-fp32", SETTINGS)
    assert nxt is not None and nxt.generation == 42


def test_result_is_a_valid_wire_body():
    from edgehub.protocol.wire import encode, parse_body

    d = next_desired(DEV, first(), ("mnist", 1), V1, "m-v1-int8", SETTINGS)
    assert parse_body(encode(d), DesiredState, device=DEV) == d


ACTIONS = st.lists(st.tuples(st.integers(1, 3),                      # deployed version
                             st.sampled_from([None, "fp32", "int8", "ghost"]),  # winner
                             st.booleans(),                          # fresh URLs
                             st.sampled_from([2.0, 3.0])),           # time budget
                   min_size=1, max_size=15)


@settings(max_examples=150, deadline=None)
@given(ACTIONS)
def test_property_generations_only_increase(actions):
    current: DesiredState | None = None
    for version, winner, fresh, budget in actions:
        cands = [candidate(f"m-v{version}-fp32", "t2" if fresh else "t1", version=version),
                 candidate(f"m-v{version}-int8", "t2" if fresh else "t1", version=version)]
        win = f"m-v{version}-{winner}" if winner else None
        s = BenchmarkSettings(time_budget_s=budget)
        nxt = next_desired(DEV, current, ("mnist", version), cands, win, s)
        if nxt is None:
            assert current is not None
            continue
        if current is not None:
            assert nxt.generation == current.generation + 1
            assert nxt != current
        else:
            assert nxt.generation == 1
        assert nxt.activate is None or any(nxt.activate.endswith(x) for x in ("fp32", "int8"))
        current = nxt
        # Reconciling again with the same inputs settles: at most one more step (the winner).
        settled = next_desired(DEV, current, ("mnist", version), cands, win, s)
        if settled is not None:
            assert settled.activate == win and settled.generation == current.generation + 1
            current = settled
            assert next_desired(DEV, current, ("mnist", version), cands, win, s) is None


def test_new_generation_is_stamped_now():
    from datetime import datetime, timezone

    old = datetime(2025, 1, 1, tzinfo=timezone.utc)
    d = first().model_copy(update={"at": old})
    for nxt in (next_desired(DEV, d, ("mnist", 1), V1, "m-v1-int8", SETTINGS),
                next_desired(DEV, d, ("mnist", 2), V2, None, SETTINGS)):
        assert nxt is not None and nxt.at > old


# ---- planning from stored summaries (what the hub's batch reconcile uses) ----------------------------

def test_plan_next_matches_next_desired():
    from edgehub.hub.control.planner import plan_next
    from edgehub.hub.fleet.records import DesiredSummary

    d = first()
    summary = DesiredSummary.of(d)
    assert summary.candidate_ids == ("m-v1-fp32", "m-v1-int8") and summary.generation == 1
    assert plan_next(summary, ("mnist", 1), ["m-v1-fp32", "m-v1-int8"], None, SETTINGS) is None
    plan = plan_next(summary, ("mnist", 1), ["m-v1-fp32", "m-v1-int8"], "m-v1-int8", SETTINGS)
    nxt = next_desired(DEV, d, ("mnist", 1), V1, "m-v1-int8", SETTINGS)
    assert (plan.generation, plan.activate, plan.candidate_ids) == (nxt.generation, nxt.activate,
                                                                   tuple(c.variant_id for c in nxt.candidates))
    assert plan_next(summary, None, ["x"], "x", SETTINGS) is None


def test_settle_activates_a_known_winner_of_a_new_target_at_once():
    from edgehub.hub.control.planner import desired_from, settle
    from edgehub.hub.fleet.records import DesiredSummary

    current = DesiredSummary.of(next_desired(DEV, first(), ("mnist", 1), V1, "m-v1-int8", SETTINGS))
    assert current.generation == 2 and current.activate == "m-v1-int8"
    # A rollback to v2 whose reports the hub already has: one generation, new candidates and the winner.
    plan = settle(current, ("mnist", 2), ["m-v2-fp32", "m-v2-int8"], "m-v2-fp32", SETTINGS)
    assert plan.generation == 3 and plan.version == 2 and plan.activate == "m-v2-fp32"
    assert plan.candidate_ids == ("m-v2-fp32", "m-v2-int8")
    body = desired_from(DEV, plan, V2)
    assert body.generation == 3 and [c.variant_id for c in body.candidates] == ["m-v2-fp32", "m-v2-int8"]
    # Without a winner it is just the new work, keeping what runs now.
    plan = settle(current, ("mnist", 2), ["m-v2-fp32", "m-v2-int8"], None, SETTINGS)
    assert plan.generation == 3 and plan.activate == "m-v1-int8"
    # A winner that is not a candidate is ignored; settled states stay settled.
    assert settle(current, ("mnist", 2), ["m-v2-fp32"], "m-v1-int8", SETTINGS).activate == "m-v1-int8"
    assert settle(current, ("mnist", 1), ["m-v1-fp32", "m-v1-int8"], "m-v1-int8", SETTINGS) is None
    # A first desired state with a known winner (a cohort member that already checked it).
    assert settle(None, ("mnist", 1), ["m-v1-int8"], "m-v1-int8", SETTINGS).activate == "m-v1-int8"
