"""The `edgehub` command. Subcommands are imported on first use, so a device with only the
`agent` extra can run `edgehub agent ...` without torch or onnx installed."""

from __future__ import annotations

import importlib

import click

# name -> (module, attribute, extra that provides its dependencies)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "publish": ("edgehub.hub.cli.publish_cmd", "publish", "hub"),
    "zoo": ("edgehub.hub.cli.zoo_cmd", "zoo", "hub"),
    "profiles": ("edgehub.hub.cli.profiles_cmd", "profiles", "hub"),
    "agent": ("edgehub.agent.cli", "agent", "agent"),
    "hub": ("edgehub.hub.cli.hub_cmd", "hub", "hub"),
    "fleet": ("edgehub.hub.cli.fleet_cmd", "fleet", "hub"),
    "rollout": ("edgehub.hub.cli.rollout_cmd", "rollout", "hub"),
    "jobs": ("edgehub.hub.cli.jobs_cmd", "jobs", "hub"),
    "report": ("edgehub.hub.cli.report_cmd", "report", "hub"),
    "demo": ("edgehub.hub.cli.demo_cmd", "demo", "all"),
}


class MissingExtra(click.Command):
    """Stands in for a command whose optional dependencies are not installed."""

    def __init__(self, name: str, extra: str, missing: str):
        super().__init__(name, help=f"(needs: pip install 'edgehub[{extra}]')",
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
        self.extra, self.missing = extra, missing

    def invoke(self, ctx: click.Context):
        raise click.ClickException(
            f"`edgehub {self.name}` needs the '{self.extra}' extra ({self.missing} is not installed): "
            f"pip install 'edgehub[{self.extra}]'"
        )


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, extra = COMMANDS[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] == "edgehub":
                raise
            return MissingExtra(name, extra, exc.name or "a dependency")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgehub")
def cli() -> None:
    """edgehub: compress, convert, benchmark and roll out models to edge devices."""


def main() -> None:
    cli()
