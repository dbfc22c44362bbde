"""`edgehub zoo`: what the registry holds (locally, or on a remote hub with --hub)."""

from __future__ import annotations

from datetime import datetime

import click
from rich.table import Table

from edgehub.hub.cli.common import console, hub_options, json_option, one_line_errors, open_hub, print_json
from edgehub.hub.cli.variant_views import lineage_tree, sensitivity_tables, variants_table


@click.group()
def zoo() -> None:
    """Browse models, versions and variants in the registry."""


@zoo.command("list")
@hub_options
@json_option
@one_line_errors
def list_models(home, hub_url, hub_token, hub_ca, as_json):
    """List models with their latest version and variant counts."""
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = hub.zoo_list()
    if as_json:
        print_json(data)
        return
    if not data["models"]:
        console.print("The zoo is empty: add a model with `edgehub publish`.")
        return
    table = Table()
    for column in ("model", "latest", "versions", "variants", "created"):
        table.add_column(column)
    for m in data["models"]:
        table.add_row(m["name"], f"v{m['latest_version']}", str(m["versions"]), str(m["variants"]),
                      datetime.fromisoformat(m["created_at"]).strftime("%Y-%m-%d %H:%M"))
    console.print(table)


def variant_records(data: list[dict]) -> list:
    """VariantRecords from their JSON (what the tables and trees take)."""
    from edgehub.zoo.records import VariantRecord

    return [VariantRecord.model_validate({k: v for k, v in d.items() if k != "manifest"}) for d in data]


@zoo.command("show")
@click.argument("name")
@click.option("--version", type=int, help="Model version (default: the latest).")
@hub_options
@json_option
@one_line_errors
def show(name, version, home, hub_url, hub_token, hub_ca, as_json):
    """Show a model's variants: lineage tree, sizes, metrics."""
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = hub.zoo_show(name, version)
    if as_json:
        print_json(data)
        return
    variants = variant_records(data["variants"])
    console.print(lineage_tree(name, data["version"], variants))
    console.print(variants_table(variants))
    for table in sensitivity_tables(variants):
        console.print(table)
