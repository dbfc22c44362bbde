"""Selection policy: which measured variant a device should run. Pure; no I/O.

Rules: reject a variant that failed on the device, whose outputs disagree with its reference
outputs on the device (a runtime computing wrong numbers), whose accuracy drop is over the budget
(the publisher's task metric where one was given; without labels, whose top-1 agreement with fp32
is under the minimum, a flip between near-tied classes counted as agreeing; for outputs that are
not class scores, whose cosine with fp32 is), or whose peak memory is over the device's limit or
p99 over the SLO; pick the lowest p50 (or p99); among variants within `tie_tolerance` of the best,
the smallest file wins. Every variant gets a reason.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from edgehub.protocol.messages import BenchmarkReport


class Policy(BaseModel):
    accuracy_budget: float = Field(0.01, ge=0, le=1)  # 1 point of top-1
    min_agreement: float = Field(0.99, ge=0, le=1)  # when the eval set has no labels
    min_cosine: float = Field(0.99, ge=-1, le=1)  # outputs that are not class scores (embeddings, ...)
    task_budget: float = Field(0.01, ge=0)  # largest drop of the publisher's task metric (--metric)
    min_device_agreement: float = Field(0.99, ge=0, le=1)  # on-device check against references
    min_device_cosine: float = Field(0.99, ge=-1, le=1)  # the same for outputs that are not class scores
    memory_limit_mb: float | None = Field(None, gt=0)
    slo_p99_ms: float | None = Field(None, gt=0)
    objective: Literal["p50", "p99"] = "p50"
    tie_tolerance: float = Field(0.03, ge=0, le=1)  # relative latency difference counted as a tie


class CandidateFacts(BaseModel):
    """What the hub knows of a variant from publishing it."""

    variant_id: str
    size_bytes: int
    accuracy: float | None = None
    agreement: float | None = None  # only for class-score outputs
    # The same, a flip between near-tied classes counted as agreeing (protocol/metrics.py:
    # NEAR_TIE); what the gate reads when present (variants published before it have none).
    near_tie_agreement: float | None = None
    cosine: float | None = None
    task_drop: float | None = None  # the publisher's task metric (--metric): fp32's minus this variant's


class Verdict(BaseModel):
    variant_id: str
    eligible: bool
    selected: bool = False
    reason: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    size_bytes: int | None = None


class Selection(BaseModel):
    winner: str | None
    complete: bool  # every candidate has a report
    verdicts: list[Verdict]

    def explain(self) -> dict:
        return self.model_dump(mode="json")


def _baseline(candidates: list[CandidateFacts]) -> float | None:
    accuracies = [c.accuracy for c in candidates if c.accuracy is not None]
    return max(accuracies) if accuracies else None  # the fp32 parent, or better


def _reject_reason(c: CandidateFacts, r: BenchmarkReport | None, policy: Policy, baseline: float | None,
                   reference_accuracy: float | None) -> str | None:
    if r is None:
        return "not benchmarked on this device yet"
    if not r.ok:
        return f"failed on the device: {r.error or 'unknown error'}"
    if r.latency is None:
        return "report has no latency"
    if r.agreement is not None and r.agreement < policy.min_device_agreement:
        return (f"outputs on the device disagree with the reference outputs (agreement {r.agreement:.3f} "
                f"< {policy.min_device_agreement}): the runtime computes this variant wrongly")
    if r.agreement is None and r.cosine is not None and r.cosine < policy.min_device_cosine:
        return (f"outputs on the device differ from the reference outputs (cosine {r.cosine:.4f} "
                f"< {policy.min_device_cosine}): the runtime computes this variant wrongly")
    ref = reference_accuracy if reference_accuracy is not None else baseline
    if c.task_drop is not None:
        if c.task_drop > policy.task_budget + 1e-9:
            return f"task metric drop {c.task_drop:.4f} is over the budget of {policy.task_budget}"
    elif ref is not None and c.accuracy is not None:
        drop = ref - c.accuracy
        if drop > policy.accuracy_budget + 1e-9:
            return f"accuracy drop {drop * 100:.2f} points is over the budget of {policy.accuracy_budget * 100:.2f}"
    elif c.near_tie_agreement is not None:
        if c.near_tie_agreement < policy.min_agreement:
            exact = f", {c.agreement:.4f} exact" if c.agreement is not None else ""
            return (f"agreement with fp32 {c.near_tie_agreement:.4f} (near-ties counted as agreeing{exact}) "
                    f"is under {policy.min_agreement}")
    elif c.agreement is not None:
        if c.agreement < policy.min_agreement:
            return f"agreement with fp32 {c.agreement:.4f} is under {policy.min_agreement}"
    elif c.cosine is not None and c.cosine < policy.min_cosine:
        return f"cosine with fp32 outputs {c.cosine:.4f} is under {policy.min_cosine}"
    return resource_problem(r, policy)


def resource_problem(r: BenchmarkReport, policy: Policy) -> str | None:
    """A measured run over the policy's memory limit or p99 SLO (a variant's, or a settings pair's)."""
    if policy.memory_limit_mb is not None and r.peak_rss_mb is not None and r.peak_rss_mb > policy.memory_limit_mb:
        return f"peak memory {r.peak_rss_mb:.0f} MB is over the limit of {policy.memory_limit_mb:.0f} MB"
    if policy.slo_p99_ms is not None and r.latency is not None and r.latency.p99_ms > policy.slo_p99_ms:
        return f"p99 {r.latency.p99_ms:.3f} ms is over the SLO of {policy.slo_p99_ms} ms"
    return None


