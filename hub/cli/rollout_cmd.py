"""`edgehub rollout`: staged rollouts (canary, then the rest), per-stage approval, and MLflow-style
aliases; locally, or on a remote hub with --hub."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from edgehub.hub.cli.common import console, hub_options, json_option, one_line_errors, open_hub, print_json
from edgehub.hub.fleet.records import ACTIVE_ROLLOUT


@click.group()
def rollout() -> None:
    """Staged rollouts with automatic rollback; aliases per profile or group."""


@rollout.command("start")
@click.argument("model")
@click.option("--group", required=True, help="Devices to roll out to: a tag, or profile:NAME.")
@click.option("--canary", default="5%", show_default=True, help="First stage: a share (5%) or a device count (20).")
@click.option("--stages", help="More stages after the canary, cumulative, comma-separated (e.g. 25%,50%).")
@click.option("--success-threshold", default="95%", show_default=True,
              help="Share of a stage's devices that must activate and pass the health check to go on.")
@click.option("--error-threshold", default="10%", show_default=True,
              help="Failed targeted devices past which the stage fails: a share (10%) or a device count (3).")
@click.option("--soak", type=float, default=0.0, show_default=True, help="Seconds each stage must run before the next.")
@click.option("--approve", "on_success", flag_value="approve", default="continue",
              help="After each successful stage, wait for `edgehub rollout approve` (default: go on).")
@click.option("--on-error", type=click.Choice(["rollback", "pause"]), default="rollback", show_default=True,
              help="When a stage fails: roll back at once, or pause for the operator (resume or abort).")
@click.option("--max-error-rate", help="Field gate: the error rate of real requests a stage may show (e.g. 2%).")
@click.option("--max-p99-ratio", type=click.FloatRange(min=0, min_open=True),
              help="Field gate: real-request p99 at most this many times the previous variant's (e.g. 1.5).")
@click.option("--max-output-shift", type=click.FloatRange(min=0),
              help="Field gate: output histograms' PSI against the previous variant's (e.g. 0.2).")
@click.option("--min-requests", type=click.IntRange(min=1), default=100, show_default=True,
              help="Field gate: real requests needed before a stage is judged on them.")
@hub_options
@json_option
@one_line_errors
def start(model, group, canary, stages, success_threshold, error_threshold, soak, on_success, on_error, max_error_rate,
          max_p99_ratio, max_output_shift, min_requests, home, hub_url, hub_token, hub_ca, as_json):
    """Roll MODEL[:VERSION] (default: latest) out to a group: the canary first, then the rest."""
    from edgehub.hub.client.models import RolloutRequest

    request = RolloutRequest(model=model, group=group, canary=canary,
                             stages=[s for s in (stages or "").split(",") if s.strip()],
                             success_threshold=success_threshold, error_threshold=error_threshold, soak_s=soak,
                             on_success=on_success, on_error=on_error, max_error_rate=max_error_rate,
                             max_p99_ratio=max_p99_ratio, max_output_shift=max_output_shift, min_requests=min_requests)
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        started = hub.rollout_start(request)
        name, version = (hub.rollout_status(started["id"])[k] for k in ("model", "version"))
    if as_json:
        print_json(started)
        return
    stages_text = ", ".join(f"stage {int(k) + 1}: {n}" for k, n in sorted(started["per_stage"].items(),
                                                                          key=lambda kv: int(kv[0])))
    console.print(f"rollout [bold]#{started['id']}[/]: {escape(name)} v{version} on {escape(group)}, "
                  f"{started['members']} devices ({stages_text}); {started['not_applicable']} without variants for "
                  f"their profile are left out.\nWatch it: edgehub rollout status {started['id']}")


def _status_table(data: dict) -> Table:
    errors = f"{data['error_threshold']:.0%}" + (f" or {data['error_count']} devices" if data.get("error_count")
                                                 is not None else "")
    t = Table(title=escape(f"rollout #{data['id']}: {data['model']} v{data['version']} on {data['group']}: ")
              + f"[bold]{data['status']}[/] (stage {data['stage'] + 1} of {data['stages']}; success >= "
                f"{data['success_threshold']:.0%}, then {data.get('on_success', 'continue')}; failed > {errors}: "
                f"{data.get('on_error', 'rollback')})")
    for column in ("stage", "size", "devices", "activated", "failed", "pending", "targeted"):
        t.add_column(column, justify="right")
    for stage in range(data["stages"]):
        c = data["counts"].get(str(stage), {"total": 0, "activated": 0, "failed": 0})
        pending = c["total"] - c["activated"] - c["failed"]
        t.add_row(str(stage + 1), data["stage_sizes"][stage], str(c["total"]), str(c["activated"]), str(c["failed"]),
                  str(pending), "yes" if stage <= data["stage"] and data["status"] in ACTIVE_ROLLOUT else "")
    t.caption = escape(data["reason"])
    return t


@rollout.command("status")
@click.argument("rollout_id", type=int, required=False)
@hub_options
@json_option
@one_line_errors
def status(rollout_id, home, hub_url, hub_token, hub_ca, as_json):
    """A rollout's stage, per-stage counts and history (default: the newest rollout)."""
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = hub.rollout_status(rollout_id)
    if as_json:
        print_json(data)
        return
    console.print(_status_table(data))
    for h in data["history"]:
        console.print(f"  {h['at'][:19]}  {h['status']:<11} stage {h['stage'] + 1}: {escape(h['reason'])}")


