"""Activating a variant atomically, with a health check and automatic rollback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgehub.agent.benchmark import run_benchmark
from edgehub.agent.local_state import InstalledVariant, LocalState, StateFile
from edgehub.protocol.messages import BenchmarkSettings
from edgehub.protocol.runtime_settings import RuntimeSettings

# A short run on the reference inputs, in a child process so a bad model cannot take the agent.
HEALTH_SETTINGS = BenchmarkSettings(time_budget_s=0.2, warmup_runs=1, min_runs=3, timeout_s=60)
HEALTH_MIN_AGREEMENT = 0.99  # top-1, for class scores
HEALTH_MIN_COSINE = 0.99  # outputs that are not class scores


def health_settings(limits: BenchmarkSettings | None) -> BenchmarkSettings:
    """A short run, under the hub's memory limit and thread count when it gave them (an
    activated model must not get more memory than its benchmark had)."""
    if limits is None:
        return HEALTH_SETTINGS
    return HEALTH_SETTINGS.model_copy(update={"memory_limit_mb": limits.memory_limit_mb, "threads": limits.threads,
                                              "timeout_s": min(HEALTH_SETTINGS.timeout_s, limits.timeout_s)})


def health_check(variant: InstalledVariant, limits: BenchmarkSettings | None = None,
                 settings: RuntimeSettings | None = None) -> str | None:
    """None if the variant loads, runs (with `settings`) and matches its reference outputs; else the reason."""
    result = run_benchmark(variant.path, variant.format, variant.references_path, health_settings(limits),
                           runtime_settings=settings)
    if not result.ok:
        return result.error or "failed to run"
    if result.agreement is not None and result.agreement < HEALTH_MIN_AGREEMENT:
        return f"outputs disagree with the reference (agreement {result.agreement:.3f})"
    if result.agreement is None and result.cosine is not None and result.cosine < HEALTH_MIN_COSINE:
        return f"outputs disagree with the reference (cosine {result.cosine:.4f})"
    return None


@dataclass
class ActivationOutcome:
    ok: bool
    error: str | None = None
    rolled_back_to: str | None = None


def activate(state: LocalState, store: StateFile, variant: InstalledVariant,
             check: Callable[[InstalledVariant], str | None] = health_check, slot: str | None = None,
             settings: RuntimeSettings | None = None) -> ActivationOutcome:
    """Make `variant` (run with `settings`) active in its slot (one atomic state write), check
    it, roll back if it is unhealthy. The slot (default: the variant's model) keeps its previous
    variant for rollback; other slots are not touched.
    """
    record = state.slot(slot or variant.manifest.manifest.model)
    before = (record.active, record.previous, record.settings, record.previous_settings)
    if record.active is not None and record.active.variant_id == variant.variant_id and record.settings == settings:
        return ActivationOutcome(ok=True)
    record.active, record.previous = variant, record.active
    record.settings, record.previous_settings = settings, record.settings
    store.save(state)
    problem = check(variant)
    if problem is None:
        return ActivationOutcome(ok=True)
    before_active = before[0]
    record.active, record.previous, record.settings, record.previous_settings = before
    store.save(state)
    return ActivationOutcome(ok=False, error=f"health check failed: {problem}",
                             rolled_back_to=before_active.variant_id if before_active else None)
