"""Rollouts end to end: simulated devices on the real broker, the hub's fleet loop, the CLI.

Canary then everyone, the group's `production` alias moving on completion, automatic rollback
past the error threshold, pause / resume / abort, a device joining the group mid-rollout, a hub
restart mid-rollout, and the same on PostgreSQL.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime

import pytest
from click.testing import CliRunner
from mqtt_helpers import wait_for
from sim_hub import SimHub

from edgehub.hub.cli import cli
from edgehub.hub.fleet.records import EnrollRequest
from edgehub.hub.sim.model import FailureRule, SyntheticDistribution


def edgehub(hub: SimHub, *args: str) -> dict:
    result = CliRunner().invoke(cli, [*args, "--home", str(hub.paths.root), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def edgehub_fails(hub: SimHub, *args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--home", str(hub.paths.root)])
    assert result.exit_code == 1, result.output
    return result.output


def versions(hub: SimHub, **filters) -> Counter:
    return Counter((r["active_variant"] or "none").split("-")[1] if r["active_variant"] else "none"
                   for r in hub.rows(**filters))


def settled_on(hub: SimHub, version: str, n: int, **filters) -> bool:
    return versions(hub, **filters).get(version, 0) == n


def assert_no_event_lost(hub: SimHub) -> None:
    """Every event the broker acknowledged to a device is stored, once."""
    def totals() -> tuple[int, int, int]:
        stats = [sim.stats() for sim in hub.sims]
        return (sum(s["events_sent"] for s in stats), sum(s["events_acked"] for s in stats), hub.fleet.count_events())

    assert wait_for(lambda: len(set(totals())) == 1, timeout=15), totals()
    assert hub.stats["events_duplicate"] == 0


def rollout_status(hub: SimHub, rollout_id: int) -> dict:
    return edgehub(hub, "rollout", "status", str(rollout_id))


def test_canary_then_everyone_then_rollback(tmp_path, tiny_mlp):
    fail_v3 = SyntheticDistribution(failures=[FailureRule(match="digits-v3-", activation=1.0)])
    with SimHub(tmp_path / "home") as hub:
        hub.simulate(40, tags=["lab"], distribution=fail_v3)
        hub.simulate(8, prefix="other", distribution=fail_v3)
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        assert wait_for(lambda: settled_on(hub, "v1", 48), timeout=60), versions(hub)
        hub.publish(tiny_mlp, new_version=True)

        started = edgehub(hub, "rollout", "start", "digits:2", "--group", "lab", "--canary", "10%")
        assert started["members"] == 40 and started["per_stage"] == {"0": 4, "1": 36}
        assert wait_for(lambda: rollout_status(hub, started["id"])["status"] == "completed", timeout=60)
        status = rollout_status(hub, started["id"])
        advance, done = status["history"][1], status["history"][2]
        assert advance["stage"] == 1 and advance["counts"] == {"total": 4, "activated": 4, "failed": 0}
        assert done["status"] == "completed" and done["counts"]["activated"] == 40
        assert settled_on(hub, "v2", 40, group="lab")
        assert versions(hub) == Counter({"v2": 40, "v1": 8})  # only the group moved
        # Stage 2 devices activated only after the canary passed.
        advanced_at = datetime.fromisoformat(advance["at"].replace("Z", "+00:00"))
        rest = set(hub.fleet.rollout_member_ids(started["id"], [1]))
        assert len(rest) == 36
        assert all(at >= advanced_at for at, _ in hub.fleet.rollout_timeline(started["id"])[4:])
        aliases = {(a["scope"], a["name"]): a["version"] for a in edgehub(hub, "rollout", "alias", "list")["aliases"]}
        assert aliases == {("group:lab", "production"): 2, ("profile:x86-cpu", "production"): 1}

        # v3 fails its health check on every device: the canary trips the error threshold.
        hub.publish(tiny_mlp, new_version=True)
        bad = edgehub(hub, "rollout", "start", "digits:3", "--group", "lab", "--canary", "5",
                      "--error-threshold", "20%")
        assert wait_for(lambda: rollout_status(hub, bad["id"])["status"] == "rolled_back", timeout=60)
        status = rollout_status(hub, bad["id"])
        assert "halted and rolled back" in status["reason"] and status["counts"]["1"]["activated"] == 0
        assert status["targeted"]["failed"] >= 2
        # The canaries are sent back to the group's production version.
        assert wait_for(lambda: Counter(r["desired"] for r in hub.rows(group="lab")) == Counter({"digits v2": 40}),
                        timeout=30), Counter(r["desired"] for r in hub.rows(group="lab"))
        assert settled_on(hub, "v2", 40, group="lab"), versions(hub, group="lab")
        assert ("group:lab", "canary") not in {(a.scope, a.name) for a in hub.fleet.aliases()}
        assert_no_event_lost(hub)


def test_pause_resume_abort_late_member_and_hub_restart(tmp_path, tiny_mlp):
    with SimHub(tmp_path / "home") as hub:
        hub.simulate(10, tags=["lab"])
        # Enrolled but never connected: it cannot activate, so the last stage waits for it.
        hub.fleet.enroll_many([EnrollRequest(id="asleep-1", profile="x86-cpu", password_hash="h", tags=["lab"])])
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        assert wait_for(lambda: settled_on(hub, "v1", 10), timeout=60)
        hub.publish(tiny_mlp, new_version=True)
        started = edgehub(hub, "rollout", "start", "digits", "--group", "lab", "--canary", "3",
                          "--success-threshold", "100%")
        assert started["members"] == 11 and started["per_stage"] == {"0": 3, "1": 8}
        assert not any(m == "asleep-1" for m in hub.fleet.rollout_member_ids(started["id"], [0]))  # online first
        assert wait_for(lambda: rollout_status(hub, started["id"])["stage"] == 1 and settled_on(hub, "v2", 10),
                        timeout=60), versions(hub)
        status = rollout_status(hub, started["id"])
        assert status["status"] == "running" and status["counts"]["1"]["total"] == 8
        assert status["counts"]["1"]["activated"] == 7  # the sleeping device holds the stage

        # A device tagged into the group now joins the running last stage and gets the new version.
        hub.simulate(1, prefix="late")
        assert wait_for(lambda: "late-00000" in {r["device"] for r in hub.rows(online=True)}, timeout=30)
        edgehub(hub, "fleet", "tag", "late-00000", "--add", "lab")
        assert wait_for(lambda: (hub.fleet.get_device("late-00000").active_variant or "").startswith("digits-v2"),
                        timeout=30)
        assert wait_for(lambda: rollout_status(hub, started["id"])["counts"]["1"]["total"] == 9, timeout=10)

        assert edgehub(hub, "rollout", "pause")["status"] == "paused"
        assert "cannot pause" in edgehub_fails(hub, "rollout", "pause", str(started["id"]))
        # The hub restarts mid-rollout: the state and the devices' targets survive.
        hub.restart_workers()
        assert rollout_status(hub, started["id"])["status"] == "paused"
        assert edgehub(hub, "rollout", "resume", str(started["id"]))["status"] == "running"
        assert wait_for(lambda: hub.workers[0].started.is_set(), timeout=30)
        assert settled_on(hub, "v2", 11)

        aborted = edgehub(hub, "rollout", "abort")
        assert aborted["status"] == "aborted"
        assert wait_for(lambda: settled_on(hub, "v1", 11), timeout=60), versions(hub)
        assert "cannot resume" in edgehub_fails(hub, "rollout", "resume")
        listed = edgehub(hub, "rollout", "list")["rollouts"]
        assert [(r["id"], r["status"]) for r in listed] == [(started["id"], "aborted")]
        # The fleet view filters by rollout and shows every member.
        view = edgehub(hub, "fleet", "status", "--rollout", str(started["id"]))
        assert view["summary"]["devices"] == 12 and len(view["devices"]) == 12


def test_rollout_cli_bad_input(tmp_path, tiny_mlp):
    with SimHub(tmp_path / "home") as hub:
        hub.fleet.enroll("dev-1", "x86-cpu", "h", tags=["lab"])
        assert "no model" in edgehub_fails(hub, "rollout", "start", "nope", "--group", "lab")
        hub.publish(tiny_mlp)
        assert "no device" in edgehub_fails(hub, "rollout", "start", "digits", "--group", "empty")
        assert "invalid stage size" in edgehub_fails(hub, "rollout", "start", "digits", "--group", "lab",
                                                     "--canary", "lots")
        assert "outside" in edgehub_fails(hub, "rollout", "start", "digits", "--group", "lab",
                                          "--error-threshold", "120%")
        assert "invalid group" in edgehub_fails(hub, "rollout", "start", "digits", "--group", "Bad Group")
        assert "no rollouts yet" in edgehub_fails(hub, "rollout", "status")
        assert "no rollout #9" in edgehub_fails(hub, "rollout", "abort", "9")
        assert "exactly one" in edgehub_fails(hub, "rollout", "alias", "set", "production", "digits")
        assert "nothing to do" in edgehub_fails(hub, "fleet", "tag", "dev-1")
        assert "no device 'ghost'" in edgehub_fails(hub, "fleet", "tag", "ghost", "--add", "x")
        assert hub.fleet.rollouts() == [] and hub.fleet.get_device("dev-1").tags == ["lab"]  # nothing changed
        started = edgehub(hub, "rollout", "start", "digits", "--group", "lab")
        assert "already active" in edgehub_fails(hub, "rollout", "start", "digits", "--group", "lab")
        assert [r.id for r in hub.fleet.rollouts()] == [started["id"]]


@pytest.mark.postgres
def test_rollout_on_postgresql(tmp_path, tiny_mlp, pg_schema, monkeypatch):
    from conftest import PG_URL

    monkeypatch.setenv("EDGEHUB_DB_URL", f"{PG_URL}?options=-csearch_path%3D{pg_schema}")
    with SimHub(tmp_path / "home", workers=2) as hub:
        assert hub.fleet.engine.dialect.name == "postgresql"
        hub.simulate(30, tags=["lab"])
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        assert wait_for(lambda: settled_on(hub, "v1", 30), timeout=60), versions(hub)
        hub.publish(tiny_mlp, new_version=True)
        started = edgehub(hub, "rollout", "start", "digits:2", "--group", "lab", "--canary", "20%")
        assert wait_for(lambda: rollout_status(hub, started["id"])["status"] == "completed", timeout=60)
        assert settled_on(hub, "v2", 30)
        assert_no_event_lost(hub)
        assert all(w.stats["events_stored"] > 0 for w in hub.workers)  # both workers took a share