def select_variant(candidates: list[CandidateFacts], reports: dict[str, BenchmarkReport], policy: Policy,
                   reference_accuracy: float | None = None) -> Selection:
    """Choose among `candidates` using the device's `reports` (keyed by variant id).

    `reference_accuracy` is the accuracy the budget is measured from (the fp32 parent's);
    by default the best accuracy among the candidates.
    """
    baseline = _baseline(candidates)
    verdicts: dict[str, Verdict] = {}
    eligible: list[tuple[float, int, str]] = []
    for c in candidates:
        r = reports.get(c.variant_id)
        reason = _reject_reason(c, r, policy, baseline, reference_accuracy)
        lat = r.latency if r is not None and r.latency is not None else None
        verdicts[c.variant_id] = Verdict(
            variant_id=c.variant_id, eligible=reason is None, reason=reason or "eligible",
            p50_ms=lat.p50_ms if lat else None, p99_ms=lat.p99_ms if lat else None, size_bytes=c.size_bytes,
        )
        if reason is None:
            score = lat.p50_ms if policy.objective == "p50" else lat.p99_ms
            eligible.append((score, c.size_bytes, c.variant_id))

    winner: str | None = None
    if eligible:
        best = min(score for score, _, _ in eligible)
        tied = [e for e in eligible if e[0] <= best * (1 + policy.tie_tolerance)]
        _, _, winner = min(tied, key=lambda e: (e[1], e[0]))
        for score, size, vid in eligible:
            v = verdicts[vid]
            if vid == winner:
                v.selected = True
                tie_note = f"; smallest of {len(tied)} within {policy.tie_tolerance:.0%} of the best" if len(tied) > 1 else ""
                v.reason = f"selected: lowest {policy.objective} {score:.3f} ms{tie_note}"
            elif (score, size, vid) in tied:
                v.reason = f"tied on {policy.objective} ({score:.3f} ms) but larger ({size} bytes)"
            else:
                v.reason = f"eligible but slower: {policy.objective} {score:.3f} ms is {score / best:.2f}x the best"
    complete = all(c.variant_id in reports for c in candidates)
    return Selection(winner=winner, complete=complete, verdicts=[verdicts[c.variant_id] for c in candidates])
