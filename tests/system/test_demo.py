"""`edgehub demo`, the README's first command, end to end in a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_everything_and_stops_it(tmp_path):
    edgehub = Path(sys.executable).parent / "edgehub"
    proc = subprocess.run([str(edgehub), "demo", "--home", str(tmp_path / "demo"), "--json"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    devices = json.loads(proc.stdout)["devices"]
    assert {d["profile"] for d in devices} == {"x86-cpu", "rpi5", "jetson-orin-nano"}
    for d in devices:
        assert d["active_variant"] == d["selected_variant"]
        # Two models per device, one slot each, with their benchmark and the field figures of real requests.
        assert [m["model"] for m in d["models"]] == ["digits-mlp", "fmnist-cnn"]
        for m in d["models"]:
            assert m["variant"] == m["selected_variant"] and m["variant"].startswith(f"{m['model']}-v1-")
            assert m["p50_ms"] > 0 and m["accuracy"] > 0.8
            field = m["field"]
            assert field["requests"] == 40 and field["errors"] == 0 and 0 < field["p50_ms"] <= field["p99_ms"]
    # Nothing left running: no broker of the demo, no agent.
    leftovers = subprocess.run(["pgrep", "-af", str(tmp_path)], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""
