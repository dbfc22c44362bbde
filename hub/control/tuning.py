"""Runtime settings per device: which settings a device should try, and which (variant, settings)
pair it should run. Pure; no I/O.

The search is cheap by construction: every candidate is measured at the runtime's defaults
first; the agent then measures only the leaders (within `margin` of the best default p50: 50%,
as a thread count alone moved a small CNN's fp32 from 1.2x its int8 to the fastest pair,
bench/RESULTS.md) under each of the plan's settings, within a time budget (agent/tuning.py). `choose_pair` then takes,
among the eligible variants' measured pairs, the lowest p50 (or p99); pairs within the policy's
tie tolerance go to the smaller file, then to fewer threads.
"""

from __future__ import annotations

from pydantic import BaseModel, field_serializer

from edgehub.hub.control.selection import Policy, Selection, resource_problem
from edgehub.protocol.messages import BenchmarkReport
from edgehub.protocol.runtime_settings import DEFAULT_SETTINGS, RuntimeSettings, TuningPlan

# A non-default setting is run only when it beats the best default run by this much: on a busy
# 2-vCPU machine two runs of one configuration differed by up to 40% for sub-millisecond models
# (bench/RESULTS.md), so a smaller "gain" is as likely noise as real, and a setting chosen on noise
# can be the slower one in the field.
MIN_GAIN = 0.10

# ONNX Runtime execution providers a profile's devices may offer beside the CPU one; the agent
# reports a provider its build lacks as not applicable.
PROFILE_PROVIDERS = {
    "jetson-orin-nano": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    "x86-cpu": ["XnnpackExecutionProvider"],
    "rpi5": ["XnnpackExecutionProvider"],
    "rpi4": ["XnnpackExecutionProvider"],
}


def thread_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to the core count, and the core count itself."""
    counts, n = set(), 1
    while n < cores:
        counts.add(n)
        n *= 2
    counts.add(max(1, cores))
    return sorted(counts)


def tuning_plan(profile: str, cores: int | None, runtimes: dict[str, str], budget_s: float,
                margin: float = 0.5) -> TuningPlan | None:
    """The settings worth trying on a device, or None when there is nothing to try (or no budget)."""
    if budget_s <= 0:
        return None
    settings: list[RuntimeSettings] = [RuntimeSettings(threads=t) for t in thread_counts(cores or 1)]
    if "onnxruntime" in runtimes:
        settings.append(RuntimeSettings(optimization="basic"))
        settings += [RuntimeSettings(provider=p) for p in PROFILE_PROVIDERS.get(profile, [])]
    if "litert" in runtimes or "tflite-runtime" in runtimes:
        settings.append(RuntimeSettings(delegate="none"))
    return TuningPlan(settings=settings, budget_s=budget_s, margin=margin)


class PairVerdict(BaseModel):
    variant_id: str
    settings: RuntimeSettings
    p50_ms: float | None = None
    p99_ms: float | None = None
    coverage: float | None = None  # share of nodes an accelerator or optimised provider ran
    coverage_time: float | None = None  # share of the kernel time in those nodes, where the runtime says
    selected: bool = False
    reason: str

    @field_serializer("settings")
    def _only_what_differs(self, settings: RuntimeSettings) -> dict:
        return settings.model_dump(mode="json", exclude_defaults=True)  # {} for the runtime's defaults


class PairChoice(BaseModel):
    variant_id: str | None
    settings: RuntimeSettings | None  # None: the runtime's defaults
    pairs: list[PairVerdict]

    def explain(self) -> dict:
        return self.model_dump(mode="json")


def _pair_problem(r: BenchmarkReport, policy: Policy) -> str | None:
    if r.not_applicable:
        return f"not applicable here: {r.error or 'the runtime lacks this setting'}"
    if not r.ok or r.latency is None:
        return f"failed: {r.error or 'no latency'}"
    if r.agreement is not None and r.agreement < policy.min_device_agreement:
        return f"outputs disagree with the references under these settings (agreement {r.agreement:.3f})"
    if r.agreement is None and r.cosine is not None and r.cosine < policy.min_device_cosine:
        return f"outputs differ from the references under these settings (cosine {r.cosine:.4f})"
    return resource_problem(r, policy)


def choose_pair(selection: Selection, defaults: dict[str, BenchmarkReport], tuned: list[BenchmarkReport],
                sizes: dict[str, int], policy: Policy, min_coverage: float | None = None) -> PairChoice:
    """The (variant, settings) to run: among the eligible variants' default runs and tuned pairs."""
    eligible = {v.variant_id for v in selection.verdicts if v.eligible}
    pairs: list[tuple[tuple, PairVerdict]] = []
    for r in [*(defaults[v] for v in eligible if v in defaults), *(t for t in tuned if t.variant_id in eligible)]:
        settings = r.settings or DEFAULT_SETTINGS
        problem = _pair_problem(r, policy)
        coverage = r.coverage.accelerated if r.coverage is not None else None
        if problem is None and min_coverage is not None and settings.provider and (coverage or 0) < min_coverage:
            problem = f"the accelerator ran {coverage or 0:.0%} of the graph, under the profile's {min_coverage:.0%}"
        verdict = PairVerdict(variant_id=r.variant_id, settings=settings, coverage=coverage,
                              coverage_time=r.coverage.time_share if r.coverage is not None else None,
                              reason=problem or "",
                              p50_ms=r.latency.p50_ms if r.latency else None,
                              p99_ms=r.latency.p99_ms if r.latency else None)
        score = None
        if problem is None:
            score = verdict.p50_ms if policy.objective == "p50" else verdict.p99_ms
        pairs.append(((score, sizes.get(r.variant_id, 0), settings.threads or 10**6), verdict))
    scored = [(k, v) for k, v in pairs if k[0] is not None]
    default_best = min((k[0] for k, v in scored if v.settings.is_default()), default=None)
    if default_best is not None:
        for k, v in scored:
            if not v.settings.is_default() and k[0] * (1 + MIN_GAIN) > default_best:
                v.reason = (f"{k[0]:.3f} ms is not {MIN_GAIN:.0%} faster than the defaults' best "
                            f"({default_best:.3f} ms): within the timing noise, the defaults stay")
        scored = [(k, v) for k, v in scored if v.settings.is_default() or k[0] * (1 + MIN_GAIN) <= default_best]
    if not scored:
        return PairChoice(variant_id=selection.winner, settings=None, pairs=[v for _, v in pairs])
    best = min(k[0] for k, _ in scored)
    tied = [(k, v) for k, v in scored if k[0] <= best * (1 + policy.tie_tolerance)]
    (_, _, _), chosen = min(tied, key=lambda kv: (kv[0][1], kv[0][2], kv[0][0]))
    chosen.selected = True
    for (score, _, _), v in scored:
        if v is chosen:
            v.reason = f"selected: lowest {policy.objective} {score:.3f} ms" + (
                f" (smallest, then fewest threads, of {len(tied)} within {policy.tie_tolerance:.0%})"
                if len(tied) > 1 else "")
        else:
            v.reason = f"{policy.objective} {score:.3f} ms is {score / best:.2f}x the best"
    settings = None if chosen.settings.is_default() else chosen.settings
    return PairChoice(variant_id=chosen.variant_id, settings=settings, pairs=[v for _, v in pairs])


