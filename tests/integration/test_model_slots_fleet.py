"""Two models per device with the real hub, broker and agents: a v2 agent runs both (one slot
each), a v1 agent in the same fleet keeps running one model in the v1 layout, field telemetry is
per slot, and taking one model off the profile leaves the other serving."""

from __future__ import annotations

import json

import numpy as np
from api_hub import ApiHub
from click.testing import CliRunner
from fault_harness import agent, agent_port, enroll, http_json, wait_until
from rich.console import Console

from edgehub.hub.cli import cli
from edgehub.hub.cli.fleet_views import status_table
from edgehub.hub.serve.settings import HubSettings


def edgehub(hub, *args, json_out: bool = True):
    result = CliRunner().invoke(cli, [*args, "--home", str(hub.paths.root), *(["--json"] if json_out else [])],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if json_out else result.output


def rows(hub) -> dict[str, dict]:
    return {r["device"]: r for r in edgehub(hub, "fleet", "status")["devices"]}


def settled_models(row: dict) -> list[str]:
    return sorted(m["model"] for m in row["models"] if m["variant"] and m["variant"] == m["selected_variant"])


def test_a_v2_agent_runs_two_models_beside_a_v1_agent_with_one(tmp_path, tiny_mlp, fmnist_cnn):
    # A tuning budget of 6 s per device: the v2 agent's two models share it.
    hub = ApiHub(tmp_path / "home", settings=HubSettings(tune_budget_s=6), telemetry_interval_s=2.0)
    devices = []
    try:
        _, new_config = enroll(hub.paths, "new-01", tmp_path / "agents" / "new-01")
        _, old_config = enroll(hub.paths, "old-01", tmp_path / "agents" / "old-01", protocol=1)
        devices = [agent(new_config, tmp_path / "new-01.log").start(), agent(old_config, tmp_path / "old-01.log").start()]
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        hub.fleet.deploy("fmnist", hub.publish(fmnist_cnn, name="fmnist").version.version, ["x86-cpu"])
        wait_until(lambda: settled_models(rows(hub)["new-01"]) == ["digits", "fmnist"]
                   and settled_models(rows(hub)["old-01"]) == ["fmnist"], 240, "both devices to settle")

        new, old = hub.fleet.desired("new-01"), hub.fleet.desired("old-01")
        assert new.schema_version == 2 and [s.model for s in new.slots] == ["digits", "fmnist"]
        assert [s.tuning.budget_s for s in new.slots if s.tuning] == [3.0, 3.0]  # the device's budget, shared
        assert old.schema_version == 1 and old.slots is None and old.model == "fmnist"  # the newest decision
        assert hub.fleet.get_device("new-01").state.schema_version == 2
        assert len(hub.fleet.get_device("new-01").state.active_variants) == 2
        selections = hub.fleet.selections_many(["new-01"])["new-01"]
        assert sorted(s.model for s in selections) == ["digits", "fmnist"] and all(s.winner for s in selections)

        # Real traffic to each slot: field figures per slot in the status rows.
        port = agent_port(devices[0])
        for model, x in (("digits", tiny_mlp["x"][:30]), ("fmnist", np.load(fmnist_cnn["eval"])["x"][:15])):
            for row in x:
                code, reply = http_json(f"http://127.0.0.1:{port}/predict/{model}",
                                        json.dumps({"inputs": {"x": row[None].tolist()}}).encode())
                assert code == 200 and reply["model"] == model, reply
        wait_until(lambda: {m["model"]: (m["field"] or {}).get("requests") for m in rows(hub)["new-01"]["models"]}
                   == {"digits": 30, "fmnist": 15}, 30, "per-slot field telemetry")
        wide = Console(width=250, record=True)
        wide.print(status_table(list(rows(hub).values())))
        lines = [line for line in wide.export_text().splitlines() if "digits v1" in line or "fmnist v1" in line]
        assert len(lines) == 3 and sum("new-01" in line for line in lines) == 1  # a line per slot, the device once

        # Take digits off the profile: the v2 device drops that slot and keeps fmnist; the v1 one is untouched.
        before_old = hub.fleet.desired("old-01").generation
        edgehub(hub, "rollout", "alias", "delete", "production", "--profile", "x86-cpu", "--model", "digits",
                json_out=False)
        wait_until(lambda: [m["model"] for m in http_json(f"http://127.0.0.1:{port}/models")[1]["models"]]
                   == ["fmnist"], 60, "the digits slot to go")
        assert http_json(f"http://127.0.0.1:{port}/predict/digits", b'{"inputs": {"x": [[0]]}}')[0] == 404
        assert hub.fleet.desired("old-01").generation == before_old
        assert [s.model for s in hub.fleet.desired("new-01").slots] == ["fmnist"]
        assert all(d.alive() for d in devices)
    finally:
        for d in devices:
            d.stop()
        hub.close()