@rollout.command("list")
@hub_options
@json_option
@one_line_errors
def list_(home, hub_url, hub_token, hub_ca, as_json):
    """Every rollout, newest last."""
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = hub.rollout_list()
    if as_json:
        print_json(data)
        return
    t = Table(title="rollouts")
    for column in ("id", "model", "group", "status", "stage", "created"):
        t.add_column(column)
    for r in data["rollouts"]:
        t.add_row(str(r["id"]), escape(f"{r['model']} v{r['version']}"), escape(r["group"]), r["status"],
                  str(r["stage"] + 1), r["created_at"][:19])
    console.print(t)


def _operate(action: str, rollout_id, home, hub_url, hub_token, hub_ca, as_json) -> None:
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = hub.rollout_operate(action, rollout_id)
    if as_json:
        print_json(data)
    else:
        console.print(f"rollout #{data['id']}: {data['status']} ({escape(data['reason'])})")


def _action(name: str, doc: str):
    @rollout.command(name, help=doc)
    @click.argument("rollout_id", type=int, required=False)
    @hub_options
    @json_option
    @one_line_errors
    def command(rollout_id, home, hub_url, hub_token, hub_ca, as_json):
        _operate(name, rollout_id, home, hub_url, hub_token, hub_ca, as_json)

    return command


pause = _action("pause", "Stop advancing (a failure past the error threshold still rolls back, unless --on-error "
                         "pause).")
resume = _action("resume", "Advance again.")
approve = _action("approve", "Start the next stage of a rollout waiting for approval (`rollout start --approve`).")
abort = _action("abort", "Stop and roll back: the targeted devices go back to the group's production version.")


@rollout.group("alias")
def alias() -> None:
    """Aliases (production, canary, ...) per profile or group, MLflow-style."""


@alias.command("set")
@click.argument("name")
@click.argument("model")
@click.option("--group", help="A tag.")
@click.option("--profile", help="A profile.")
@hub_options
@one_line_errors
def alias_set(name, model, group, profile, home, hub_url, hub_token, hub_ca):
    """Point alias NAME of a group or profile at MODEL[:VERSION]; `production` is what it runs."""
    from edgehub.hub.client.models import AliasRequest

    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        record = hub.alias_set(name, AliasRequest(model=model, group=group, profile=profile))
    console.print(escape(f"{record['scope']} {record['name']} -> {record['model']} v{record['version']}"))


@alias.command("delete")
@click.argument("name")
@click.option("--group", help="A tag.")
@click.option("--profile", help="A profile.")
@click.option("--model", help="Only this model's alias (a scope has one per model); default: every model's.")
@hub_options
@one_line_errors
def alias_delete(name, group, profile, model, home, hub_url, hub_token, hub_ca):
    """Remove alias NAME of a group or profile. Removing `production` of a model takes that model
    off the scope's devices (their other models keep running)."""
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = hub.alias_delete(name, group, profile, model)
    console.print(escape(f"removed {data['scope']} {name}" + (f" of {model}" if model else "")))


@alias.command("list")
@hub_options
@json_option
@one_line_errors
def alias_list(home, hub_url, hub_token, hub_ca, as_json):
    """Every alias."""
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = hub.alias_list()
    if as_json:
        print_json(data)
        return
    t = Table(title="aliases")
    for column in ("scope", "alias", "model", "updated"):
        t.add_column(column)
    for a in data["aliases"]:
        t.add_row(escape(a["scope"]), escape(a["name"]), escape(f"{a['model']} v{a['version']}"), a["updated_at"][:19])
    console.print(t)
