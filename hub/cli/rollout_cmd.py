"""`edgehub rollout`: staged rollouts (canary, then the rest) and MLflow-style aliases."""

from __future__ import annotations

import click
from rich.table import Table

from edgehub.hub.cli.common import (
    console,
    home_option,
    json_option,
    one_line_errors,
    print_json,
)
from edgehub.hub.fleet.records import ACTIVE_ROLLOUT


@click.group()
def rollout() -> None:
    """Staged rollouts with automatic rollback; aliases per profile or group."""


def _hub(home):
    """The hub home of a rollout command (one engine for the fleet store and the registry)."""
    from edgehub.hub.context import HubContext

    return HubContext.open(home)


def _model_version(text: str, registry) -> tuple[str, int]:
    from edgehub.hub.rollout.machine import RolloutError

    name, _, version = text.partition(":")
    if version:
        if not version.lstrip("v").isdigit():
            raise RolloutError(f"bad version in {text!r}: use MODEL or MODEL:VERSION (e.g. fmnist:2)")
        return name, int(version.lstrip("v"))
    latest = registry.latest_version(name)
    if latest is None:
        raise RolloutError(f"no model {name!r} in the registry; see `edgehub zoo list`")
    return name, latest.version


@rollout.command("start")
@click.argument("model")
@click.option("--group", required=True, help="Devices to roll out to: a tag, or profile:NAME.")
@click.option("--canary", default="5%", show_default=True, help="First stage: a share (5%) or a device count (20).")
@click.option("--stages", help="More stages after the canary, cumulative, comma-separated (e.g. 25%,50%).")
@click.option("--success-threshold", default="95%", show_default=True,
              help="Share of a stage's devices that must activate and pass the health check to go on.")
@click.option("--error-threshold", default="10%", show_default=True,
              help="Share of targeted devices failing past which the rollout halts and rolls back.")
@click.option("--soak", type=float, default=0.0, show_default=True, help="Seconds each stage must run before the next.")
@home_option
@json_option
@one_line_errors
def start(model, group, canary, stages, success_threshold, error_threshold, soak, home, as_json):
    """Roll MODEL[:VERSION] (default: latest) out to a group: the canary first, then the rest."""
    from edgehub.hub.rollout.machine import RolloutSpec, parse_fraction, parse_stage_size
    from edgehub.hub.rollout.ops import start_rollout

    sizes = [parse_stage_size(canary), *(parse_stage_size(s) for s in (stages or "").split(",") if s.strip())]
    with _hub(home) as s:
        name, version = _model_version(model, s.registry)
        spec = RolloutSpec(model=name, version=version, selector=group, stages=sizes,
                           success_threshold=parse_fraction(success_threshold, "success threshold"),
                           error_threshold=parse_fraction(error_threshold, "error threshold"), min_soak_s=soak)
        started = start_rollout(s.fleet, s.registry, spec)
    if as_json:
        print_json(started.model_dump())
        return
    stages_text = ", ".join(f"stage {k + 1}: {n}" for k, n in sorted(started.per_stage.items()))
    console.print(f"rollout [bold]#{started.id}[/]: {name} v{version} on {group}, {started.members} devices "
                  f"({stages_text}); {started.not_applicable} without variants for their profile are left out.\n"
                  f"Watch it: edgehub rollout status {started.id}")


def _status_data(fleet, rollout_id: int | None) -> dict:
    from edgehub.hub.rollout.machine import RolloutState, targeted
    from edgehub.hub.rollout.ops import counts_of, find

    record = find(fleet, rollout_id)
    state = RolloutState.model_validate(record.state)
    counts = counts_of(fleet, record.id)
    seen = targeted(state, counts)
    return {"id": record.id, "model": record.model, "version": record.version, "group": record.selector,
            "status": state.status, "stage": state.stage, "stages": state.spec.stage_count,
            "stage_sizes": [str(x) for x in state.spec.stages] + ["100%"], "reason": state.reason,
            "success_threshold": state.spec.success_threshold, "error_threshold": state.spec.error_threshold,
            "counts": {str(k): v.model_dump() for k, v in sorted(counts.items())}, "targeted": seen.model_dump(),
            "history": [t.model_dump(mode="json") for t in state.history]}


def _status_table(data: dict) -> Table:
    t = Table(title=f"rollout #{data['id']}: {data['model']} v{data['version']} on {data['group']}: "
                    f"[bold]{data['status']}[/] (stage {data['stage'] + 1} of {data['stages']}; success >= "
                    f"{data['success_threshold']:.0%}, rollback > {data['error_threshold']:.0%} failed)")
    for column in ("stage", "size", "devices", "activated", "failed", "pending", "targeted"):
        t.add_column(column, justify="right")
    for stage in range(data["stages"]):
        c = data["counts"].get(str(stage), {"total": 0, "activated": 0, "failed": 0})
        pending = c["total"] - c["activated"] - c["failed"]
        t.add_row(str(stage + 1), data["stage_sizes"][stage], str(c["total"]), str(c["activated"]), str(c["failed"]),
                  str(pending), "yes" if stage <= data["stage"] and data["status"] in ACTIVE_ROLLOUT else "")
    t.caption = data["reason"]
    return t


