"""Which (variant, runtime settings) pairs the agent measures after the default runs. Pure.

Only the leaders are tuned: the variants whose default p50 is within the plan's margin of the
best one (a variant twice as slow at its defaults will not win by a thread count). Pairs are
measured leader by leader, best first, until the plan's time budget is spent; a pair measured
before (this variant file under these settings) is not measured again.
"""

from __future__ import annotations

from edgehub.protocol.runtime_settings import RuntimeSettings, TuningPlan


def pair_key(variant_id: str, settings: RuntimeSettings) -> str:
    return f"{variant_id}@{settings.key()}"


def leaders(default_p50: dict[str, float | None], margin: float) -> list[str]:
    """Variants within `margin` of the best default p50, best first (failed ones: None, never)."""
    measured = sorted((p50, v) for v, p50 in default_p50.items() if p50 is not None and p50 > 0)
    if not measured:
        return []
    best = measured[0][0]
    return [v for p50, v in measured if p50 <= best * (1 + margin)]


def pairs_to_measure(plan: TuningPlan, default_p50: dict[str, float | None], done: set[str]) -> list[tuple[str, RuntimeSettings]]:
    """The pairs still to measure, in order; the default settings are never among them."""
    return [(v, s) for v in leaders(default_p50, plan.margin) for s in plan.settings
            if not s.is_default() and pair_key(v, s) not in done]
