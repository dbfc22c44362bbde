"""The hub's cost per report does not grow with the fleet: a batch of reports costs the same
number of SQL statements in a fleet of 100 and of 2,000 devices; `fleet status` is a fixed number
of queries whatever the fleet; several hub workers share the load over a shared subscription."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager

import pytest
from click.testing import CliRunner
from mqtt_helpers import wait_for
from sim_hub import SimHub
from sqlalchemy import event

from edgehub.hub.cli import cli
from edgehub.hub.control.selection import Policy
from edgehub.hub.control.settings import FleetSettings, owner_of
from edgehub.hub.control.worker import FleetService
from edgehub.hub.fleet.records import EnrollRequest
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.fleet.views import StatusFilter
from edgehub.hub.home import HubPaths
from edgehub.hub.publish.pipeline import PublishOptions, publish
from edgehub.protocol.messages import BenchmarkReport, BenchmarkSettings, DeviceState, Hardware, Latency
from edgehub.protocol.topics import Topics
from edgehub.protocol.wire import encode
from edgehub.zoo.profiles import load_profiles
from edgehub.zoo.registry import Registry

TOPICS = Topics("default")


@contextmanager
def counting(engine):
    seen: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


def report(device: str, variant: str, p50: float) -> BenchmarkReport:
    return BenchmarkReport(event_id=uuid.uuid4().hex, device_id=device, generation=1, variant_id=variant, ok=True,
                           runtime="simulated", latency=Latency(p50_ms=p50, p90_ms=p50, p99_ms=p50 * 1.2,
                                                                mean_ms=p50, runs=50), agreement=1.0, peak_rss_mb=40)


def fleet_of(tmp_path, n: int, model: dict):
    """A hub store with n devices that have reported every candidate, and an unstarted service
    (its MQTT client is not connected: publishes just queue)."""
    paths = HubPaths.from_home(tmp_path / f"home-{n}")
    registry, store = Registry(paths.db_url), FleetStore(paths.db_url)
    outcome = publish(PublishOptions(source=str(model["onnx"]), name="digits", eval_path=model["eval"]), paths,
                      registry)
    variants = [v.id for v in outcome.variants]
    ids = [f"dev-{i:05d}" for i in range(n)]
    store.enroll_many([EnrollRequest(id=i, profile="x86-cpu", password_hash="h") for i in ids], simulated=True)
    hw = Hardware(arch="x86_64", cores=4, ram_mb=4096)
    store.ingest([DeviceState(device_id=i, online=True, hardware=hw, active_variant=variants[0]) for i in ids],
                 [report(i, v, 1.0 + k) for i in ids for k, v in enumerate(variants)])
    store.deploy("digits", 1, ["x86-cpu"])
    settings = FleetSettings(fleet="default", broker_url="mqtt://127.0.0.1:9", username="u", password="p",
                             artifact_base_url="http://127.0.0.1:9/", url_secret=b"s" * 32, policy=Policy(),
                             benchmark=BenchmarkSettings(), share_group="g")
    service = FleetService(settings, registry, store, load_profiles())
    service.reconcile_all = lambda: service._reconcile(store.device_ids())
    service.reconcile_all()
    return service, ids, variants


def test_a_batch_costs_the_same_in_a_small_and_a_large_fleet(tmp_path, tiny_mlp):
    counts, seconds = {}, {}
    for n in (100, 2000):
        service, ids, variants = fleet_of(tmp_path, n, tiny_mlp)
        assert service.stats["desired_published"] == n  # every device got its candidates and winner
        batch = [(TOPICS.events(ids[i]), encode(report(ids[i], variants[-1], 0.5))) for i in range(100)]
        with counting(service.fleet.engine) as statements:
            started = time.perf_counter()
            dirty = service.handle_batch(batch)
            service._reconcile(dirty)
            seconds[n] = time.perf_counter() - started
        counts[n] = len(statements)
        assert dirty == set(ids[:100]) and service.stats["events_stored"] == 100
        # The new, faster report changed those devices' winners: one new desired state each.
        assert service.stats["desired_published"] == n + 100
        service.fleet.close()
        service.registry.close()
    assert counts[100] == counts[2000], counts
    assert counts[100] < 40  # a handful of bulk statements, not one per device or per report
    assert seconds[2000] < seconds[100] * 3 + 0.5, seconds


def test_status_is_a_fixed_number_of_queries(tmp_path, tiny_mlp):
    service, _, _ = fleet_of(tmp_path, 1500, tiny_mlp)
    store = service.fleet
    with counting(store.engine) as small:
        rows = store.status_rows(StatusFilter(), limit=10)
        store.status_summary()
    with counting(store.engine) as everything:
        started = time.perf_counter()
        all_rows = store.status_rows(StatusFilter())
        summary = store.status_summary()
        elapsed = time.perf_counter() - started
    assert len(rows) == 10 and len(all_rows) == 1500 and summary["devices"] == 1500 and summary["settled"] == 1500
    assert all(r["selected_variant"] == r["active_variant"] and r["p50_ms"] == 1.0 for r in all_rows)
    # IN-lists are chunked by 500: 1,500 rows take two more variant/rollout lookups than 10 do.
    assert len(everything) <= len(small) + 4 and len(everything) < 15, everything
    assert elapsed < 5.0
    # The CLI: filters, JSON, and a watch that stops by itself.
    runner = CliRunner()
    home = str(service.fleet.engine.url.database).rsplit("/", 1)[0]
    result = runner.invoke(cli, ["fleet", "status", "--home", home, "--json", "--limit", "5", "--online"])
    view = json.loads(result.output)
    assert result.exit_code == 0 and len(view["devices"]) == 5 and view["summary"]["online"] == 1500
    result = runner.invoke(cli, ["fleet", "status", "--home", home, "--watch", "--interval", "0.1", "--iterations",
                                 "2", "--json", "--profile", "rpi5"])
    frames = [json.loads(part) for part in result.output.replace("}\n{", "}\x00{").split("\x00")]
    assert result.exit_code == 0 and len(frames) == 2 and frames[0]["summary"]["devices"] == 0
    result = runner.invoke(cli, ["fleet", "status", "--home", home])
    assert result.exit_code == 0 and "first 50 of 1500" in result.output and "fleet summary" in result.output
    service.fleet.close()
    service.registry.close()


def test_two_workers_share_the_fleet(tmp_path, tiny_mlp):
    with SimHub(tmp_path / "home", workers=2) as hub:
        hub.simulate(120, tags=["lab"], processes=2)
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        assert wait_for(lambda: hub.fleet.status_summary()["settled"] == 120, timeout=90), hub.fleet.status_summary()
        stats = [w.stats for w in hub.workers]
        assert all(s["events_stored"] > 0 and s["reconciled"] > 0 for s in stats), stats
        stored = sum(s["events_stored"] for s in stats)

        def totals():
            sims = [sim.stats() for sim in hub.sims]
            return sum(s["events_acked"] for s in sims), hub.fleet.count_events()

        assert wait_for(lambda: totals()[0] == totals()[1], timeout=15), totals()
        assert sum(s["events_duplicate"] for s in stats) == 0 and stored <= hub.fleet.count_events()
        owners = {owner_of(r["device"], 2) for r in hub.rows()}
        assert owners == {0, 1}
        assert {r["generation"] for r in hub.rows()} == {2}  # one owner each: no competing desired states


@pytest.mark.parametrize("n,workers", [(7, 1), (1000, 3)])
def test_owner_of_is_stable_and_spread(n, workers):
    ids = [f"dev-{i}" for i in range(n)]
    owners = [owner_of(i, workers) for i in ids]
    assert owners == [owner_of(i, workers) for i in ids] and set(owners) == set(range(workers))
    if n >= 1000:
        assert min(owners.count(k) for k in range(workers)) > n / workers * 0.8


@pytest.mark.slow
def test_a_locked_database_loses_no_events(tmp_path, tiny_mlp):
    """While another process holds the SQLite database locked, the hub keeps what it drained and
    stores it once the lock is gone: every event a device got acknowledged ends up stored, once."""
    import sqlite3

    with SimHub(tmp_path / "home") as hub:
        sim = hub.simulate(20)
        hub.fleet.deploy("digits", hub.publish(tiny_mlp).version.version, ["x86-cpu"])
        assert wait_for(lambda: hub.fleet.status_summary()["settled"] == 20, timeout=60)
        lock = sqlite3.connect(hub.paths.root / "registry.db", timeout=30)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            sim.flood(5)
            assert wait_for(lambda: sim.stats()["events_acked"] == sim.stats()["events_sent"], timeout=30)
            time.sleep(7)  # past SQLite's 5 s busy timeout: the hub's transactions fail meanwhile
        finally:
            lock.rollback()
            lock.close()
        assert wait_for(lambda: hub.fleet.count_events() == sim.stats()["events_acked"], timeout=60), \
            (hub.fleet.count_events(), sim.stats())
        assert hub.stats["loop_failures"] >= 1  # the lock did bite
        assert hub.stats["events_duplicate"] == 0 and hub.stats.get("dropped", 0) == 0


def test_the_loop_re_signs_desired_urls_before_they_expire(tmp_path, tiny_mlp):
    """FleetService.refresh_urls: nothing to do while the URLs are fresh; six and a half days later
    every stored desired state is re-signed (same generation, new deadline), stored and queued to
    publish; a second pass finds nothing left."""
    from edgehub.hub.control.url_refresh import REFRESH_MARGIN_S, url_expiry
    from edgehub.hub.control.worker import URL_TTL_S

    service, ids, _ = fleet_of(tmp_path, 20, tiny_mlp)
    before = {i: service.fleet.desired(i) for i in ids}
    assert all(d is not None and d.candidates for d in before.values())
    assert service.refresh_urls() == 0
    later = time.time() + URL_TTL_S - REFRESH_MARGIN_S / 2
    assert service.refresh_urls(now=later) == len(ids)
    for i in ids:
        after = service.fleet.desired(i)
        assert after.generation == before[i].generation
        assert [c.variant_id for c in after.candidates] == [c.variant_id for c in before[i].candidates]
        assert all(url_expiry(c.url) >= later + URL_TTL_S - 1 for c in after.candidates)
        assert after.candidates[0].url != before[i].candidates[0].url
    assert service.refresh_urls(now=later) == 0
    assert service.stats["urls_refreshed"] == len(ids)
