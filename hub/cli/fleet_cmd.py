"""`edgehub fleet`: enrol devices, see their status, and why they run what they run."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from edgehub.hub.cli.common import (
    console,
    err_console,
    home_option,
    hub_options,
    json_option,
    one_line_errors,
    open_hub,
    print_json,
)
from edgehub.hub.cli.fleet_views import status_table  # the demo prints its fleet with it too


@click.group()
def fleet() -> None:
    """Devices: enrol, revoke, tag, status, explain, simulate."""


def _paths(home):
    from edgehub.hub.home import HubPaths

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
    from edgehub.hub.serve.enrollment import enroll_device

    out = out or Path(f"agent-{device_id}.toml")
    data_dir = (data_dir or Path(f"edgehub-agent-{device_id}")).resolve()
    config = enroll_device(_paths(home), device_id, profile, data_dir=data_dir, serve_port=serve_port,
                           tags=list(tags), replace=replace)
    ca_copy = None
    if config.ca_file is not None:  # TLS: the hub's CA travels with the config, next to it
        ca_copy = out.with_name(f"{out.stem}-ca.pem")
        ca_copy.write_bytes(config.ca_file.read_bytes())
        config = config.model_copy(update={"ca_file": Path(ca_copy.name)})  # relative to the config file
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(dump_config(config))
    if as_json:
        print_json({"device_id": device_id, "profile": profile, "config": str(out.resolve()),
                    "broker_url": config.broker_url, "ca_file": str(ca_copy.resolve()) if ca_copy else None})
    else:
        extra = f" and {ca_copy.name}" if ca_copy else ""
        console.print(f"enrolled [bold]{device_id}[/] ({profile}); agent config written to {out} (mode 0600){extra}.\n"
                      f"On the device: edgehub agent run --config {out.name}")


@fleet.command("revoke")
@click.argument("device_id")
@home_option
@one_line_errors
def revoke(device_id, home):
    """Remove DEVICE_ID's credentials (it is disconnected at once; other devices stay connected)."""
    from edgehub.hub.serve.enrollment import revoke_device

    revoke_device(_paths(home), device_id)
    console.print(f"revoked {device_id}")


def status_rows(paths, *, limit: int | None = None) -> list[dict]:
    """The local fleet's device rows (one joined, indexed query): what the demo prints."""
    from edgehub.hub.client.local import LocalHub

    with LocalHub.open(paths.root) as hub:
        return hub.fleet_status(limit=limit)["devices"]


def _render(view: dict):
    from rich.console import Group

    from edgehub.hub.cli.fleet_views import summary_table

    parts = [summary_table(view["summary"])]
    if view["devices"]:
        parts.append(status_table(view["devices"], total=view["summary"]["devices"]))
    return Group(*parts)


@fleet.command("status")
@click.option("--profile", help="Only devices of this profile.")
@click.option("--group", help="Only devices with this tag (see `edgehub fleet tag`).")
@click.option("--online/--offline", "online", default=None, help="Only online (or offline) devices.")
@click.option("--rollout", type=int, help="Only the members of this rollout.")
@click.option("--simulated/--real", "simulated", default=None, help="Only simulated (or real) devices.")
@click.option("--limit", type=int, help="Device rows to show (tables: default 50; --json: all). "
              "The summary always counts every matching device.")
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until Ctrl-C.")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between --watch redraws.")
@click.option("--iterations", type=int, help="With --watch: stop after this many redraws.")
@hub_options
@json_option
@one_line_errors
def status(profile, group, online, rollout, simulated, limit, watch, interval, iterations, home, hub_url, hub_token,
           hub_ca, as_json):
    """Every device: online, profile, active variant, measured p50, accuracy, rollout, last seen;
    and summary counts (per profile, per rollout stage)."""
    from edgehub.hub.cli.fleet_views import TABLE_LIMIT
    from edgehub.hub.client.models import StatusQuery

    query = StatusQuery(profile=profile, group=group, online=online, rollout=rollout, simulated=simulated)
    table_limit = TABLE_LIMIT if limit is None else limit
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        if as_json and not watch:
            print_json(hub.fleet_status(query, limit=limit))
            return
        if not watch:
            _show_status(hub, query, table_limit)
            return
        _watch_status(hub, query, table_limit, as_json, interval, iterations)


def _show_status(hub, query, table_limit: int) -> None:
    view = hub.fleet_status(query, limit=table_limit)
    if not view["summary"]["devices"] and not any(v is not None for v in query.model_dump().values()):
        console.print("No devices yet: `edgehub fleet enroll DEVICE --profile PROFILE`.")
        return
    console.print(_render(view))


