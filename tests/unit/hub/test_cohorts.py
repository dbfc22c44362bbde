"""Cohort benchmarking rules: pure functions (keys, pooling, decisions, disagreement, recruits)."""

from __future__ import annotations

import pytest

from edgehub.hub.control.cohorts import (
    CohortPolicy,
    cohort_key,
    complete_devices,
    decide,
    disagreement,
    pooled_report,
    ram_class_gb,
    recruits,
)
from edgehub.hub.control.selection import CandidateFacts, Policy
from edgehub.protocol.messages import BenchmarkReport, DeviceState, Hardware, Latency


def state(device: str = "d1", cores: int = 4, ram: int = 8000, runtimes: dict | None = None,
          accelerators: list[str] | None = None) -> DeviceState:
    return DeviceState(device_id=device, online=True, runtimes=runtimes or {"onnxruntime": "1.32.0"},
                       hardware=Hardware(arch="x86_64", cores=cores, ram_mb=ram, accelerators=accelerators or []))


def rep(device: str, variant: str, p50: float | None = 2.0, ok: bool = True, agreement: float = 1.0,
        rss: float = 50.0) -> BenchmarkReport:
    latency = Latency(p50_ms=p50, p90_ms=p50 * 1.1, p99_ms=p50 * 1.5, mean_ms=p50, runs=100) if ok and p50 else None
    return BenchmarkReport(event_id=f"ev-{device}-{variant}-0001", device_id=device, generation=1, variant_id=variant,
                           ok=ok, error=None if ok else "crashed", latency=latency, agreement=agreement if ok else None,
                           peak_rss_mb=rss if ok else None, runtime="onnxruntime")


FACTS = [CandidateFacts(variant_id="fp32", size_bytes=4000, accuracy=0.90),
         CandidateFacts(variant_id="int8", size_bytes=1000, accuracy=0.899)]


def test_cohort_key_groups_same_hardware_and_runtimes():
    a = cohort_key("x86-cpu", state("a", ram=7800))
    assert a == cohort_key("x86-cpu", state("b", ram=8100))  # same RAM class
    assert a != cohort_key("x86-cpu", state("c", cores=8))
    assert a != cohort_key("rpi5", state("a"))
    assert a != cohort_key("x86-cpu", state("a", runtimes={"onnxruntime": "1.31.0"}))
    assert a != cohort_key("x86-cpu", state("a", accelerators=["nvidia-gpu"]))
    assert cohort_key("x86-cpu", None) is None
    assert cohort_key("x86-cpu", DeviceState(device_id="a", online=True)) is None  # no hardware yet


def test_cohort_key_stays_short_and_distinct():
    many = {f"rt{i:02d}": "1.0.0-with-a-long-version-string" for i in range(16)}
    other = {**many, "rt15": "2"}
    k1, k2 = cohort_key("x86-cpu", state(runtimes=many)), cohort_key("x86-cpu", state(runtimes=other))
    assert len(k1) <= 160 and len(k2) <= 160 and k1 != k2


def test_ram_class():
    assert ram_class_gb(8000) == 8 and ram_class_gb(7600) == 8 and ram_class_gb(3900) == 4
    assert ram_class_gb(300) == 0.5 and ram_class_gb(0) == 0.5


def test_pooled_report_medians_and_worst_cases():
    pooled = pooled_report("int8", [rep("a", "int8", 1.0, agreement=0.999, rss=40),
                                    rep("b", "int8", 3.0, rss=90), rep("c", "int8", 2.0)])
    assert pooled.ok and pooled.latency.p50_ms == 2.0 and pooled.latency.p99_ms == 3.0
    assert pooled.agreement == 0.999 and pooled.peak_rss_mb == 90 and pooled.latency.runs == 300


def test_pooled_report_fails_when_half_failed():
    assert not pooled_report("x", [rep("a", "x"), rep("b", "x", ok=False)]).ok
    failed = pooled_report("x", [rep("a", "x", ok=False), rep("b", "x", ok=False), rep("c", "x")])
    assert not failed.ok and "2 of 3" in failed.error and "crashed" in failed.error
    assert pooled_report("x", [rep("a", "x"), rep("b", "x"), rep("c", "x", ok=False)]).ok


def test_decide_waits_for_online_samples_only():
    reports = {"a": {"fp32": rep("a", "fp32", 2.0), "int8": rep("a", "int8", 1.0)}, "b": {"fp32": rep("b", "fp32")}}
    assert complete_devices(reports, ["fp32", "int8"]) == ["a"]
    assert decide(FACTS, reports, online={"a", "b"}, policy=Policy()) is None  # b is still benchmarking
    verdict = decide(FACTS, reports, online={"a"}, policy=Policy())  # b went offline: a decides
    assert verdict is not None and verdict.selection.winner == "int8" and verdict.samples_used == ["a"]
    assert verdict.reports_used == 2
    assert decide(FACTS, {"b": {}}, online=set(), policy=Policy()) is None  # nobody finished


