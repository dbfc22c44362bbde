"""`edgehub demo`: everything on localhost, on real data, in one command."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from edgehub.hub.cli.common import console, err_console, print_json


@click.command()
@click.option("--home", type=click.Path(file_okay=False, path_type=Path),
              help="Hub home for the demo (default: a temporary directory, removed afterwards).")
@click.option("--epochs", type=int, default=1, show_default=True, help="Training epochs on Fashion-MNIST.")
@click.option("--timeout", "timeout_s", type=float, default=300, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the hub and agents running afterwards (Ctrl-C stops) and print "
              "the web console's URL with a token to log in.")
@click.option("--json", "as_json", is_flag=True, help="Print the final fleet as JSON.")
def demo(home, epochs, timeout_s, keep, as_json):
    """Hub + managed broker + three agents on localhost: publish a CNN, benchmark, select, activate."""
    from edgehub.hub.cli.fleet_cmd import status_table
    from edgehub.hub.serve.demo import run_demo

    temporary = home is None
    home = Path(tempfile.mkdtemp(prefix="edgehub-demo-")) if temporary else home
    try:
        try:
            # With --json the story goes to stderr so stdout holds only the JSON.
            result = run_demo(home, err_console if as_json else console, epochs=epochs, timeout_s=timeout_s, keep=keep)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
        if as_json:
            print_json({"devices": result.rows, "seconds": round(result.seconds, 1)})
            return
        console.print(status_table(result.rows))
        console.print(f"done in {result.seconds:.0f} s; everything the demo started has stopped. "
                      f"`edgehub fleet explain DEVICE --home {home}` shows why each variant was chosen"
                      + (" (use --home to keep the demo's state)." if temporary else "."))
    finally:
        if temporary:
            shutil.rmtree(home, ignore_errors=True)