def _watch_status(hub, query, table_limit: int, as_json: bool, interval: float, iterations: int | None) -> None:
    import time

    from rich.live import Live

    shown = 0
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        try:
            while iterations is None or shown < iterations:
                started = time.perf_counter()
                view = hub.fleet_status(query, limit=table_limit)
                if as_json:
                    print_json({**view, "query_s": round(time.perf_counter() - started, 4)})
                else:
                    live.update(_render(view))
                shown += 1
                if iterations is not None and shown >= iterations:
                    break
                time.sleep(interval)
        except KeyboardInterrupt:
            pass


@fleet.command("telemetry")
@click.argument("device_id", required=False)
@click.option("--model", help="Every device running this model's variants, instead of one device.")
@click.option("--since", default="1h", show_default=True, help="How far back: 30m, 12h, 7d.")
@hub_options
@json_option
@one_line_errors
def telemetry(device_id, model, since, home, hub_url, hub_token, hub_ca, as_json):
    """Field telemetry from real requests: rate, errors, latency percentiles, input drift vs the eval set."""
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = hub.telemetry(device_id, model, since)
    if as_json:
        print_json(data)
        return
    what = escape(device_id or f"model {model}")
    table = Table(title=f"{what}: field telemetry, last {escape(since)} ({data['intervals_total']} intervals)")
    for column in ("variant", "devices", "requests", "req/min", "errors", "p50 ms", "p99 ms", "drift (PSI)"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for variant, f in [*data["by_variant"].items(), ("all", data["summary"])]:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(escape(variant), str(f["devices"]), str(f["requests"]), f"{f['requests_per_min']:.1f}",
                      f"{f['error_rate']:.2%}" + (f" {f['errors']}" if f["errors"] else ""), fmt(f["p50_ms"]),
                      fmt(f["p99_ms"]), fmt(f["drift"]))
    console.print(table)
    if (data["summary"]["drift"] or 0) > 0.25:
        console.print("[bold yellow]drift:[/] the served inputs no longer look like the eval set (PSI > 0.25)")


@fleet.command("tag")
@click.argument("device_ids", nargs=-1, required=True)
@click.option("--add", "add", multiple=True, help="Tag (group) to add (repeatable).")
@click.option("--remove", "remove", multiple=True, help="Tag to remove (repeatable).")
@hub_options
@json_option
@one_line_errors
def tag(device_ids, add, remove, home, hub_url, hub_token, hub_ca, as_json):
    """Put devices in groups (tags) or take them out; a device tagged into a group during a
    rollout of that group joins it (it gets the new version when the rollout reaches everyone)."""
    from edgehub.hub.client.models import TagRequest

    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = hub.tag(TagRequest(devices=list(device_ids), add=list(add), remove=list(remove)))
    if as_json:
        print_json(data)
    else:
        for r in data["devices"]:
            console.print(f"{escape(r['device'])}: {escape(', '.join(r['tags'])) or '(no tags)'}")


def _failure_rule(text: str):
    """`MATCH:benchmark=0.5,activation=1` -> a FailureRule."""
    from edgehub.hub.fleet.records import FleetError
    from edgehub.hub.sim.model import FailureRule

    match, _, rest = text.partition(":")
    values = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        try:
            values[key.strip()] = float(value)
        except ValueError:
            raise FleetError(f"bad --fail {text!r}: use MATCH:benchmark=P,activation=P") from None
    try:
        return FailureRule(match=match, **values)
    except ValueError as exc:
        raise FleetError(f"bad --fail {text!r}: {str(exc).splitlines()[0]}") from None


@fleet.command("simulate")
@click.option("--devices", "count", type=int, required=True, help="How many simulated devices.")
@click.option("--profile", default="x86-cpu", show_default=True, help="Their profile.")
@click.option("--tag", "tags", multiple=True, help="Tag (group) for all of them (repeatable).")
@click.option("--prefix", default="sim", show_default=True, help="Device ids are PREFIX-00000, ...")
@click.option("--processes", type=int, help="Processes to run them in (default: one per 2,500, at most the CPUs).")
@click.option("--duration", type=float, help="Seconds to run (default: until Ctrl-C).")
@click.option("--bench-delay", type=float, default=0.0, show_default=True, help="Simulated seconds per benchmark.")
@click.option("--fail", "fail", multiple=True, help="MATCH:benchmark=P,activation=P: variants whose id contains "
              "MATCH fail their benchmark / health check with probability P (repeatable).")
@click.option("--distribution", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file with a SyntheticDistribution (see hub/sim/model.py) instead of the default.")
@home_option
@json_option
@one_line_errors
def simulate(count, profile, tags, prefix, processes, duration, bench_delay, fail, distribution, home, as_json):
    """Run COUNT simulated devices against the running hub: real broker, real protocol, synthetic
    benchmark numbers (labelled "simulated" in every report, status and chart)."""
    import time

    from edgehub.hub.sim.model import SyntheticDistribution
    from edgehub.hub.sim.run import Simulation, enroll_simulated

    dist = SyntheticDistribution.model_validate_json(distribution.read_text()) if distribution else SyntheticDistribution()
    dist = dist.model_copy(update={"bench_delay_s": bench_delay, "failures": [*dist.failures,
                                                                              *map(_failure_rule, fail)]})
    paths = _paths(home)
    specs = enroll_simulated(paths, count, profile=profile, tags=list(tags), prefix=prefix)
    sim = Simulation(paths, specs, processes=processes, distribution=dist).start()
    out = err_console if as_json else console
    started = time.monotonic()
    stats: dict = {}
    try:
        with out.status("starting simulated devices ...") as progress:
            while duration is None or time.monotonic() - started < duration:
                time.sleep(0.5)
                stats = sim.stats()
                progress.update(f"{stats.get('connected', 0)}/{count} connected, {stats.get('reports_sent', 0)} "
                                f"reports, {stats.get('events_acked', 0)}/{stats.get('events_sent', 0)} events acked, "
                                f"{stats.get('activations', 0)} activations ({time.monotonic() - started:.0f} s)")
                if stats.get("processes_alive", 1) == 0:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        stats = sim.stop()
    stats["seconds"] = round(time.monotonic() - started, 1)
    if as_json:
        print_json({"devices": count, "profile": profile, "stats": stats})
    else:
        console.print(f"simulated {count} devices for {stats['seconds']} s: " + ", ".join(
            f"{k} {v}" for k, v in sorted(stats.items()) if k not in ("seconds",)))


@fleet.command("explain")
@click.argument("device_id")
@click.option("--model", help="The model slot to explain, on a device that runs several (default: the first).")
@hub_options
@json_option
@one_line_errors
def explain(device_id, model, home, hub_url, hub_token, hub_ca, as_json):
    """Why DEVICE_ID runs its variant: the verdict on every candidate."""
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        selection = hub.explain(device_id, model)
    if as_json:
        print_json(selection)
        return
    table = Table(title=escape(f"{device_id}: {selection['model']} v{selection['version']} -> "
                               f"{selection['winner'] or 'nothing eligible'}"))
    for column in ("variant", "p50 ms", "p99 ms", "size", "verdict"):
        table.add_column(column)
    for v in selection["explanation"]["verdicts"]:
        mark = "[green]" if v["selected"] else ("" if v["eligible"] else "[red]")
        table.add_row(v["variant_id"], f"{v['p50_ms']:.3f}" if v["p50_ms"] is not None else "-",
                      f"{v['p99_ms']:.3f}" if v["p99_ms"] is not None else "-",
                      str(v["size_bytes"] or "-"), f"{mark}{escape(v['reason'])}")
    console.print(table)
    if selection.get("emulated"):
        console.print(escape(f"timings measured under emulation ({selection['emulated']}): they say nothing "
                             "of this hardware's speed; the reference checks stand"), style="yellow")
    pairs = selection["explanation"].get("pairs")
    if pairs:  # the device measured runtime settings: every (variant, settings) pair and its verdict
        tuned = Table(title="runtime settings measured on the device")
        for column in ("variant", "settings", "p50 ms", "accelerated", "verdict"):
            tuned.add_column(column)
        for p in sorted(pairs, key=lambda p: (p["p50_ms"] is None, p["p50_ms"] or 0)):
            settings = ",".join(f"{k}={v}" for k, v in p["settings"].items() if v not in (None, 0)) or "default"
            mark = "[green]" if p["selected"] else ""
            covered = f"{p['coverage']:.0%}" if p["coverage"] is not None else "-"
            if p.get("coverage_time") is not None:
                covered += f" ({p['coverage_time']:.0%} of the time)"
            tuned.add_row(p["variant_id"], settings, f"{p['p50_ms']:.3f}" if p["p50_ms"] is not None else "-",
                          covered, f"{mark}{escape(p['reason'])}")
        console.print(tuned)
    for refused in selection["explanation"].get("not_sent", []):  # the device's runtime cannot load it
        console.print(escape(f"not sent: {refused['variant_id']}: {refused['reason']}"), style="red")
    memory = selection["explanation"].get("memory")
    if memory:  # the device's models together were over its memory limit
        console.print(escape(f"memory: {memory['reason']}"))
    others = [m for m in selection.get("models", []) if m != selection["model"]]
    if others:
        console.print(escape(f"the device also runs {', '.join(others)} (see --model)"))