@rollout.command("status")
@click.argument("rollout_id", type=int, required=False)
@home_option
@json_option
@one_line_errors
def status(rollout_id, home, as_json):
    """A rollout's stage, per-stage counts and history (default: the newest rollout)."""
    with _hub(home) as s:
        data = _status_data(s.fleet, rollout_id)
    if as_json:
        print_json(data)
        return
    console.print(_status_table(data))
    for h in data["history"]:
        console.print(f"  {h['at'][:19]}  {h['status']:<11} stage {h['stage'] + 1}: {h['reason']}")


@rollout.command("list")
@home_option
@json_option
@one_line_errors
def list_(home, as_json):
    """Every rollout, newest last."""
    with _hub(home) as s:
        rows = [{"id": r.id, "model": r.model, "version": r.version, "group": r.selector, "status": r.status,
                 "stage": r.stage, "created_at": r.created_at.isoformat()} for r in s.fleet.rollouts()]
    if as_json:
        print_json({"rollouts": rows})
        return
    t = Table(title="rollouts")
    for column in ("id", "model", "group", "status", "stage", "created"):
        t.add_column(column)
    for r in rows:
        t.add_row(str(r["id"]), f"{r['model']} v{r['version']}", r["group"], r["status"], str(r["stage"] + 1),
                  r["created_at"][:19])
    console.print(t)


def _operate(action: str, rollout_id, home, as_json) -> None:
    from edgehub.hub.rollout.ops import find, operate

    with _hub(home) as s:
        record = find(s.fleet, rollout_id)
        state = operate(s.fleet, record.id, action)
    if as_json:
        print_json({"id": record.id, "status": state.status, "stage": state.stage, "reason": state.reason})
    else:
        console.print(f"rollout #{record.id}: {state.status} ({state.reason})")


@rollout.command("pause")
@click.argument("rollout_id", type=int, required=False)
@home_option
@json_option
@one_line_errors
def pause(rollout_id, home, as_json):
    """Stop advancing (a failure past the error threshold still rolls back)."""
    _operate("pause", rollout_id, home, as_json)


@rollout.command("resume")
@click.argument("rollout_id", type=int, required=False)
@home_option
@json_option
@one_line_errors
def resume(rollout_id, home, as_json):
    """Advance again."""
    _operate("resume", rollout_id, home, as_json)


@rollout.command("abort")
@click.argument("rollout_id", type=int, required=False)
@home_option
@json_option
@one_line_errors
def abort(rollout_id, home, as_json):
    """Stop and roll back: the targeted devices go back to the group's production version."""
    _operate("abort", rollout_id, home, as_json)


@rollout.group("alias")
def alias() -> None:
    """Aliases (production, canary, ...) per profile or group, MLflow-style."""


def _scope(group: str | None, profile: str | None) -> str:
    from edgehub.hub.fleet.groups import parse_selector
    from edgehub.hub.rollout.machine import RolloutError

    if bool(group) == bool(profile):
        raise RolloutError("give exactly one of --group TAG or --profile NAME")
    return parse_selector(f"profile:{profile}" if profile else group).scope


@alias.command("set")
@click.argument("name")
@click.argument("model")
@click.option("--group", help="A tag.")
@click.option("--profile", help="A profile.")
@home_option
@one_line_errors
def alias_set(name, model, group, profile, home):
    """Point alias NAME of a group or profile at MODEL[:VERSION]; `production` is what it runs."""
    from edgehub.hub.fleet.groups import validate_tag

    validate_tag(name)
    with _hub(home) as s:
        model_name, version = _model_version(model, s.registry)
        record = s.fleet.set_alias(_scope(group, profile), name, model_name, version)
    console.print(f"{record.scope} {record.name} -> {record.model} v{record.version}")


@alias.command("delete")
@click.argument("name")
@click.option("--group", help="A tag.")
@click.option("--profile", help="A profile.")
@home_option
@one_line_errors
def alias_delete(name, group, profile, home):
    """Remove alias NAME of a group or profile."""
    from edgehub.hub.rollout.machine import RolloutError

    scope = _scope(group, profile)
    with _hub(home) as s:
        if not s.fleet.delete_alias(scope, name):
            raise RolloutError(f"no alias {name!r} on {scope}")
    console.print(f"removed {scope} {name}")


@alias.command("list")
@home_option
@json_option
@one_line_errors
def alias_list(home, as_json):
    """Every alias."""
    with _hub(home) as s:
        rows = [a.model_dump(mode="json") for a in s.fleet.aliases()]
    if as_json:
        print_json({"aliases": rows})
        return
    t = Table(title="aliases")
    for column in ("scope", "alias", "model", "updated"):
        t.add_column(column)
    for a in rows:
        t.add_row(a["scope"], a["name"], f"{a['model']} v{a['version']}", a["updated_at"][:19])
    console.print(t)
