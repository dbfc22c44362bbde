"""`edgehub profiles`: the device profiles variants are built for."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from edgehub.hub.cli.common import console, json_option, one_line_errors, print_json

profiles_file_option = click.option("--profiles-file", type=click.Path(path_type=Path),
                                    help="TOML/YAML file with extra profiles.")


@click.group()
def profiles() -> None:
    """List and inspect device profiles."""


@profiles.command("list")
@profiles_file_option
@json_option
@one_line_errors
def list_profiles(profiles_file, as_json):
    """Built-in profiles plus those in --profiles-file."""
    from edgehub.zoo.profiles import load_profiles

    known = load_profiles(profiles_file)
    if as_json:
        print_json({"profiles": [p.model_dump(mode="json") for p in known.values()]})
        return
    table = Table()
    for column in ("profile", "runtime", "arch", "RAM", "accelerators", "formats", "precisions", "agent runtimes"):
        table.add_column(column)
    for p in known.values():
        table.add_row(p.name, p.runtime, p.arch, f"{p.ram_mb / 1024:.0f} GB", ", ".join(p.accelerators) or "-",
                      ", ".join(p.formats), ", ".join(p.precisions), ", ".join(p.runtimes) or "-")
    console.print(table)


@profiles.command("show")
@click.argument("name")
@profiles_file_option
@json_option
@one_line_errors
def show_profile(name, profiles_file, as_json):
    """One profile's facts."""
    from edgehub.zoo.profiles import get_profile, load_profiles

    profile = get_profile(name, load_profiles(profiles_file))
    if as_json:
        print_json(profile.model_dump(mode="json"))
        return
    table = Table(show_header=False)
    for key, value in profile.model_dump().items():
        table.add_row(key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
    console.print(table)
