"""The web console in a real headless Chromium (Playwright driving the system's browser) against
the real hub: login, the device table with simulated devices and its pages, a viewer who sees no
buttons, an operator whose abort button aborts, CSRF, and device-supplied text with HTML in it
shown as text."""

from __future__ import annotations

import shutil

import pytest
from api_hub import ApiHub
from mqtt_helpers import wait_for

from edgehub.protocol.messages import AgentError

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
DEVICES = 60
HOSTILE = '<img src=x onerror="window.__pwned=1"><b id="bold">bold</b> & more'


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tiny_mlp):
    with ApiHub(tmp_path_factory.mktemp("console") / "home") as hub:
        hub.simulate(DEVICES, tags=["lab"])
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        assert wait_for(lambda: sum(1 for r in hub.fleet.status_rows() if r["active_variant"]) == DEVICES, 90)
        hub.fleet.record_events([AgentError(event_id="hostile-0001", device_id="sim-00001", generation=1,
                                            variant_id=None, error=HOSTILE)])
        hub.publish(tiny_mlp, new_version=True)
        started = hub.post("operator", "/api/v1/rollouts", json={"model": "digits:2", "group": "lab", "canary": "2",
                                                                 "on_success": "approve"})
        assert started.status_code == 201, started.text
        hub.rollout_id = started.json()["id"]
        yield hub


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def login(browser, hub, role: str):
    page = browser.new_page()
    page.goto(f"{hub.url}/console")
    assert page.url.endswith("/console/login")  # no session: the login page
    page.fill("input[name=token]", hub.tokens[role])
    page.click("button[type=submit]")
    page.wait_for_url(f"{hub.url}/console")
    return page


def test_a_wrong_token_does_not_log_in(browser, hub):
    page = browser.new_page()
    page.goto(f"{hub.url}/console/login")
    page.fill("input[name=token]", hub.tokens["admin"][:-4] + "AAAA")
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text("#message") and page.url.endswith("/console/login")
    page.close()


def test_the_fleet_overview_pages_through_the_simulated_devices(browser, hub):
    page = login(browser, hub, "viewer")
    assert page.inner_text("#count-devices") == str(DEVICES) and page.inner_text("#count-online") == str(DEVICES)
    rows = page.locator("#devices tr").all()[1:]
    assert len(rows) == 50 and rows[0].inner_text().startswith("sim-00000")
    assert "digits v1" in rows[0].inner_text() and "(sim)" in rows[0].inner_text()
    page.click("#next")
    assert len(page.locator("#devices tr").all()) - 1 == DEVICES - 50
    assert "Devices 51–60 of 60" in page.inner_text("#pages")
    page.goto(f"{hub.url}/console?group=nobody")
    assert "No devices match" in page.inner_text("#devices")
    page.close()


def test_a_device_page_shows_benchmarks_verdicts_and_hostile_text_as_text(browser, hub):
    page = login(browser, hub, "viewer")
    page.goto(f"{hub.url}/console/devices/sim-00001")
    assert page.inner_text("#device-id") == "sim-00001"
    benchmarks = page.inner_text("#benchmarks")
    assert "digits-v1-" in benchmarks and "selected" in benchmarks
    # One row per model slot: what runs, what the hub selected, its benchmark p50.
    [row] = page.locator("#models tr").all()[1:]
    cells = [c.inner_text() for c in row.locator("td").all()]
    assert cells[0] == "digits" and cells[2].startswith("digits-v1-") and cells[2] == cells[3], cells
    assert float(cells[5]) > 0
    activations = page.inner_text("#activations")
    assert HOSTILE in activations  # shown literally ...
    assert page.locator("#activations b#bold").count() == 0 and page.locator("#activations img").count() == 0
    assert page.evaluate("window.__pwned") is None  # ... and nothing in it ran
    page.close()


def test_a_viewer_sees_no_buttons_and_an_operator_aborts(browser, hub):
    viewer = login(browser, hub, "viewer")
    viewer.goto(f"{hub.url}/console/rollouts/{hub.rollout_id}")
    assert viewer.locator("#actions").count() == 0 and viewer.locator("button[id^=btn-]").count() == 0
    assert viewer.locator("a[href='/console/audit']").count() == 0
    viewer.close()

    operator = login(browser, hub, "operator")
    operator.goto(f"{hub.url}/console/rollouts/{hub.rollout_id}")
    assert operator.locator("#btn-abort").count() == 1
    operator.click("#btn-abort")
    operator.wait_for_url(f"**/console/rollouts/{hub.rollout_id}?*")
    assert operator.inner_text("#status") == "aborted" and "abort: rollout is aborted" in operator.inner_text("#message")
    assert hub.get("viewer", f"/api/v1/rollouts/{hub.rollout_id}").json()["status"] == "aborted"
    operator.goto(f"{hub.url}/console/audit")
    assert "token:operator-user" in operator.inner_text("#audit") and "rollout.abort" in operator.inner_text("#audit")
    operator.close()


def test_console_forms_need_their_csrf_token(hub):
    import httpx

    with httpx.Client(base_url=hub.url) as client:
        assert client.post("/console/login", data={"token": hub.tokens["operator"]}).status_code == 303
        forged = client.post(f"/console/rollouts/{hub.rollout_id}/resume", data={"csrf": "0" * 64})
        assert forged.status_code == 403 and "CSRF" in forged.json()["error"]
        assert client.post("/console/logout", data={}).status_code == 403


def test_the_model_page_has_the_lineage_variants_and_a_chart_per_profile(browser, hub):
    page = login(browser, hub, "viewer")
    page.goto(f"{hub.url}/console/models/digits?version=1")
    assert "fp32" in page.inner_text("#lineage") and "int8" in page.inner_text("#variants")
    chart = page.locator("img[alt='latency vs accuracy on x86-cpu']")
    assert chart.count() == 1 and page.evaluate("document.querySelector('img[alt^=latency]').naturalWidth") > 100
    assert "★ selected" in page.inner_text(".profile-points")
    page.close()
