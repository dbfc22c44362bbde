"""Cohort benchmarking: devices of the same profile and hardware share results. Pure; no I/O.

A cohort is the devices with one key (profile, arch, cores, RAM class, accelerators, runtimes and
their versions). For each model version the hub asks a sample of k of them to benchmark every
candidate; once every online sample has reported, the samples' results are pooled per variant
(median latency, the worst agreement and memory, failed when most samples failed) and the
selection policy picks the cohort's winner. Every other member only benchmarks that winner and
activates it. A member whose own result disagrees (the winner failed there, is ineligible there,
or is much slower than the cohort's median) joins the sample, and the winner is decided again
with its results in.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from edgehub.hub.control.selection import CandidateFacts, Policy, Selection, select_variant
from edgehub.protocol.messages import BenchmarkReport, DeviceState, Latency

MAX_KEY = 160


class CohortPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    sample_size: int = Field(3, ge=1, le=100)  # k devices benchmark everything
    max_samples: int = Field(12, ge=1, le=1000)  # samples, disagreeing members included
    slower_than: float = Field(0.5, gt=0)  # a member's p50 this much over the cohort's disagrees


def ram_class_gb(ram_mb: int) -> float:
    """RAM rounded to a power of two GiB (0.5 at least), so 7.6 and 7.8 GB boards share a cohort."""
    return max(0.5, 2 ** round(math.log2(max(ram_mb, 1) / 1024)))


def cohort_key(profile: str, state: DeviceState | None) -> str | None:
    """The cohort of a device, or None until it has reported its hardware."""
    if state is None or state.hardware is None:
        return None
    hw = state.hardware
    runtimes = ",".join(f"{k}={v}" for k, v in sorted(state.runtimes.items())) or "-"
    key = (f"{profile}|{hw.arch}|{hw.cores}c|{ram_class_gb(hw.ram_mb):g}g|"
           f"{'+'.join(sorted(hw.accelerators)) or '-'}|{runtimes}")
    if len(key) > MAX_KEY:  # many runtimes: keep it indexable, and still one key per combination
        key = f"{key[:MAX_KEY - 17]}#{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return key


def complete_devices(reports: dict[str, dict[str, BenchmarkReport]], variant_ids: Iterable[str]) -> list[str]:
    wanted = set(variant_ids)
    return sorted(d for d, rs in reports.items() if wanted <= set(rs))


def pooled_report(variant_id: str, reports: list[BenchmarkReport]) -> BenchmarkReport:
    """One report standing for the cohort: medians of the latencies, the worst agreement and memory;
    failed when at least half of the samples failed."""
    good = [r for r in reports if r.ok and r.latency is not None]
    first = reports[0]
    base = dict(event_id=f"cohort-{variant_id[:40]}", device_id=first.device_id, generation=first.generation,
                variant_id=variant_id, runtime=first.runtime, runtime_version=first.runtime_version)
    if len(good) * 2 <= len(reports):
        bad = next(r for r in reports if not (r.ok and r.latency is not None))
        return BenchmarkReport(ok=False, error=f"failed on {len(reports) - len(good)} of {len(reports)} sampled "
                                              f"devices: {bad.error or 'no latency'}"[:2000], **base)

    def median(name: str) -> float:
        return float(statistics.median(getattr(r.latency, name) for r in good))

    agreements = [r.agreement for r in good if r.agreement is not None]
    memory = [r.peak_rss_mb for r in good if r.peak_rss_mb is not None]
    return BenchmarkReport(ok=True, latency=Latency(p50_ms=median("p50_ms"), p90_ms=median("p90_ms"),
                                                    p99_ms=median("p99_ms"), mean_ms=median("mean_ms"),
                                                    runs=sum(r.latency.runs for r in good)),
                           agreement=min(agreements) if agreements else None,
                           peak_rss_mb=max(memory) if memory else None, **base)


class CohortVerdict(BaseModel):
    selection: Selection
    samples_used: list[str]
    reports_used: int


def decide(candidates: list[CandidateFacts], sample_reports: dict[str, dict[str, BenchmarkReport]],
           online: set[str], policy: Policy, reference_accuracy: float | None = None) -> CohortVerdict | None:
    """The cohort's winner from its samples' reports, or None while an online sample is still
    benchmarking (an offline one does not hold the cohort up) or none has finished."""
    variant_ids = [c.variant_id for c in candidates]
    done = complete_devices(sample_reports, variant_ids)
    waiting = [d for d in sample_reports if d not in done and d in online]
    if not done or waiting:
        return None
    pooled = {v: pooled_report(v, [sample_reports[d][v] for d in done]) for v in variant_ids}
    selection = select_variant(candidates, pooled, policy, reference_accuracy=reference_accuracy)
    return CohortVerdict(selection=selection, samples_used=done, reports_used=len(done) * len(variant_ids))


def disagreement(pooled_winner: dict | None, own: BenchmarkReport, own_eligible: bool,
                 policy: CohortPolicy) -> str | None:
    """Why a member's own result on the cohort's winner disagrees with the cohort, or None.

    `pooled_winner` is the winner's verdict in the cohort decision (its p50_ms)."""
    if not own.ok:
        return f"the cohort's winner failed here: {own.error or 'unknown error'}"[:300]
    if not own_eligible:
        return "the cohort's winner is not eligible here"
    cohort_p50 = (pooled_winner or {}).get("p50_ms")
    if own.latency is not None and cohort_p50 and own.latency.p50_ms > cohort_p50 * (1 + policy.slower_than):
        return (f"p50 {own.latency.p50_ms:.3f} ms here is {own.latency.p50_ms / cohort_p50:.1f}x "
                f"the cohort's {cohort_p50:.3f} ms")
    return None


def recruits(alive: int, sampled: int, members: list[tuple[str, bool]], policy: CohortPolicy) -> list[str]:
    """Members to add to a cohort's sample so that k samples are online or finished.

    `alive`: samples online or done; `sampled`: samples in all (capped at max_samples);
    `members`: (device, online) candidates, in the order to take them."""
    need = min(policy.sample_size - alive, policy.max_samples - sampled)
    return [d for d, online in members if online][:max(0, need)]
