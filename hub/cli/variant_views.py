"""How variants look to people (tables, lineage trees, sensitivity tables) and to scripts (JSON)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from edgehub.hub.cli.common import human_size, percent

if TYPE_CHECKING:  # the CLI must load on an agent-only install
    from edgehub.zoo.records import VariantRecord


def variant_json(v: VariantRecord) -> dict:
    return v.public_json()


def _root_size(variants: list[VariantRecord]) -> int | None:
    roots = [v for v in variants if v.parent is None and v.precision == "fp32"]
    return roots[0].size_bytes if roots else None


def variants_table(variants: list[VariantRecord], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    # Without labels the gate reads agreement counting near-ties: shown beside the exact figure.
    near_ties = any(v.metrics.get("near_tie_agreement") is not None and v.metrics.get("accuracy") is None
                    for v in variants)
    columns = [("variant", "left"), ("format", "left"), ("precision", "left"), ("size", "right"),
               ("vs fp32", "right"), ("accuracy", "right"), ("agreement", "right")]
    for column, justify in columns + ([("with near-ties", "right")] if near_ties else []):
        table.add_column(column, justify=justify)
    base = _root_size(variants)
    for v in variants:
        cells = [v.label, v.format, v.precision, human_size(v.size_bytes),
                 f"{v.size_bytes / base:.2f}x" if base else "-",
                 percent(v.metrics.get("accuracy")), percent(v.metrics.get("agreement"))]
        table.add_row(*cells, *([percent(v.metrics.get("near_tie_agreement"))] if near_ties else []))
    return table


def _ratio(after: float | None, before: float | None) -> str:
    return f"{after / before:.2f}x" if after and before else "?"


def step_summary(step: dict) -> str:
    """One line on what a compression step did, from the notes it recorded ('' for others)."""
    notes = step.get("notes") or {}
    name = step.get("pass")
    if name == "structured_prune":
        return (f"MACs {_ratio(notes.get('macs_after'), notes.get('macs_before'))}, "
                f"params {_ratio(notes.get('params_after'), notes.get('params_before'))}")
    if name == "distill":
        ratio = notes.get("params_ratio_to_teacher")
        return f"student {notes.get('student', '?')}, {ratio:.2f}x teacher params" if ratio else ""
    if name == "depthwise_separable":
        return f"{len(notes.get('replaced', []))} conv(s) made separable"
    if name in ("magnitude_prune", "sensitivity_prune"):
        return f"sparsity {notes.get('sparsity', 0):.2f}, gzip {notes.get('gzip_ratio_to_parent', 0):.2f}x"
    if name == "int8_guarded":
        guard = notes.get("guard", {})
        kept = guard.get("kept_float", [])
        return f"kept float: {', '.join(kept)}" if kept else "all layers int8"
    if name == "int8_static" and "scheme" in notes:
        steps = ", ".join(notes.get("steps", []))
        return f"{notes['scheme']}/{notes.get('calibrate_method', '?')}" + (f", {steps}" if steps else "")
    if name == "tflite" and notes.get("int8_search"):
        search = notes["int8_search"]
        kept = [step.replace("_", " ") for step in ("bias_correction", "rounding") if (search.get(step) or {}).get("kept")]
        return f"full int8, {search.get('observer', '?')} observer" + "".join(f", {k}" for k in kept)
    if name == "int4_weight":
        return f"4-bit {notes.get('quantized_layers', 0)}/{notes.get('eligible_layers', 0)} MatMul/Gemm"
    return ""


def lineage_tree(name: str, version: int, variants: list[VariantRecord]) -> Tree:
    tree = Tree(f"[bold]{name}[/] v{version}")
    nodes = {}
    for v in variants:  # the registry returns parents before children
        steps = " -> ".join(step["pass"] for step in v.recipe)
        summary = step_summary(v.recipe[-1]) if v.recipe else ""
        extra = f"; {escape(summary)}" if summary else ""
        label = f"{v.label} [dim]({v.format} {v.precision}, {human_size(v.size_bytes)}; {steps}{extra})[/]"
        parent = nodes.get(v.parent, tree)
        nodes[v.id] = parent.add(label)
    return tree


def _pruning_table(label: str, notes: dict) -> Table:
    table = Table(title=f"{label}: pruning sensitivity (drop in {notes.get('unit', 'score')} points "
                        f"when one layer alone is pruned)", title_justify="left")
    table.add_column("layer")
    ratios = sorted({r for row in notes["sensitivity"].values() for r in row}, key=float)
    for r in ratios:
        table.add_column(f"{float(r):.0%}", justify="right")
    table.add_column("chosen", justify="right")
    chosen = notes.get("layer_ratios", {})
    for layer, row in notes["sensitivity"].items():
        cells = [f"{row[r] * 100:+.2f}" if r in row else "-" for r in ratios]
        table.add_row(layer, *cells, f"{chosen[layer]:.0%}" if layer in chosen else "-")
    table.caption = (f"target {notes.get('target_sparsity', 0):.0%} of the prunable weights; "
                     f"reached {notes.get('sparsity', 0):.1%}")
    return table


def _guard_table(label: str, guard: dict) -> Table:
    table = Table(title=f"{label}: int8 sensitivity (cosine with fp32 recovered on held-back samples when only "
                        f"that layer is kept float)", title_justify="left")
    table.add_column("layer")
    table.add_column("cosine recovered", justify="right")
    table.add_column("kept float", justify="center")
    kept = set(guard.get("kept_float", []))
    for layer, gain in sorted(guard["sensitivity"].items(), key=lambda kv: -kv[1]):
        table.add_row(layer, f"{gain:+.6f}", "yes" if layer in kept else "")
    unit = guard.get("unit", "score")
    table.caption = (f"all int8: {unit} drop {guard['int8_drop']:.4f}; with {len(kept)} layer(s) float: "
                     f"{guard['final_drop']:.4f} (budget {guard['max_drop']:.4f}"
                     f"{', met' if guard.get('within_budget') else ', not met'}); "
                     f"size {guard.get('size_ratio_to_int8', 1):.2f}x the all-int8 file")
    return table


def sensitivity_tables(variants: list[VariantRecord]) -> list[Table]:
    """Tables for the variants whose own last step measured per-layer sensitivity."""
    tables = []
    for v in variants:
        step = v.recipe[-1] if v.recipe else {}
        notes = step.get("notes") or {}
        if step.get("pass") == "sensitivity_prune" and notes.get("sensitivity"):
            tables.append(_pruning_table(v.label, notes))
        elif step.get("pass") == "int8_guarded" and notes.get("guard", {}).get("sensitivity"):
            tables.append(_guard_table(v.label, notes["guard"]))
    return tables
