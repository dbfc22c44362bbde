"""`edgehub report MODEL`: an HTML page with PNG charts of what the fleet measured."""

from __future__ import annotations

from pathlib import Path

import click

from edgehub.hub.cli.common import (
    console,
    home_option,
    json_option,
    one_line_errors,
    print_json,
)


@click.command("report")
@click.argument("model")
@click.option("--version", type=int, help="Model version (default: the latest).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for index.html and the charts (default ./report-MODEL).")
@home_option
@json_option
@one_line_errors
def report(model, version, out, home, as_json):
    """Per profile: latency vs accuracy of every variant (Pareto front, selected variant), size
    per variant, rollout progress over time."""
    from edgehub.hub.context import HubContext
    from edgehub.hub.report.build import write_report

    with HubContext.open(home) as hub:
        page = write_report(hub.fleet, hub.registry, model, out or Path(f"report-{model}"), version)
    charts = sorted(p.name for p in page.parent.glob("*.png"))
    if as_json:
        print_json({"page": str(page.resolve()), "charts": charts})
    else:
        console.print(f"report written: {page} ({len(charts)} charts)")
