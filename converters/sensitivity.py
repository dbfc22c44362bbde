"""Pruning sensitivity: per-layer accuracy drop at several ratios, turned into per-layer ratios.

`measure_sensitivity` prunes one layer at a time (the rest untouched) at each ratio and records
the drop of a score; `allocate_ratios` then picks, for a target overall ratio (weighted by
each layer's size), the ratios that keep the worst per-layer drop as small as possible: the
same tolerance t applies to every layer, each layer takes the largest ratio whose drop stays
within t, and t is the smallest value that reaches the target. Both are pure functions of
their inputs (the first takes the scorer as a callable).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# How finely allocated ratios are resolved between measured points.
RATIO_STEP = 0.01


def measure_sensitivity(layers: list[str], ratios: list[float], baseline: float,
                        score: Callable[[str, float], float],
                        on_step: Callable[[int, int], None] = lambda done, total: None) -> dict[str, dict[float, float]]:
    """{layer: {ratio: drop}}, where drop = baseline - score(layer pruned alone at ratio)."""
    table: dict[str, dict[float, float]] = {}
    total, done = len(layers) * len(ratios), 0
    for layer in layers:
        table[layer] = {}
        for ratio in sorted(ratios):
            table[layer][ratio] = round(baseline - score(layer, ratio), 6)
            done += 1
            on_step(done, total)
    return table


def drop_curve(points: dict[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Measured (ratio, drop) points with (0, 0) added, made non-decreasing (pruning more never
    counts as hurting less: measurement noise would otherwise reward it)."""
    xs = np.array([0.0] + sorted(points), dtype=np.float64)
    ys = np.array([0.0] + [points[r] for r in sorted(points)], dtype=np.float64)
    return xs, np.maximum.accumulate(np.maximum(ys, 0.0))


def ratio_within(points: dict[float, float], tolerance: float) -> float:
    """The largest ratio (interpolated between measured points) whose drop is <= tolerance."""
    xs, ys = drop_curve(points)
    grid = np.arange(0.0, xs[-1] + RATIO_STEP / 2, RATIO_STEP)
    drops = np.interp(grid, xs, ys)
    ok = grid[drops <= tolerance + 1e-12]
    return float(ok[-1]) if len(ok) else 0.0


def overall_ratio(ratios: dict[str, float], sizes: dict[str, int]) -> float:
    total = sum(sizes[k] for k in ratios)
    return sum(ratios[k] * sizes[k] for k in ratios) / total if total else 0.0


def allocate_ratios(table: dict[str, dict[float, float]], sizes: dict[str, int], target: float) -> dict[str, float]:
    """Per-layer ratios reaching `target` overall (size-weighted) with the smallest common tolerance.

    When even the largest measured ratio everywhere falls short, every layer gets its largest.
    """
    if not table:
        return {}
    at = lambda t: {layer: ratio_within(points, t) for layer, points in table.items()}  # noqa: E731
    top = max(max(drop_curve(p)[1]) for p in table.values())
    if overall_ratio(at(top), sizes) < target:
        return at(top)
    lo, hi = 0.0, top
    for _ in range(40):  # bisection on the tolerance
        mid = (lo + hi) / 2
        if overall_ratio(at(mid), sizes) >= target:
            hi = mid
        else:
            lo = mid
    ratios = at(hi)
    # A flat stretch of a curve makes the ratio jump, so the overall ratio can overshoot the
    # target: give back the excess, from the layers that hurt most at their ratio, in grid steps.
    def hurt(layer: str) -> float:
        xs, ys = drop_curve(table[layer])
        return float(np.interp(ratios[layer], xs, ys))

    for layer in sorted(ratios, key=lambda k: -hurt(k)):
        while ratios[layer] >= RATIO_STEP:
            trial = {**ratios, layer: round(ratios[layer] - RATIO_STEP, 6)}
            if overall_ratio(trial, sizes) < target:
                break
            ratios = trial
    return {k: round(v, 4) for k, v in ratios.items()}
