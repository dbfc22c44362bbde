"""The report's PNG charts (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from edgehub.hub.report.build import ProfileSection, ReportData, RolloutSection

DPI = 110
SIM_NOTE = "simulated devices: synthetic numbers"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def latency_accuracy_chart(section: ProfileSection, path: Path) -> Path:
    """Latency (median p50 on the devices) vs accuracy, Pareto front joined, selection starred."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    measured = [p for p in section.variants if p.p50_ms is not None and p.accuracy is not None]
    for group, color, label in ((True, "#1f77b4", "on the Pareto front"), (False, "#999999", "dominated")):
        pts = [p for p in measured if p.pareto == group]
        if pts:
            ax.scatter([p.p50_ms for p in pts], [p.accuracy for p in pts], s=55, color=color, zorder=3, label=label)
    for n, p in enumerate(sorted(measured, key=lambda p: (p.p50_ms, p.accuracy))):
        # Alternate above and below, so variants with close numbers keep readable labels.
        ax.annotate(p.label, (p.p50_ms, p.accuracy), textcoords="offset points", xytext=(6, 6 if n % 2 else -11),
                    fontsize=8)
    front = sorted((p for p in measured if p.pareto), key=lambda p: p.p50_ms)
    if front:
        ax.step([p.p50_ms for p in front], [p.accuracy for p in front], where="post", color="#1f77b4",
                linewidth=1.2, label="Pareto front")
    chosen = next((p for p in measured if p.variant_id == section.selected), None)
    if chosen is not None:
        ax.scatter(chosen.p50_ms, chosen.accuracy, s=260, marker="*", color="#d62728", zorder=4,
                   label=f"selected: {chosen.label} ({chosen.selected_by} devices)")
    kind = measured[0].accuracy_kind if measured else "accuracy"
    ax.set_xlabel("p50 latency on the devices, ms (median)")
    ax.set_ylabel(kind)
    title = f"{section.profile}: latency vs {kind}"
    ax.set_title(title + (f"\n({SIM_NOTE})" if section.simulated else ""), fontsize=10)
    if not measured:
        ax.text(0.5, 0.5, "no device has reported yet", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    if measured:
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def sizes_chart(data: ReportData, path: Path) -> Path:
    """File size of every variant (one bar each; a variant built for several profiles once)."""
    seen: dict[str, tuple[str, int]] = {}
    for section in data.profiles:
        for p in section.variants:
            seen.setdefault(p.variant_id, (p.label, p.size_bytes))
    labels = [label for label, _ in seen.values()]
    sizes = [size / 1024 for _, size in seen.values()]
    fig, ax = plt.subplots(figsize=(6.4, max(2.0, 0.45 * len(labels) + 1)))
    bars = ax.barh(labels, sizes, color="#2ca02c")
    ax.bar_label(bars, labels=[f"{s:.1f} KB" for s in sizes], fontsize=8, padding=3)
    ax.invert_yaxis()
    ax.set_xlabel("size, KB")
    ax.set_title(f"{data.model} v{data.version}: size per variant", fontsize=10)
    ax.margins(x=0.2)
    return _save(fig, path)


def rollout_chart(section: RolloutSection, path: Path) -> Path:
    """Devices activated (healthy) and failed over time; the stage changes marked."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for status, color in (("activated", "#2ca02c"), ("failed", "#d62728")):
        times = [t for t, s in section.timeline if s == status]
        if times:
            ax.step(times, range(1, len(times) + 1), where="post", color=color, label=f"{status} ({len(times)})")
    for at, status, stage in section.transitions:
        ax.axvline(at, color="#555555", linestyle=":", linewidth=1)
        ax.annotate(f"stage {stage + 1}" if status == "running" else status, (at, 0), rotation=90, fontsize=7,
                    xytext=(2, 2), textcoords="offset points", va="bottom")
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_ylim(bottom=0, top=max(1, section.members) * 1.05)
    ax.axhline(section.members, color="#1f77b4", linewidth=0.8, linestyle="--", label=f"members ({section.members})")
    ax.set_ylabel("devices")
    ax.set_title(f"rollout #{section.id} on {section.group}: {section.status}", fontsize=10)
    ax.set_xlabel("time (UTC)")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)
