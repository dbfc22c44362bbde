"""`edgehub jobs`: build jobs (remote publishes) on a hub: list, show (or follow), cancel."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from edgehub.hub.cli.common import console, hub_options, json_option, one_line_errors, open_hub, print_json


@click.group()
def jobs() -> None:
    """Build jobs queued by remote publishes."""


@jobs.command("list")
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@hub_options
@json_option
@one_line_errors
def list_(state, limit, home, hub_url, hub_token, hub_ca, as_json):
    """The newest jobs first."""
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = hub.job_list(limit=limit, state=state)
    if as_json:
        print_json(data)
        return
    table = Table(title=f"jobs ({len(data['jobs'])} of {data['total']})")
    for column in ("id", "name", "state", "owner", "created", "finished", "error"):
        table.add_column(column)
    for j in data["jobs"]:
        table.add_row(str(j["id"]), escape(j["name"] or "-"), j["state"], escape(j["owner"]), j["created_at"][:19],
                      (j["finished_at"] or "-")[:19], escape(j["error"] or ""))
    console.print(table)


@jobs.command("show")
@click.argument("job_id", type=int)
@hub_options
@json_option
@one_line_errors
def show(job_id, home, hub_url, hub_token, hub_ca, as_json):
    """One job: its request, state and result."""
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = hub.job_show(job_id)
    if as_json:
        print_json(data)
        return
    console.print(f"job #{data['id']} ({data['kind']} {escape(data['name'] or '')} by {escape(data['owner'])}): "
                  f"[bold]{data['state']}[/], attempts {data['attempts']}" +
                  (f"\n[red]{escape(data['error'])}[/]" if data["error"] else ""))
    result = data.get("result") or {}
    if result:
        console.print(f"{escape(result['model'])} v{result['version']}: {len(result['variants'])} variant(s)")


@jobs.command("cancel")
@click.argument("job_id", type=int)
@hub_options
@json_option
@one_line_errors
def cancel(job_id, home, hub_url, hub_token, hub_ca, as_json):
    """Cancel a queued job, or stop a running build."""
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = hub.job_cancel(job_id)
    if as_json:
        print_json(data)
    else:
        console.print(f"job #{data['id']}: {data['state']}" + (" (stopping)" if data["cancel_requested"] else ""))
