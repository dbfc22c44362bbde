"""`edgehub zoo`: what the registry holds."""

from __future__ import annotations

import click
from rich.table import Table

from edgehub.hub.cli.common import console, home_option, json_option, one_line_errors, print_json
from edgehub.hub.cli.variant_views import lineage_tree, sensitivity_tables, variant_json, variants_table


def _registry(home):
    from edgehub.hub.home import HubPaths
    from edgehub.zoo.registry import Registry

    # The registry alone: browsing the zoo never touches the fleet's tables.
    return Registry(HubPaths.from_home(home).db_url)


@click.group()
def zoo() -> None:
    """Browse models, versions and variants in the registry."""


@zoo.command("list")
@home_option
@json_option
@one_line_errors
def list_models(home, as_json):
    """List models with their latest version and variant counts."""
    registry = _registry(home)
    try:
        models = registry.list_models()
    finally:
        registry.close()
    if as_json:
        print_json({"models": [m.model_dump(mode="json") for m in models]})
        return
    if not models:
        console.print("The zoo is empty: add a model with `edgehub publish`.")
        return
    table = Table()
    for column in ("model", "latest", "versions", "variants", "created"):
        table.add_column(column)
    for m in models:
        table.add_row(m.name, f"v{m.latest_version}", str(m.versions), str(m.variants),
                      m.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@zoo.command("show")
@click.argument("name")
@click.option("--version", type=int, help="Model version (default: the latest).")
@home_option
@json_option
@one_line_errors
def show(name, version, home, as_json):
    """Show a model's variants: lineage tree, sizes, metrics."""
    from edgehub.zoo.registry import RegistryError

    registry = _registry(home)
    try:
        record = registry.get_version(name, version) if version else registry.latest_version(name)
        if record is None:
            what = f"{name} v{version}" if version else name
            raise RegistryError(f"no model {what} in the zoo; see `edgehub zoo list`")
        variants = registry.variants(name, record.version)
    finally:
        registry.close()
    if as_json:
        print_json({"model": name, "version": record.version, "source": record.model_dump(mode="json"),
                    "variants": [variant_json(v) for v in variants]})
        return
    console.print(lineage_tree(name, record.version, variants))
    console.print(variants_table(variants))
    for table in sensitivity_tables(variants):
        console.print(table)
