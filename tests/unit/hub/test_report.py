"""`edgehub report`: the Pareto front (pure), the data gathered from the fleet, the PNG charts, and
the page as a real headless browser (Chromium) renders it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from mqtt_helpers import wait_for
from PIL import Image
from sim_hub import SimHub

from edgehub.hub.cli import cli
from edgehub.hub.report.build import ReportError, gather, pareto_front, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--hide-scrollbars"]


def test_pareto_front():
    points = [("fast-bad", 1.0, 0.80), ("mid", 2.0, 0.90), ("slow-good", 4.0, 0.95), ("dominated", 3.0, 0.85),
              ("tie-slower", 2.0, 0.89), ("twin", 2.0, 0.90)]
    assert pareto_front(points) == {"fast-bad", "mid", "twin", "slow-good"}
    assert pareto_front([]) == set() and pareto_front([("a", 1.0, 0.5)]) == {"a"}
    assert pareto_front([("a", 1.0, 0.9), ("b", 0.5, 0.95)]) == {"b"}


@pytest.fixture(scope="module")
def reported_fleet(tmp_path_factory, tiny_mlp):
    """A simulated fleet that ran v1, then a completed rollout of v2; its report written."""
    home = tmp_path_factory.mktemp("report")
    with SimHub(home / "home") as hub:
        hub.simulate(30, tags=["lab"])
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        assert wait_for(lambda: hub.fleet.status_summary()["settled"] == 30, timeout=60)
        hub.publish(tiny_mlp, new_version=True)
        result = CliRunner().invoke(cli, ["rollout", "start", "digits", "--group", "lab", "--canary", "3",
                                          "--home", str(hub.paths.root), "--json"])
        rollout_id = json.loads(result.output)["id"]
        assert wait_for(lambda: hub.fleet.get_rollout(rollout_id).status == "completed", timeout=60)
        assert wait_for(lambda: hub.fleet.status_summary()["settled"] == 30, timeout=30)
        result = CliRunner().invoke(cli, ["report", "digits", "--out", str(home / "out"), "--home",
                                          str(hub.paths.root), "--json"])
        assert result.exit_code == 0, result.output
        data = gather(hub.fleet, hub.registry, "digits")
        yield {"hub": hub, "data": data, "page": json.loads(result.output)["page"], "out": home / "out",
               "rollout": rollout_id}


def test_report_data(reported_fleet):
    data = reported_fleet["data"]
    assert data.model == "digits" and data.version == 2 and data.simulated
    (section,) = data.profiles
    assert section.profile == "x86-cpu" and section.simulated and len(section.variants) == 4
    assert sum(p.selected_by for p in section.variants) == 30
    chosen = next(p for p in section.variants if p.variant_id == section.selected)
    assert chosen.selected_by == max(p.selected_by for p in section.variants)
    assert all(p.devices == 30 and p.p50_ms > 0 and p.simulated for p in section.variants)
    front = {p.variant_id for p in section.variants if p.pareto}
    assert front and front == pareto_front([(p.variant_id, p.p50_ms, p.accuracy) for p in section.variants])
    (rollout,) = data.rollouts
    assert rollout.id == reported_fleet["rollout"] and rollout.status == "completed" and rollout.members == 30
    assert [s for _, s in rollout.timeline].count("activated") == 30
    assert [t[1] for t in rollout.transitions] == ["running", "running", "completed"]


def test_report_files(reported_fleet):
    out = reported_fleet["out"]
    charts = sorted(p.name for p in out.glob("*.png"))
    assert charts == ["latency-accuracy-x86-cpu.png", f"rollout-{reported_fleet['rollout']}.png", "sizes.png"]
    for name in charts:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width >= 500 and img.height >= 200
            pixels = np.asarray(img.convert("RGB"), dtype=np.int32)
            assert (pixels.sum(axis=2) < 600).mean() > 0.005  # something was drawn
    html = (out / "index.html").read_text()
    assert 'id="simulated"' in html and "digits v2" in html
    assert html.count('class="selected"') == 1 and "Pareto" in html
    assert "<script>alert" not in html


def test_report_bad_input(reported_fleet, tmp_path):
    hub = reported_fleet["hub"]
    with pytest.raises(ReportError, match="no model nope"):
        write_report(hub.fleet, hub.registry, "nope", tmp_path / "x")
    result = CliRunner().invoke(cli, ["report", "digits", "--version", "9", "--out", str(tmp_path / "y"), "--home",
                                      str(hub.paths.root)])
    assert result.exit_code == 1 and "no model digits v9" in result.output and not (tmp_path / "y").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_in_a_headless_browser(reported_fleet, tmp_path):
    page = reported_fleet["page"]
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", f"file://{page}"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    charts = re.search(r'data-charts="(\d+)"', dom)
    loaded = re.search(r'data-charts-loaded="(\d+)"', dom)
    assert charts and loaded, dom[:2000]
    assert int(charts.group(1)) == 3 and loaded.group(1) == charts.group(1)  # every PNG decoded by the browser
    assert 'data-profile="x86-cpu"' in dom and ">simulated<" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1280,2600", f"--screenshot={shot}", f"file://{page}"],
                   capture_output=True, timeout=120, check=True)
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.int32)
    assert pixels.shape[:2] == (2600, 1280)
    assert (pixels.sum(axis=2) < 600).mean() > 0.01  # text and charts, not a blank page
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 30  # the selected variant's red star made it onto the screen
