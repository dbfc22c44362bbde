"""Which (variant, runtime settings) pairs the agent measures after the default runs. Pure.

Only the leaders are tuned: the variants whose default p50 is within the plan's margin of the
best one (a variant twice as slow at its defaults will not win by a thread count). Pairs are
measured leader by leader, best first, until TUNE_SHARE of the plan's time budget is spent (the
budget counts across reconcile passes, per model version); a pair measured before (this variant
file under these settings) is not measured again.

Then the contenders (the pairs within CONTEND of the best p50) are measured again, interleaved,
ROUNDS times, and each keeps the median of its runs: one run's spread on a busy device (17% for
a 10-ms CNN, bench/RESULTS.md) is larger than the gaps the choice is made on.
"""

from __future__ import annotations

from edgehub.protocol.runtime_settings import DEFAULT_SETTINGS, RuntimeSettings, TuningPlan

CONTEND = 0.2  # pairs within 20% of the best p50 are measured again
MOST = 3  # at most this many of them
ROUNDS = 2  # extra interleaved runs each: with the first, a median of three
TUNE_SHARE = 0.7  # of the budget for new pairs; the rest is kept for the contenders' runs


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


def split_key(key: str) -> tuple[str, RuntimeSettings]:
    """pair_key's inverse, for the pairs this agent made (settings keys are k=v lists)."""
    variant_id, _, text = key.rpartition("@")
    if text == "default":
        return variant_id, DEFAULT_SETTINGS
    return variant_id, RuntimeSettings.model_validate(dict(part.split("=", 1) for part in text.split(",")))


def contenders(p50s: dict[str, float | None], tolerance: float = CONTEND, most: int = MOST) -> list[str]:
    """Pair keys within `tolerance` of the best p50, best first, at most `most`; none when fewer
    than two (nothing to decide between)."""
    measured = sorted((p50, k) for k, p50 in p50s.items() if p50 is not None and p50 > 0)
    if not measured:
        return []
    best = measured[0][0]
    close = [k for p50, k in measured if p50 <= best * (1 + tolerance)][:most]
    return close if len(close) >= 2 else []


def median_index(values: list[float]) -> int:
    """The index of the median of `values` (the lower middle for an even count)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(values) - 1) // 2]