def pooled_settings(winner: str, sampled: dict[str, list[BenchmarkReport]], policy: Policy
                    ) -> tuple[RuntimeSettings | None, list[dict]]:
    """The settings a cohort runs its winner with, from its sampled devices' runs of it (each
    device's default run and tuned pairs): per setting the median p50 over the devices that
    measured it, kept when at least half of the devices that tuned measured it; the lowest wins
    (a setting only when it beats the defaults by MIN_GAIN), ties (the policy's tolerance) to
    fewer threads, then the runtime's defaults. The followers then
    run it without tuning, as they run the cohort's variant without benchmarking every candidate."""
    by_key: dict[str, tuple[RuntimeSettings, list[float]]] = {}
    tuned_devices = 0
    for reports in sampled.values():
        mine = [r for r in reports if r.variant_id == winner]
        tuned_devices += any(r.settings is not None and not r.settings.is_default() for r in mine)
        for r in mine:
            if _pair_problem(r, policy) is None:
                settings = r.settings or DEFAULT_SETTINGS
                by_key.setdefault(settings.key(), (settings, []))[1].append(r.latency.p50_ms)
    rows = [{"settings": s.model_dump(mode="json", exclude_defaults=True), "devices": len(p50s),
             "median_p50_ms": float(sorted(p50s)[(len(p50s) - 1) // 2])}
            for s, p50s in by_key.values() if len(p50s) * 2 >= max(tuned_devices, 1)]
    if not rows:
        return None, []
    default = next((r["median_p50_ms"] for r in rows if not r["settings"]), None)
    for r in rows:  # as in choose_pair: a setting must beat the defaults by MIN_GAIN
        r["noise"] = bool(r["settings"]) and default is not None and r["median_p50_ms"] * (1 + MIN_GAIN) > default
    candidates = [r for r in rows if not r["noise"]]
    best = min(r["median_p50_ms"] for r in candidates)
    tied = [r for r in candidates if r["median_p50_ms"] <= best * (1 + policy.tie_tolerance)]
    chosen = min(tied, key=lambda r: (r["settings"].get("threads") or 10**6, bool(r["settings"]), r["median_p50_ms"]))
    for r in rows:
        r["selected"] = r is chosen
    settings = RuntimeSettings.model_validate(chosen["settings"])
    return (None if settings.is_default() else settings), sorted(rows, key=lambda r: r["median_p50_ms"])
