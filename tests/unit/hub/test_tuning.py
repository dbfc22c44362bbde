"""Runtime tuning, the hub's pure parts: the plan a device gets, and the (variant, settings) pair
chosen from what it measured."""

from __future__ import annotations

import uuid

from edgehub.hub.control.selection import CandidateFacts, Policy, select_variant
from edgehub.hub.control.tuning import choose_pair, thread_counts, tuning_plan
from edgehub.protocol.messages import BenchmarkReport, Latency
from edgehub.protocol.runtime_settings import Coverage, RuntimeSettings


def report(variant: str, p50: float | None, settings: RuntimeSettings | None = None, ok: bool = True,
           agreement: float = 1.0, coverage: float | None = None, not_applicable: bool = False) -> BenchmarkReport:
    return BenchmarkReport(
        event_id=uuid.uuid4().hex, device_id="d1", generation=1, variant_id=variant, ok=ok and p50 is not None,
        latency=Latency(p50_ms=p50, p90_ms=p50, p99_ms=p50 * 1.2, mean_ms=p50, runs=30) if p50 else None,
        agreement=agreement, settings=settings, not_applicable=not_applicable,
        error="not applicable: no such provider" if not_applicable else None,
        coverage=Coverage(nodes=10, by={}, accelerated=coverage, source="test") if coverage is not None else None)


def test_the_plan_fits_the_device():
    assert thread_counts(1) == [1] and thread_counts(4) == [1, 2, 4] and thread_counts(6) == [1, 2, 4, 6]
    plan = tuning_plan("rpi5", 4, {"onnxruntime": "1.32.0", "litert": "2.3.0"}, budget_s=30)
    keys = [s.key() for s in plan.settings]
    assert keys[:3] == ["threads=1", "threads=2", "threads=4"]
    assert "optimization=basic" in keys and "provider=XnnpackExecutionProvider" in keys and "delegate=none" in keys
    assert plan.budget_s == 30 and plan.margin == 0.5
    assert "delegate=none" not in [s.key() for s in tuning_plan("x86-cpu", 2, {"onnxruntime": "1"}, 30).settings]
    assert tuning_plan("x86-cpu", 2, {"onnxruntime": "1"}, budget_s=0) is None
    assert RuntimeSettings().key() == "default" and RuntimeSettings().is_default()


def test_the_pair_with_the_lowest_p50_wins_and_ties_go_to_size_then_fewer_threads():
    facts = [CandidateFacts(variant_id="fp32", size_bytes=400), CandidateFacts(variant_id="int8", size_bytes=100),
             CandidateFacts(variant_id="bad", size_bytes=50)]
    defaults = {"fp32": report("fp32", 2.0), "int8": report("int8", 1.0), "bad": report("bad", 0.5, agreement=0.5)}
    selection = select_variant(facts, defaults, Policy())
    assert selection.winner == "int8"
    two, one = RuntimeSettings(threads=2), RuntimeSettings(threads=1)
    tuned = [report("int8", 0.60, two), report("int8", 0.605, one), report("fp32", 0.59, two),
             report("bad", 0.1, two),  # an ineligible variant never wins, however fast
             report("int8", 0.2, RuntimeSettings(provider="XnnpackExecutionProvider"), not_applicable=True),
             report("int8", 0.3, RuntimeSettings(optimization="basic"), agreement=0.2)]
    choice = choose_pair(selection, defaults, tuned, {f.variant_id: f.size_bytes for f in facts}, Policy())
    # 0.59, 0.60 and 0.605 are within 3%: the smaller file (int8), then fewer threads (1).
    assert (choice.variant_id, choice.settings) == ("int8", one)
    verdicts = {(p.variant_id, p.settings.key()): p for p in choice.pairs}
    assert verdicts[("int8", "threads=1")].selected and "smallest, then fewest threads" in verdicts[("int8", "threads=1")].reason
    assert verdicts[("int8", "provider=XnnpackExecutionProvider")].reason.startswith("not applicable here")
    assert "disagree" in verdicts[("int8", "optimization=basic")].reason
    assert ("bad", "threads=2") not in verdicts
    assert sum(p.selected for p in choice.pairs) == 1


def test_defaults_stay_when_no_tuned_pair_beats_them_and_coverage_floors_flag_a_provider():
    facts = [CandidateFacts(variant_id="fp32", size_bytes=400)]
    defaults = {"fp32": report("fp32", 1.0)}
    selection = select_variant(facts, defaults, Policy())
    slower = [report("fp32", 1.5, RuntimeSettings(threads=1))]
    choice = choose_pair(selection, defaults, slower, {"fp32": 400}, Policy())
    assert choice.variant_id == "fp32" and choice.settings is None
    trt = RuntimeSettings(provider="TensorrtExecutionProvider")
    partial = [report("fp32", 0.4, trt, coverage=0.1)]
    flagged = choose_pair(selection, defaults, partial, {"fp32": 400}, Policy(), min_coverage=0.9)
    assert flagged.settings is None
    pair = next(p for p in flagged.pairs if p.settings == trt)
    assert "ran 10% of the graph" in pair.reason and pair.coverage == 0.1
    assert choose_pair(selection, defaults, partial, {"fp32": 400}, Policy()).settings == trt


def test_a_gain_within_the_timing_noise_keeps_the_defaults():
    facts = [CandidateFacts(variant_id="fp32", size_bytes=400)]
    defaults = {"fp32": report("fp32", 1.0)}
    selection = select_variant(facts, defaults, Policy())
    one = RuntimeSettings(threads=1)
    choice = choose_pair(selection, defaults, [report("fp32", 0.95, one)], {"fp32": 400}, Policy())
    assert choice.settings is None
    [pair] = [p for p in choice.pairs if p.settings == one]
    assert not pair.selected and "not 10% faster than the defaults' best" in pair.reason
    assert choose_pair(selection, defaults, [report("fp32", 0.85, one)], {"fp32": 400}, Policy()).settings == one
