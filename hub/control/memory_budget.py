"""Several models on one device must fit its memory together. Pure; no I/O.

Each slot's selection picks its fastest eligible variant on its own; `fit_budget` then checks the
sum of the winners' peak memory against the device's limit and, when it is over, takes the
combination of eligible variants that fits with the fewest slots moved off their winner (then the
lowest total p50 relative to the winners). When no combination fits, slots are left out (no
variant activated, the reason recorded) until the rest fits: first the slots whose winner the
device does not run yet (an existing model keeps running over a new one), the largest first.

Peak memory is each variant's benchmark peak RSS: every figure includes the runtime's own share,
so the sum over-counts what one agent process holds; the budget errs on the safe side.
"""

from __future__ import annotations

import itertools

from pydantic import BaseModel, ConfigDict

MAX_OPTIONS = 6  # per slot: 6^8 combinations at most with MAX_SLOTS, in practice 2-3 slots


class SlotOption(BaseModel):
    model_config = ConfigDict(frozen=True)

    variant_id: str
    p50_ms: float | None = None
    peak_mb: float | None = None


class SlotChoice(BaseModel):
    """One slot's winner and its other eligible variants, winner first."""

    model: str
    options: list[SlotOption]  # options[0] is the winner
    running: bool = False  # the device already runs the winner


class BudgetOutcome(BaseModel):
    winners: dict[str, str | None]  # model -> variant to activate (None: left out)
    reasons: dict[str, str]  # model -> why its winner changed or it was left out
    total_mb: float


def _peak(o: SlotOption) -> float:
    return o.peak_mb or 0.0


def _cost(combo: tuple[SlotOption, ...], slots: list[SlotChoice]) -> tuple[int, float]:
    moved = sum(1 for o, s in zip(combo, slots) if o.variant_id != s.options[0].variant_id)
    slower = sum((o.p50_ms or 0) / s.options[0].p50_ms for o, s in zip(combo, slots) if s.options[0].p50_ms)
    return moved, slower


def _best_fit(slots: list[SlotChoice], limit_mb: float) -> tuple[SlotOption, ...] | None:
    fits = [c for c in itertools.product(*(s.options[:MAX_OPTIONS] for s in slots))
            if sum(_peak(o) for o in c) <= limit_mb]
    return min(fits, key=lambda c: _cost(c, slots)) if fits else None


def fit_budget(slots: list[SlotChoice], limit_mb: float | None) -> BudgetOutcome:
    """The variants to activate so that the slots' peak memory sums to at most `limit_mb`."""
    slots = [s for s in slots if s.options]
    winners = {s.model: s.options[0].variant_id for s in slots}
    total = sum(_peak(s.options[0]) for s in slots)
    if limit_mb is None or total <= limit_mb or len(slots) < 2:
        return BudgetOutcome(winners=winners, reasons={}, total_mb=total)
    reasons: dict[str, str] = {}
    kept = list(slots)
    # Left out first: new models before running ones, the largest (at its smallest variant) first.
    order = sorted(slots, key=lambda s: (s.running, -min(_peak(o) for o in s.options[:MAX_OPTIONS])))
    combo = _best_fit(kept, limit_mb)
    while combo is None and kept:
        out = order.pop(0)
        kept = [s for s in kept if s.model != out.model]
        winners[out.model] = None
        reasons[out.model] = (f"left out: with the device's other models it needs more than the {limit_mb:.0f} MB "
                              f"memory limit (its smallest variant peaks at "
                              f"{min(_peak(o) for o in out.options[:MAX_OPTIONS]):.0f} MB)")
        combo = _best_fit(kept, limit_mb) if kept else ()
    for option, slot in zip(combo or (), kept):
        winners[slot.model] = option.variant_id
        if option.variant_id != slot.options[0].variant_id:
            reasons[slot.model] = (f"{option.variant_id} instead of the faster {slot.options[0].variant_id}: the "
                                   f"models together peak at {total:.0f} MB, over the {limit_mb:.0f} MB limit")
    new_total = sum(_peak(o) for o in (combo or ()))
    return BudgetOutcome(winners=winners, reasons=reasons, total_mb=new_total)
