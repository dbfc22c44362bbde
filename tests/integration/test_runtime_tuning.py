"""On-device runtime tuning end to end with the real hub, broker and agent: the desired state carries
the plan, the agent measures the leaders under it within the budget, the hub picks a (variant,
settings) pair, the agent runs it with those settings, and `fleet explain --json` lists every pair."""

from __future__ import annotations

import json

from api_hub import ApiHub
from click.testing import CliRunner
from fault_harness import agent, agent_port, enroll, http_json, wait_until

from edgehub.hub.cli import cli
from edgehub.hub.serve.settings import HubSettings


def test_the_agent_tunes_the_leaders_and_runs_the_chosen_pair(tmp_path, tiny_mlp):
    hub = ApiHub(tmp_path / "home", settings=HubSettings(tune_budget_s=20))
    device = None
    try:
        _, config = enroll(hub.paths, "cam-01", tmp_path / "agents" / "cam-01")
        device = agent(config, tmp_path / "cam-01.log").start()
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])

        def explained() -> dict:
            result = CliRunner().invoke(cli, ["fleet", "explain", "cam-01", "--home", str(hub.paths.root), "--json"])
            return json.loads(result.output) if result.exit_code == 0 else {}

        wait_until(lambda: explained().get("explanation", {}).get("pairs"), 180, "tuned pairs in the selection")
        [slot] = hub.fleet.desired("cam-01").slots
        plan = slot.tuning
        assert plan is not None and plan.budget_s == 20 and any(s.threads == 1 for s in plan.settings)
        pairs = explained()["explanation"]["pairs"]
        tuned = [p for p in pairs if p["settings"] != {}]
        assert tuned and all(p["reason"] for p in pairs) and sum(p["selected"] for p in pairs) == 1
        # Only leaders were tuned: every tuned variant's default p50 is within the margin of the best.
        defaults = {p["variant_id"]: p["p50_ms"] for p in pairs if p["settings"] == {} and p["p50_ms"]}
        best = min(defaults.values())
        assert all(defaults[p["variant_id"]] <= best * (1 + plan.margin) + 1e-9 for p in tuned)
        assert explained()["winner"] == next(p for p in pairs if p["selected"])["variant_id"]

        # The agent runs the chosen pair with its settings (the desired state and the agent agree),
        # once the tuned reports are all in (the choice may move while they arrive).
        def running() -> bool:
            pick = next(p for p in explained()["explanation"]["pairs"] if p["selected"])
            slot = hub.fleet.desired("cam-01").slots[0]
            state = hub.fleet.get_device("cam-01").state
            wanted = slot.activate_settings.model_dump(exclude_defaults=True) if slot.activate_settings else {}
            return (slot.activate == pick["variant_id"] and wanted == pick["settings"] and bool(state.slots)
                    and state.slots[0].active_variant == slot.activate and state.slots[0].settings == slot.activate_settings)

        wait_until(running, 90, "the chosen pair to be active")
        chosen = next(p for p in explained()["explanation"]["pairs"] if p["selected"])
        code, reply = http_json(f"http://127.0.0.1:{agent_port(device)}/predict/digits",
                                json.dumps({"inputs": {"x": tiny_mlp["x"][:1].tolist()}}).encode())
        assert code == 200 and reply["variant"] == chosen["variant_id"]
        assert "tuning digits-v1-" in device.log()
    finally:
        if device is not None:
            device.stop()
        hub.close()
