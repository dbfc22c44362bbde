"""`edgehub agent ...`: the on-device daemon. Imports only the agent package."""

from __future__ import annotations

import logging
from pathlib import Path

import click


@click.group()
def agent() -> None:
    """Run the on-device agent."""


@agent.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="Agent config TOML (written by `edgehub fleet enroll`).")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
def run(config_path: Path, verbose: bool) -> None:
    """Connect to the hub, benchmark candidates, activate the chosen variant, serve it locally."""
    from edgehub.agent.config import ConfigError, load_config
    from edgehub.agent.daemon import run_forever

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    run_forever(config)
