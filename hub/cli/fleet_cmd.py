"""`edgehub fleet`: enrol devices, see their status, and why they run what they run."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from edgehub.hub.cli.common import console, home_option, json_option, one_line_errors, percent, print_json


@click.group()
def fleet() -> None:
    """Devices: enrol, revoke, status, explain."""


def _paths(home):
    from edgehub.zoo.home import HubPaths

    return HubPaths.from_home(home)


@fleet.command("enroll")
@click.argument("device_id")
@click.option("--profile", required=True, help="Device profile (see `edgehub profiles list`).")
@click.option("--out", type=click.Path(path_type=Path), help="Where to write the agent config (default agent-<id>.toml).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Agent data directory (default ./edgehub-agent-<id>).")
@click.option("--serve-port", type=int, default=8765, show_default=True, help="Agent's local /predict port (0: any).")
@click.option("--tag", "tags", multiple=True, help="Tag for grouping (repeatable).")
@click.option("--replace", is_flag=True, help="Issue new credentials to an enrolled device.")
@home_option
@json_option
@one_line_errors
def enroll(device_id, profile, out, data_dir, serve_port, tags, replace, home, as_json):
    """Issue credentials for DEVICE_ID and write its agent config (keep it secret: it holds the password)."""
    import os

    from edgehub.agent.config import dump_config
    from edgehub.hub.enrollment import enroll_device

    out = out or Path(f"agent-{device_id}.toml")
    data_dir = (data_dir or Path(f"edgehub-agent-{device_id}")).resolve()
    config = enroll_device(_paths(home), device_id, profile, data_dir=data_dir, serve_port=serve_port,
                           tags=list(tags), replace=replace)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(dump_config(config))
    if as_json:
        print_json({"device_id": device_id, "profile": profile, "config": str(out.resolve()),
                    "broker_url": config.broker_url})
    else:
        console.print(f"enrolled [bold]{device_id}[/] ({profile}); agent config written to {out} (mode 0600).\n"
                      f"On the device: edgehub agent run --config {out.name}")


@fleet.command("revoke")
@click.argument("device_id")
@home_option
@one_line_errors
def revoke(device_id, home):
    """Remove DEVICE_ID's credentials (the broker reloads; other devices stay connected)."""
    from edgehub.hub.enrollment import revoke_device

    revoke_device(_paths(home), device_id)
    console.print(f"revoked {device_id}")


def status_rows(paths) -> list[dict]:
    from edgehub.zoo.fleet import FleetStore
    from edgehub.zoo.registry import Registry

    fleet_store, registry = FleetStore(paths.db_url), Registry(paths.db_url)
    try:
        rows = []
        for d in fleet_store.devices():
            variant = registry.get_variant(d.active_variant) if d.active_variant else None
            report = fleet_store.reports(d.id, [d.active_variant]).get(d.active_variant) if d.active_variant else None
            selection = fleet_store.selection(d.id)
            rows.append({
                "device": d.id, "profile": d.profile, "online": d.online,
                "active_variant": d.active_variant,
                "model": f"{variant.model} v{variant.version}" if variant else None,
                "variant": variant.label if variant else None,
                "selected_variant": selection.winner if selection else None,
                "p50_ms": report.latency.p50_ms if report and report.latency else None,
                "accuracy": variant.metrics.get("accuracy") if variant else None,
                "agreement": variant.metrics.get("agreement") if variant else None,
                "runtimes": d.state.runtimes if d.state else {},
                "last_seen": d.last_seen.isoformat() if d.last_seen else None,
            })
        return rows
    finally:
        fleet_store.close()
        registry.close()


def status_table(rows: list[dict]) -> Table:
    table = Table(title="fleet")
    for column in ("device", "profile", "online", "model", "variant", "p50 ms", "accuracy", "last seen"):
        table.add_column(column, no_wrap=column in ("device", "variant"))
    for r in rows:
        table.add_row(r["device"], r["profile"], "[green]yes[/]" if r["online"] else "[red]no[/]",
                      r["model"] or "-", r["variant"] or "-",
                      f"{r['p50_ms']:.3f}" if r["p50_ms"] is not None else "-",
                      percent(r["accuracy"]), (r["last_seen"] or "-")[11:19] or "-")
    return table


@fleet.command("status")
@home_option
@json_option
@one_line_errors
def status(home, as_json):
    """Every device: online, profile, active variant, measured p50, accuracy, last seen."""
    rows = status_rows(_paths(home))
    if as_json:
        print_json({"devices": rows})
    elif not rows:
        console.print("No devices yet: `edgehub fleet enroll DEVICE --profile PROFILE`.")
    else:
        console.print(status_table(rows))


@fleet.command("explain")
@click.argument("device_id")
@home_option
@json_option
@one_line_errors
def explain(device_id, home, as_json):
    """Why DEVICE_ID runs its variant: the verdict on every candidate."""
    from edgehub.zoo.fleet import FleetError, FleetStore

    store = FleetStore(_paths(home).db_url)
    try:
        if store.get_device(device_id) is None:
            raise FleetError(f"no device {device_id!r}; see `edgehub fleet status`")
        selection = store.selection(device_id)
    finally:
        store.close()
    if selection is None:
        raise FleetError(f"no selection for {device_id} yet: it has not reported every candidate")
    if as_json:
        print_json(selection.model_dump(mode="json"))
        return
    table = Table(title=f"{device_id}: {selection.model} v{selection.version} -> {selection.winner or 'nothing eligible'}")
    for column in ("variant", "p50 ms", "p99 ms", "size", "verdict"):
        table.add_column(column)
    for v in selection.explanation["verdicts"]:
        mark = "[green]" if v["selected"] else ("" if v["eligible"] else "[red]")
        table.add_row(v["variant_id"], f"{v['p50_ms']:.3f}" if v["p50_ms"] is not None else "-",
                      f"{v['p99_ms']:.3f}" if v["p99_ms"] is not None else "-",
                      str(v["size_bytes"] or "-"), f"{mark}{v['reason']}")
    console.print(table)
