"""Tables and panels for `edgehub fleet status` (the data comes from FleetStore's indexed views)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from edgehub.hub.cli.common import percent

TABLE_LIMIT = 50  # rows shown in a table by default; the summary always counts every device


def summary_table(summary: dict) -> Group:
    head = Table(title="fleet summary", show_header=True)
    for column in ("devices", "online", "settled", "simulated"):
        head.add_column(column, justify="right")
    head.add_row(str(summary["devices"]), str(summary["online"]), str(summary["settled"]),
                 str(summary["simulated"]) if summary["simulated"] else "0")
    parts = [head]
    drift = summary.get("drift") or {}
    if drift.get("devices"):
        parts.append(f"[bold yellow]drift: {drift['devices']} device(s) serve inputs unlike the eval set[/] (input "
                     f"PSI > {drift['threshold']}; `edgehub fleet telemetry DEVICE`)")
    lost = summary.get("events_missing") or {}
    if lost.get("events"):
        parts.append(f"[bold red]{lost['events']} event(s) from {lost['devices']} device(s) were sent and never "
                     "stored[/] (the 'missing' column; the broker or a device with another's rights lost them)")
    if len(summary["profiles"]) > 1:
        per = Table(title="per profile")
        for column in ("profile", "devices", "online", "settled"):
            per.add_column(column, justify="left" if column == "profile" else "right")
        for name, c in sorted(summary["profiles"].items()):
            per.add_row(name, str(c["devices"]), str(c["online"]), str(c["settled"]))
        parts.append(per)
    for r in summary["rollouts"]:
        t = Table(title=f"rollout #{r['id']} {r['model']} v{r['version']} on {r['group']}: {r['status']}, "
                        f"stage {r['stage'] + 1}")
        for column in ("stage", "devices", "activated", "failed", "pending"):
            t.add_column(column, justify="right")
        for stage, by in sorted(r["counts"].items()):
            total = sum(by.values())
            t.add_row(f"{stage + 1}{' *' if stage <= r['stage'] else ''}", str(total), str(by.get("activated", 0)),
                      str(by.get("failed", 0)), str(by.get("pending", 0)))
        parts.append(t)
    return Group(*parts)


def status_table(rows: list[dict], total: int | None = None) -> Table:
    shown = f" (first {len(rows)} of {total})" if total is not None and total > len(rows) else ""
    table = Table(title=f"devices{shown}")
    lossy = any(r.get("events", {}).get("missing") for r in rows)
    field = any(r.get("field") or any(m.get("field") for m in r.get("models") or []) for r in rows)
    columns = ("device", "profile", "online", "model", "variant", "p50 ms", "accuracy", "rollout", "last seen")
    field_columns = ("req/min", "field p99 ms", "errors", "drift") if field else ()
    for column in columns + field_columns + (("missing",) if lossy else ()):
        table.add_column(column, no_wrap=column in ("device", "variant"), justify="right" if column == "missing" else "left")
    for r in rows:
        rollout = r.get("rollout")
        label = f"#{rollout['id']} s{rollout['stage'] + 1} {rollout['status']}" if rollout else "-"
        missing = r.get("events", {}).get("missing", 0)
        device = [r["device"] + (" [dim](sim)[/]" if r.get("simulated") else ""), r["profile"],
                  "[green]yes[/]" if r["online"] else "[red]no[/]"]
        slots = r.get("models") or []
        if len(slots) < 2:  # one model: the row as it always was
            slots = [{"model": r["model"], "label": r["variant"], "p50_ms": r["p50_ms"], "accuracy": r["accuracy"],
                      "field": r.get("field"), "version": None}]
        for i, m in enumerate(slots):  # several models: one line per slot, the device named once
            p50 = f"{m['p50_ms']:.3f}" if m["p50_ms"] is not None else "-"
            if r.get("simulated") and m["p50_ms"] is not None:
                p50 += " (sim)"
            model = f"{m['model']} v{m['version']}" if m.get("version") is not None else (m["model"] or "-")
            cells = [*(device if i == 0 else ["", "", ""]), model, m["label"] or "-", p50, percent(m["accuracy"]),
                     label if i == 0 else "", ((r["last_seen"] or "-")[11:19] or "-") if i == 0 else ""]
            table.add_row(*cells, *(field_cells(m.get("field")) if field else []),
                          *([f"[red]{missing}[/]" if missing else "0"] if lossy and i == 0 else [""] if lossy else []))
    return table


def field_cells(f: dict | None) -> list[str]:
    """Requests per minute, p99 of real requests, error rate and input drift of the newest interval."""
    if not f:
        return ["-", "-", "-", "-"]
    drift = f["drift"]
    return [f"{f['requests_per_min']:.1f}", f"{f['p99_ms']:.2f}" if f["p99_ms"] is not None else "-",
            ("[red]" if f["error_rate"] > 0.01 else "") + percent(f["error_rate"]),
            "-" if drift is None else (f"[yellow]{drift:.2f}[/]" if drift > 0.25 else f"{drift:.2f}")]