def test_decide_pools_several_samples():
    reports = {d: {"fp32": rep(d, "fp32", 2.0), "int8": rep(d, "int8", p)} for d, p in (("a", 1.0), ("b", 1.1),
                                                                                        ("c", 5.0))}
    verdict = decide(FACTS, reports, online={"a", "b", "c"}, policy=Policy())
    assert verdict.selection.winner == "int8" and verdict.reports_used == 6
    by = {v.variant_id: v for v in verdict.selection.verdicts}
    assert by["int8"].p50_ms == 1.1  # the median, not the outlier


def test_disagreement():
    policy = CohortPolicy(slower_than=0.5)
    pooled = {"variant_id": "int8", "p50_ms": 2.0}
    assert disagreement(pooled, rep("x", "int8", 2.5), True, policy) is None
    assert "3.5x" in disagreement(pooled, rep("x", "int8", 7.0), True, policy)
    assert "failed here" in disagreement(pooled, rep("x", "int8", ok=False), False, policy)
    assert "not eligible" in disagreement(pooled, rep("x", "int8", 2.0), False, policy)
    assert disagreement(None, rep("x", "int8", 9.0), True, policy) is None


@pytest.mark.parametrize("alive,sampled,expected", [(0, 0, ["a", "c", "d"]), (2, 2, ["a"]), (3, 3, []),
                                                    (0, 11, ["a"]), (0, 12, [])])
def test_recruits(alive, sampled, expected):
    members = [("a", True), ("b", False), ("c", True), ("d", True), ("e", True)]
    assert recruits(alive, sampled, members, CohortPolicy(sample_size=3, max_samples=12)) == expected


# ---- through the fleet: simulated devices, real broker, the hub's loop -------------------------------

def test_cohorts_benchmark_a_sample_and_share_the_winner(tmp_path, tiny_mlp):
    from click.testing import CliRunner
    from mqtt_helpers import wait_for
    from sim_hub import SimHub

    from edgehub.hub.cli import cli
    from edgehub.hub.control.cohort_plan import parse_key
    from edgehub.hub.sim.model import FailureRule, SyntheticDistribution

    # fp16 is clearly fastest, but fails its benchmark on about a third of the devices: members that
    # see it fail disagree with their cohort, join its sample, and the cohort decides again.
    dist = SyntheticDistribution(base_p50_ms={"fp32": 2.0, "fp16": 1.0, "int8": 3.0},
                                 failures=[FailureRule(match="-fp16", benchmark=0.35)])
    with SimHub(tmp_path / "home", cohorts=CohortPolicy(sample_size=2, max_samples=6)) as hub:
        hub.simulate(60, distribution=dist)
        assert wait_for(lambda: hub.fleet.status_summary()["online"] == 60, timeout=30)
        outcome = hub.publish(tiny_mlp)
        variant_ids = [v.id for v in outcome.variants]
        hub.fleet.deploy("digits", outcome.version.version, ["x86-cpu"])
        assert wait_for(lambda: hub.fleet.status_summary()["settled"] == 60, timeout=90), hub.fleet.status_summary()

        devices = hub.fleet.devices()
        cohorts = {d.cohort for d in devices}
        assert len(cohorts) == 3 and None not in cohorts  # the distribution's three hardware kinds
        keys = [(c, "digits", 1) for c in cohorts]
        samples = hub.fleet.cohort_samples(keys)
        decisions = hub.fleet.cohort_decisions(keys)
        assert set(decisions) == set(keys)
        reported = hub.fleet.reported_variants([d.id for d in devices])
        facts = hub.fleet.report_facts([d.id for d in devices], variant_ids)
        for d in devices:
            key = (d.cohort, "digits", 1)
            if d.id in samples[key]:
                assert reported[d.id] >= set(variant_ids) or samples[key][d.id].startswith("disagreed")
            else:
                # A follower measured its cohort's winner (and an earlier winner, if the cohort decided
                # again), never every candidate.
                assert decisions[key].winner in reported[d.id] and len(reported[d.id]) < len(variant_ids)
            assert facts[d.id][d.active_variant].ok  # nothing runs where it failed
        for key in keys:
            assert 2 <= len(samples[key]) <= 6 and decisions[key].reports_used >= 4
            assert parse_key(f"{key[0]}|digits|1") == key
        disagreed = [why for s in samples.values() for why in s.values() if why.startswith("disagreed")]
        assert disagreed and all("failed here" in why for why in disagreed)
        # Decided again with the disagreeing members' results in.
        assert any(d.reports_used > 2 * len(variant_ids) for d in decisions.values())
        total = sum(len(v) for v in reported.values())
        assert total < 60 * len(variant_ids) / 2  # far fewer benchmarks than every device running all

        follower = next(d for d in devices if d.id not in samples[(d.cohort, "digits", 1)])
        result = CliRunner().invoke(cli, ["fleet", "explain", follower.id, "--home", str(hub.paths.root), "--json"])
        explained = __import__("json").loads(result.output)
        assert explained["explanation"]["cohort"] == follower.cohort
        assert explained["winner"] == follower.active_variant and explained["explanation"]["samples"]
