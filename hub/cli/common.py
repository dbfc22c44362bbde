"""What every hub command shares: --home, --json, consoles, and turning errors into one line."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click
from rich.console import Console
from rich.markup import escape

# Tables and progress go to stderr when --json is on, so stdout stays machine-readable.
console = Console()
err_console = Console(stderr=True)

home_option = click.option(
    "--home", type=click.Path(file_okay=False), envvar="EDGEHUB_HOME", default=None,
    help="Hub home (registry, artifacts, keys). Default: $EDGEHUB_HOME or ~/.edgehub.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")


def hub_options(fn: Callable) -> Callable:
    """--home plus --hub / --token / --ca: with a hub URL (or $EDGEHUB_HUB) the command talks to that hub's
    API and writes nothing locally; without, it opens the local hub home."""
    fn = click.option("--ca", "hub_ca", envvar="EDGEHUB_CA", type=click.Path(dir_okay=False),
                      help="CA certificate (PEM) of a remote hub's HTTPS, when the system does not trust it "
                           "(`hub certs` makes <home>/tls/ca.pem). Default: $EDGEHUB_CA.")(fn)
    fn = click.option("--token", "hub_token", envvar="EDGEHUB_TOKEN",
                      help="API token for --hub (default: $EDGEHUB_TOKEN; prefer the variable: a command "
                           "line is visible to other users).")(fn)
    fn = click.option("--hub", "hub_url", envvar="EDGEHUB_HUB",
                      help="A remote hub's API URL, e.g. https://hub.example:8443 (default: $EDGEHUB_HUB; "
                           "none: the local hub home).")(fn)
    return home_option(fn)


def open_hub(home, hub_url, hub_token, hub_ca):
    """The hub a command works on: RemoteHub for a URL, else LocalHub on the home (hub/client/)."""
    from edgehub.hub.client import connect

    return connect(home, hub_url, hub_token, hub_ca)


_ERROR_CLASSES = (
    ("edgehub.converters.errors", "ConversionError"),
    ("edgehub.hub.publish.eval_data", "EvalSetError"),
    ("edgehub.hub.publish.pipeline", "PublishError"),
    ("edgehub.zoo.profiles", "ProfileError"),
    ("edgehub.zoo.registry", "RegistryError"),
    ("edgehub.hub.fleet.records", "FleetError"),
    ("edgehub.hub.broker.managed", "BrokerError"),
    ("edgehub.agent.config", "ConfigError"),
    ("edgehub.hub.serve.certs", "CertError"),
    ("edgehub.zoo.signing", "HubKeyError"),
    ("edgehub.hub.access.tokens", "TokenError"),
    ("edgehub.hub.client.remote", "RemoteError"),
)


def known_errors() -> tuple[type[Exception], ...]:
    """Errors that mean bad input, not a bug: printed as one line, exit code 1.

    Modules whose extra is not installed cannot have raised theirs, so they are skipped.
    """
    import importlib

    found = []
    for module, name in _ERROR_CLASSES:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except ImportError:
            continue
    return tuple(found)


def fail(message: str) -> None:
    """Print one error line (no markup interpretation of the message) and exit 1."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(1)


def one_line_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] == "edgehub":
                raise
            fail(f"this command needs the 'hub' extra ({exc.name} is not installed): pip install 'edgehub[hub]'")
        except known_errors() as exc:
            fail(str(exc))

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
