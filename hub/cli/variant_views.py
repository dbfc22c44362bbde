"""How variants look to people (tables, lineage trees) and to scripts (JSON)."""

from __future__ import annotations

from rich.table import Table
from rich.tree import Tree

from edgehub.hub.cli.common import human_size, percent
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI must load on an agent-only install
    from edgehub.zoo.records import VariantRecord


def variant_json(v: VariantRecord) -> dict:
    data = v.model_dump(mode="json", exclude={"signed_manifest"})
    if v.signed_manifest is not None:
        data["manifest"] = v.signed_manifest.model_dump(mode="json")
    return data


def _root_size(variants: list[VariantRecord]) -> int | None:
    roots = [v for v in variants if v.parent is None and v.precision == "fp32"]
    return roots[0].size_bytes if roots else None


def variants_table(variants: list[VariantRecord], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for column, justify in (("variant", "left"), ("format", "left"), ("precision", "left"), ("size", "right"),
                            ("vs fp32", "right"), ("accuracy", "right"), ("agreement", "right")):
        table.add_column(column, justify=justify)
    base = _root_size(variants)
    for v in variants:
        table.add_row(
            v.label, v.format, v.precision, human_size(v.size_bytes),
            f"{v.size_bytes / base:.2f}x" if base else "-",
            percent(v.metrics.get("accuracy")), percent(v.metrics.get("agreement")),
        )
    return table


def lineage_tree(name: str, version: int, variants: list[VariantRecord]) -> Tree:
    tree = Tree(f"[bold]{name}[/] v{version}")
    nodes = {}
    for v in variants:  # the registry returns parents before children
        steps = " -> ".join(step["pass"] for step in v.recipe)
        label = f"{v.label} [dim]({v.format} {v.precision}, {human_size(v.size_bytes)}; {steps})[/]"
        parent = nodes.get(v.parent, tree)
        nodes[v.id] = parent.add(label)
    return tree
