"""Selection policy: pure function of candidate facts, device reports and a policy."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgehub.hub.control.selection import CandidateFacts, Policy, Selection, select_variant
from edgehub.protocol.messages import BenchmarkReport, Latency

DEVICE = "dev-1"


def report(variant_id: str, p50: float = 10.0, p99: float | None = None, *, ok: bool = True,
           error: str | None = None, rss: float | None = None, agreement: float | None = None,
           with_latency: bool = True) -> BenchmarkReport:
    latency = None
    if with_latency and ok:
        p99 = p99 if p99 is not None else p50 * 1.5
        latency = Latency(p50_ms=p50, p90_ms=(p50 + p99) / 2, p99_ms=p99, mean_ms=p50, runs=100)
    return BenchmarkReport(event_id=f"ev-{variant_id}-0001", device_id=DEVICE, generation=1, variant_id=variant_id,
                           ok=ok, error=error, latency=latency, peak_rss_mb=rss, agreement=agreement)


def cand(variant_id: str, size: int = 1000, accuracy: float | None = None,
         agreement: float | None = None) -> CandidateFacts:
    return CandidateFacts(variant_id=variant_id, size_bytes=size, accuracy=accuracy, agreement=agreement)


def verdict(sel: Selection, variant_id: str):
    (v,) = [v for v in sel.verdicts if v.variant_id == variant_id]
    return v


def check_explained(sel: Selection, candidates: list[CandidateFacts]) -> None:
    assert [v.variant_id for v in sel.verdicts] == [c.variant_id for c in candidates]
    assert all(v.reason.strip() for v in sel.verdicts)
    selected = [v.variant_id for v in sel.verdicts if v.selected]
    assert selected == ([sel.winner] if sel.winner else [])
    for v in sel.verdicts:
        if v.selected:
            assert v.eligible


# ---- objective and ties ----------------------------------------------------------------------

def test_lowest_p50_wins():
    cs = [cand("fp32", 4000), cand("fp16", 2000), cand("int8", 1000)]
    reports = {"fp32": report("fp32", 12.0), "fp16": report("fp16", 6.0), "int8": report("int8", 9.0)}
    sel = select_variant(cs, reports, Policy())
    assert sel.winner == "fp16" and sel.complete
    check_explained(sel, cs)
    assert verdict(sel, "fp16").reason.startswith("selected")
    assert "slower" in verdict(sel, "fp32").reason and "slower" in verdict(sel, "int8").reason
    assert verdict(sel, "fp16").p50_ms == 6.0 and verdict(sel, "fp16").size_bytes == 2000


def test_fp32_fastest_is_selected_never_assume_int8():
    cs = [cand("fp32", 4000, accuracy=0.90), cand("int8", 1000, accuracy=0.899)]
    reports = {"fp32": report("fp32", 5.0), "int8": report("int8", 8.0)}  # int8 slower on this runtime
    sel = select_variant(cs, reports, Policy(), reference_accuracy=0.90)
    assert sel.winner == "fp32"
    assert verdict(sel, "int8").eligible and not verdict(sel, "int8").selected
    check_explained(sel, cs)


def test_objective_p99():
    cs = [cand("a"), cand("b")]
    reports = {"a": report("a", p50=5.0, p99=50.0), "b": report("b", p50=8.0, p99=9.0)}
    assert select_variant(cs, reports, Policy()).winner == "a"
    sel = select_variant(cs, reports, Policy(objective="p99"))
    assert sel.winner == "b"
    assert "p99" in verdict(sel, "b").reason


def test_tie_within_tolerance_goes_to_smallest_file():
    cs = [cand("fp32", 4000), cand("int8", 1000), cand("fp16", 2000)]
    reports = {"fp32": report("fp32", 10.0), "int8": report("int8", 10.2), "fp16": report("fp16", 10.1)}
    sel = select_variant(cs, reports, Policy(tie_tolerance=0.03))
    assert sel.winner == "int8"
    assert "tied" in verdict(sel, "fp32").reason and "larger" in verdict(sel, "fp32").reason
    assert "smallest" in verdict(sel, "int8").reason
    check_explained(sel, cs)


def test_outside_tolerance_is_not_a_tie():
    cs = [cand("fp32", 4000), cand("int8", 1000)]
    reports = {"fp32": report("fp32", 10.0), "int8": report("int8", 10.5)}  # 5% slower
    assert select_variant(cs, reports, Policy(tie_tolerance=0.03)).winner == "fp32"
    assert select_variant(cs, reports, Policy(tie_tolerance=0.0)).winner == "fp32"
    assert select_variant(cs, reports, Policy(tie_tolerance=0.10)).winner == "int8"


def test_exact_tie_same_size_is_deterministic():
    cs = [cand("a", 1000), cand("b", 1000)]
    reports = {"a": report("a", 10.0), "b": report("b", 10.0)}
    assert select_variant(cs, reports, Policy()).winner == select_variant(cs, reports, Policy()).winner


# ---- rejections --------------------------------------------------------------------------------

def test_failed_report_rejected_with_its_error():
    cs = [cand("a"), cand("b")]
    reports = {"a": report("a", ok=False, error="TensorRT engine build failed: out of workspace"),
               "b": report("b", 20.0)}
    sel = select_variant(cs, reports, Policy())
    assert sel.winner == "b"
    v = verdict(sel, "a")
    assert not v.eligible and "failed" in v.reason and "TensorRT engine build failed" in v.reason


def test_failed_report_without_error_still_explained():
    sel = select_variant([cand("a")], {"a": report("a", ok=False)}, Policy())
    assert sel.winner is None and "failed" in verdict(sel, "a").reason


def test_ok_report_without_latency_rejected():
    sel = select_variant([cand("a")], {"a": report("a", with_latency=False)}, Policy())
    assert sel.winner is None and not verdict(sel, "a").eligible and "latency" in verdict(sel, "a").reason


def test_missing_report_not_benchmarked_and_incomplete():
    cs = [cand("a"), cand("b")]
    sel = select_variant(cs, {"a": report("a")}, Policy())
    assert not sel.complete
    assert sel.winner == "a"
    v = verdict(sel, "b")
    assert not v.eligible and "not benchmarked" in v.reason and v.p50_ms is None


def test_no_reports_at_all():
    cs = [cand("a"), cand("b")]
    sel = select_variant(cs, {}, Policy())
    assert sel.winner is None and not sel.complete
    check_explained(sel, cs)


def test_no_candidates():
    sel = select_variant([], {}, Policy())
    assert sel.winner is None and sel.complete and sel.verdicts == []


def test_accuracy_drop_over_budget_rejected_at_budget_accepted():
    cs = [cand("fp32", 4000, accuracy=0.90), cand("at-budget", 1000, accuracy=0.89),
          cand("over", 500, accuracy=0.8899)]
    reports = {"fp32": report("fp32", 10.0), "at-budget": report("at-budget", 5.0), "over": report("over", 1.0)}
    sel = select_variant(cs, reports, Policy(), reference_accuracy=0.90)
    assert sel.winner == "at-budget"
    assert verdict(sel, "at-budget").eligible
    over = verdict(sel, "over")
    assert not over.eligible and "accuracy drop" in over.reason and "budget" in over.reason


def test_accuracy_budget_is_configurable():
    cs = [cand("fp32", 4000, accuracy=0.90), cand("int8", 1000, accuracy=0.87)]
    reports = {"fp32": report("fp32", 10.0), "int8": report("int8", 5.0)}
    assert select_variant(cs, reports, Policy(), reference_accuracy=0.90).winner == "fp32"
    assert select_variant(cs, reports, Policy(accuracy_budget=0.05), reference_accuracy=0.90).winner == "int8"


def test_accuracy_measured_from_reference_accuracy():
    # A distilled variant that is *better* than fp32 must not become the baseline when the
    # fp32 parent's accuracy is given.
    cs = [cand("fp32", 4000, accuracy=0.90), cand("distilled", 2000, accuracy=0.92),
          cand("int8", 1000, accuracy=0.895)]
    reports = {"fp32": report("fp32", 10.0), "distilled": report("distilled", 9.0), "int8": report("int8", 5.0)}
    assert select_variant(cs, reports, Policy(), reference_accuracy=0.90).winner == "int8"
    # Without it, the default baseline is the best accuracy among the candidates.
    sel = select_variant(cs, reports, Policy())
    assert sel.winner == "distilled" and not verdict(sel, "int8").eligible


def test_no_labels_agreement_under_minimum_rejected():
    cs = [cand("fp32", 4000, agreement=1.0), cand("int8", 1000, agreement=0.985),
          cand("fp16", 2000, agreement=0.99)]
    reports = {"fp32": report("fp32", 10.0), "int8": report("int8", 4.0), "fp16": report("fp16", 6.0)}
    sel = select_variant(cs, reports, Policy())
    assert sel.winner == "fp16"
    v = verdict(sel, "int8")
    assert not v.eligible and "agreement" in v.reason
    assert verdict(sel, "fp16").eligible  # exactly at the minimum


def test_no_labels_gate_counts_near_ties_as_agreeing_when_measured():
    # EfficientNet-Lite1's int8 on photo crops: 0.957 exact, 0.997 counting near-ties (fp32 itself
    # under one 8-bit pixel step of noise: 0.970 / 0.997); a badly quantized one: 0.86 / 0.93.
    facts = [CandidateFacts(variant_id="fp32", size_bytes=4000, agreement=1.0, near_tie_agreement=1.0),
             CandidateFacts(variant_id="int8", size_bytes=1000, agreement=0.957, near_tie_agreement=0.997),
             CandidateFacts(variant_id="int8-bad", size_bytes=900, agreement=0.86, near_tie_agreement=0.93),
             CandidateFacts(variant_id="old", size_bytes=800, agreement=0.985)]  # published before: exact only
    reports = {v.variant_id: report(v.variant_id, p50) for v, p50 in zip(facts, (10.0, 4.0, 3.0, 2.0))}
    sel = select_variant(facts, reports, Policy())
    assert sel.winner == "int8"
    bad = verdict(sel, "int8-bad")
    assert not bad.eligible and "0.9300 (near-ties counted as agreeing, 0.8600 exact)" in bad.reason
    assert not verdict(sel, "old").eligible and "agreement with fp32 0.9850 is under 0.99" in verdict(sel, "old").reason


def test_on_device_disagreement_rejected_as_wrong_runtime():
    cs = [cand("fp32", 4000), cand("int8", 1000)]
    reports = {"fp32": report("fp32", 10.0, agreement=1.0), "int8": report("int8", 2.0, agreement=0.95)}
    sel = select_variant(cs, reports, Policy())
    assert sel.winner == "fp32"
    v = verdict(sel, "int8")
    assert not v.eligible and "reference outputs" in v.reason and "computes this variant wrongly" in v.reason


def test_outputs_that_are_not_class_scores_are_gated_by_cosine():
    # An embedding model: no agreement (top-1 over embedding dimensions means nothing), cosine instead.
    cs = [CandidateFacts(variant_id="fp32", size_bytes=4000, cosine=1.0),
          CandidateFacts(variant_id="int8-static", size_bytes=1600, cosine=0.943),
          CandidateFacts(variant_id="int8-dynamic", size_bytes=1000, cosine=0.991)]
    reports = {v: report(v, p50) for v, p50 in (("fp32", 10.0), ("int8-static", 3.0), ("int8-dynamic", 4.0))}
    sel = select_variant(cs, reports, Policy())
    assert sel.winner == "int8-dynamic"
    assert "cosine with fp32 outputs 0.9430 is under 0.99" in verdict(sel, "int8-static").reason
    stricter = select_variant(cs, reports, Policy(min_cosine=0.995))
    assert stricter.winner == "fp32"


def test_on_device_cosine_gate_for_outputs_that_are_not_class_scores():
    bad = report("int8", 2.0).model_copy(update={"cosine": 0.62})
    sel = select_variant([cand("fp32", 4000), cand("int8", 1000)], {"fp32": report("fp32", 10.0), "int8": bad},
                         Policy())
    assert sel.winner == "fp32" and "cosine 0.6200" in verdict(sel, "int8").reason


def test_a_task_metric_takes_precedence_over_accuracy():
    cs = [CandidateFacts(variant_id="fp32", size_bytes=4000, accuracy=0.90, task_drop=0.0),
          CandidateFacts(variant_id="int8", size_bytes=1000, accuracy=0.90, task_drop=0.03),
          CandidateFacts(variant_id="fp16", size_bytes=2000, accuracy=0.85, task_drop=0.005)]
    reports = {v: report(v, p50) for v, p50 in (("fp32", 10.0), ("int8", 3.0), ("fp16", 5.0))}
    sel = select_variant(cs, reports, Policy())
    assert sel.winner == "fp16"  # accuracy fell 5 points, but the task metric is what the publisher asked for
    assert "task metric drop 0.0300" in verdict(sel, "int8").reason


def test_on_device_agreement_at_minimum_accepted():
    sel = select_variant([cand("a")], {"a": report("a", agreement=0.99)}, Policy())
    assert sel.winner == "a"


def test_memory_over_limit_rejected():
    cs = [cand("fp32", 4000), cand("int8", 1000)]
    reports = {"fp32": report("fp32", 3.0, rss=900.0), "int8": report("int8", 5.0, rss=300.0)}
    assert select_variant(cs, reports, Policy()).winner == "fp32"
    sel = select_variant(cs, reports, Policy(memory_limit_mb=512))
    assert sel.winner == "int8"
    v = verdict(sel, "fp32")
    assert not v.eligible and "memory" in v.reason and "512" in v.reason


def test_memory_at_limit_accepted():
    sel = select_variant([cand("a")], {"a": report("a", rss=512.0)}, Policy(memory_limit_mb=512))
    assert sel.winner == "a"


def test_p99_over_slo_rejected():
    cs = [cand("a"), cand("b")]
    reports = {"a": report("a", p50=3.0, p99=40.0), "b": report("b", p50=6.0, p99=9.0)}
    sel = select_variant(cs, reports, Policy(slo_p99_ms=20))
    assert sel.winner == "b"
    v = verdict(sel, "a")
    assert not v.eligible and "SLO" in v.reason


def test_nothing_eligible_winner_none_every_reason_given():
    cs = [cand("a", accuracy=0.9), cand("b", accuracy=0.5), cand("c"), cand("d")]
    reports = {"a": report("a", ok=False, error="crash"), "b": report("b"),
               "c": report("c", agreement=0.1), "d": report("d", rss=4096)}
    sel = select_variant(cs, reports, Policy(memory_limit_mb=100), reference_accuracy=0.9)
    assert sel.winner is None and sel.complete
    assert not any(v.eligible or v.selected for v in sel.verdicts)
    check_explained(sel, cs)


def test_explain_is_json_ready():
    cs = [cand("a"), cand("b")]
    sel = select_variant(cs, {"a": report("a")}, Policy())
    data = sel.explain()
    assert data["winner"] == "a" and len(data["verdicts"]) == 2
    assert Selection.model_validate(data) == sel


# ---- property ---------------------------------------------------------------------------------

def _oracle_eligible(c: CandidateFacts, r: BenchmarkReport | None, p: Policy, ref: float | None) -> bool:
    if r is None or not r.ok or r.latency is None:
        return False
    if r.agreement is not None and r.agreement < p.min_device_agreement:
        return False
    if ref is not None and c.accuracy is not None:
        if ref - c.accuracy > p.accuracy_budget + 1e-9:
            return False
    elif c.agreement is not None and c.agreement < p.min_agreement:
        return False
    if p.memory_limit_mb is not None and r.peak_rss_mb is not None and r.peak_rss_mb > p.memory_limit_mb:
        return False
    if p.slo_p99_ms is not None and r.latency.p99_ms > p.slo_p99_ms:
        return False
    return True


latencies = st.floats(min_value=0.01, max_value=1000, allow_nan=False)
unit = st.floats(min_value=0, max_value=1, allow_nan=False)


@st.composite
def scenarios(draw):
    n = draw(st.integers(0, 7))
    ids = [f"v{i}" for i in range(n)]
    candidates = [cand(i, draw(st.integers(1, 10_000)), draw(st.none() | st.floats(0.8, 1.0)),
                       draw(st.none() | st.floats(0.95, 1.0))) for i in ids]
    reports = {}
    for i in ids:
        if not draw(st.booleans()) and draw(st.booleans()):
            continue  # about a quarter missing
        ok = draw(st.integers(0, 9)) > 0
        p50 = draw(latencies)
        reports[i] = report(i, p50, p50 * draw(st.floats(1, 5)), ok=ok, error=None if ok else "boom",
                            rss=draw(st.none() | st.floats(10, 2000)), agreement=draw(st.none() | st.floats(0.95, 1)),
                            with_latency=draw(st.integers(0, 19)) > 0)
    policy = Policy(objective=draw(st.sampled_from(["p50", "p99"])), tie_tolerance=draw(st.floats(0, 0.2)),
                    memory_limit_mb=draw(st.none() | st.floats(10, 2000)), slo_p99_ms=draw(st.none() | latencies),
                    accuracy_budget=draw(st.sampled_from([0.0, 0.01, 0.05])))
    ref = draw(st.none() | st.floats(0.8, 1.0))
    return candidates, reports, policy, ref


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_property_winner_is_eligible_minimal_and_every_candidate_judged(scenario):
    candidates, reports, policy, ref = scenario
    sel = select_variant(candidates, reports, policy, reference_accuracy=ref)
    assert len(sel.verdicts) == len(candidates)
    check_explained(sel, candidates)
    assert sel.complete == all(c.variant_id in reports for c in candidates)
    baseline = ref if ref is not None else max((c.accuracy for c in candidates if c.accuracy is not None), default=None)
    by_id = {c.variant_id: c for c in candidates}
    expected = {c.variant_id for c in candidates if _oracle_eligible(c, reports.get(c.variant_id), policy, baseline)}
    assert {v.variant_id for v in sel.verdicts if v.eligible} == expected

    def score(vid: str) -> float:
        lat = reports[vid].latency
        return lat.p50_ms if policy.objective == "p50" else lat.p99_ms

    if not expected:
        assert sel.winner is None
        return
    assert sel.winner in expected
    best = min(score(v) for v in expected)
    assert score(sel.winner) <= best * (1 + policy.tie_tolerance)
    tied = [v for v in expected if score(v) <= best * (1 + policy.tie_tolerance)]
    assert by_id[sel.winner].size_bytes == min(by_id[v].size_bytes for v in tied)
