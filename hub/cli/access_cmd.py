"""`edgehub hub token ...` (API tokens with roles) and `edgehub hub audit` (who did what, when).
Run on the hub machine: they open the hub's database directly."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from edgehub.hub.cli.common import console, home_option, hub_options, json_option, one_line_errors, open_hub, print_json


def _engine(home):
    from edgehub.hub.context import HubContext

    return HubContext.open(home)


@click.group()
def token() -> None:
    """API tokens: roles viewer < publisher < operator < admin (each includes the ones before)."""


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "publisher", "operator", "admin"]), required=True,
              help="viewer: read; publisher: also publish; operator: also rollouts, aliases, tags; admin: everything.")
@click.option("--expires", help="Lifetime, e.g. 90d, 12h, 30m (default: until revoked).")
@home_option
@json_option
@one_line_errors
def create(name, role, expires, home, as_json):
    """Make a token for NAME and print it once (only its hash is kept)."""
    from edgehub.hub.access.audit import AuditLog, local_actor
    from edgehub.hub.access.tokens import TokenStore, parse_duration

    with _engine(home) as hub:
        secret, info = TokenStore(hub.engine).create(name, role, parse_duration(expires) if expires else None)
        AuditLog(hub.engine).record(local_actor(), "token.create", f"token:{info.id}", detail={"name": name,
                                                                                              "role": role})
    if as_json:
        print_json({"token": secret, **info.as_json()})
        return
    console.print(f"token for [bold]{name}[/] ({role}), shown this once:\n{secret}\n"
                  f"Use it: export EDGEHUB_HUB=<hub API URL> EDGEHUB_TOKEN={secret[:10]}...", highlight=False)


@token.command("list")
@home_option
@json_option
@one_line_errors
def list_(home, as_json):
    """Every token (never their secrets)."""
    from edgehub.hub.access.tokens import TokenStore

    with _engine(home) as hub:
        tokens = [t.as_json() for t in TokenStore(hub.engine).list()]
    if as_json:
        print_json({"tokens": tokens})
        return
    table = Table(title="API tokens")
    for column in ("id", "name", "role", "created", "expires", "last used", "revoked"):
        table.add_column(column)
    for t in tokens:
        table.add_row(t["id"], t["name"], t["role"], t["created_at"][:19], (t["expires_at"] or "-")[:19],
                      (t["last_used_at"] or "-")[:19], (t["revoked_at"] or "")[:19])
    console.print(table)


@token.command("revoke")
@click.argument("name_or_id")
@home_option
@json_option
@one_line_errors
def revoke(name_or_id, home, as_json):
    """Revoke the tokens of NAME (or the token with this id): they stop working at once."""
    from edgehub.hub.access.audit import AuditLog, local_actor
    from edgehub.hub.access.tokens import TokenStore

    with _engine(home) as hub:
        revoked = TokenStore(hub.engine).revoke(name_or_id)
        for t in revoked:
            AuditLog(hub.engine).record(local_actor(), "token.revoke", f"token:{t.id}", detail={"name": t.name})
    if as_json:
        print_json({"revoked": [t.as_json() for t in revoked]})
    else:
        console.print(f"revoked {len(revoked)} token(s) of {name_or_id}")


@click.command("audit")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--actor", help="Only this actor (token:NAME or local:USER).")
@hub_options
@json_option
@one_line_errors
def audit(limit, actor, home, hub_url, hub_token, hub_ca, as_json):
    """The audit log, newest first: who did what, when, and whether it worked (remote: operator or above)."""
    with open_hub(home, hub_url, hub_token, hub_ca) as hub:
        data = hub.audit(limit=limit, actor=actor)
    if as_json:
        print_json(data)
        return
    table = Table(title=f"audit log ({len(data['entries'])} of {data['total']})")
    for column in ("at", "who", "action", "target", "result"):
        table.add_column(column)
    for e in data["entries"]:
        table.add_row(e["at"][:19], e["actor"], e["action"], e["target"],
                      "[green]ok[/]" if e["ok"] else f"[red]{escape(e['detail'].get('error', 'refused'))}[/]")
    console.print(table)
