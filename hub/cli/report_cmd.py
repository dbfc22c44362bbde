"""`edgehub report MODEL`: an HTML page with PNG charts of what the fleet measured."""

from __future__ import annotations

from pathlib import Path

import click

from edgehub.hub.cli.common import console, hub_options, json_option, one_line_errors, open_hub, print_json


@click.command("report")
@click.argument("model")
@click.option("--version", type=int, help="Model version (default: the latest).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for index.html and the charts (default ./report-MODEL).")
@hub_options
@json_option
@one_line_errors
def report(model, version, out, home, hub_url, hub_token, hub_ca, as_json):
    """Per profile: latency vs accuracy of every variant (Pareto front, selected variant), size
    per variant, rollout progress over time. With --hub, the data comes from the remote hub and
    the page is written here."""
    from edgehub.hub.report.build import ReportData, write_report_of

    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = ReportData.model_validate(hub.report(model, version))
    page = write_report_of(data, out or Path(f"report-{model}"))
    charts = sorted(p.name for p in page.parent.glob("*.png"))
    if as_json:
        print_json({"page": str(page.resolve()), "charts": charts})
    else:
        console.print(f"report written: {page} ({len(charts)} charts)")
