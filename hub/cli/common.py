"""What every hub command shares: --home, --json, consoles, and turning errors into one line."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click
from rich.console import Console

# Tables and progress go to stderr when --json is on, so stdout stays machine-readable.
console = Console()
err_console = Console(stderr=True)

home_option = click.option(
    "--home", type=click.Path(file_okay=False), envvar="EDGEHUB_HOME", default=None,
    help="Hub home (registry, artifacts, keys). Default: $EDGEHUB_HOME or ~/.edgehub.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")


def known_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input, not a bug: printed as one line, exit code 1."""
    from edgehub.converters.errors import ConversionError
    from edgehub.hub.eval_data import EvalSetError
    from edgehub.hub.publish import PublishError
    from edgehub.zoo.profiles import ProfileError
    from edgehub.zoo.fleet import FleetError
    from edgehub.zoo.registry import RegistryError

    known: list[type[Exception]] = [ConversionError, EvalSetError, PublishError, ProfileError, RegistryError, FleetError]
    from edgehub.hub.broker import BrokerError

    known.append(BrokerError)
    return tuple(known)


def one_line_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except known_errors() as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(1)

    return wrapper


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"
