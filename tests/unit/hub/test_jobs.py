"""The job queue and uploads on a real SQLite database: claiming, cancelling, what a hub restart
does with running jobs, events, and uploads that resume, check their sha256 and respect limits."""

from __future__ import annotations

import hashlib

import pytest

from edgehub.hub.jobs.store import MAX_ATTEMPTS, JobError, JobStore
from edgehub.hub.jobs.uploads import UploadError, UploadStore
from edgehub.zoo.db import make_engine


@pytest.fixture()
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/registry.db")
    yield engine
    engine.dispose()


def test_jobs_are_claimed_once_in_order(engine):
    store = JobStore(engine)
    first, second = store.enqueue("publish", "token:a", {"name": "m1"}), store.enqueue("publish", "token:b", {"name": "m2"})
    assert store.claim("hub-1").id == first.id and store.claim("hub-2").id == second.id
    assert store.claim("hub-3") is None
    assert store.finish(first.id, state="succeeded", result={"model": "m1"})
    assert not store.finish(first.id, state="failed", error="late")  # finished once
    job = store.get(first.id)
    assert (job.state, job.result, job.attempts, job.error) == ("succeeded", {"model": "m1"}, 1, None)
    messages = [e["data"]["message"] for e in store.events(first.id)]
    assert messages[0] == "queued" and messages[-1] == "succeeded" and "running (runner hub-1)" in messages
    assert [e["seq"] for e in store.events(first.id, after=1)] == [2, 3]
    assert store.counts() == {"succeeded": 1, "running": 1}


def test_cancel_queued_at_once_running_on_request(engine):
    store = JobStore(engine)
    queued, running = store.enqueue("publish", "a", {}), store.enqueue("publish", "a", {})
    assert store.cancel(queued.id).state == "cancelled"
    assert store.claim("hub") .id == running.id
    asked = store.cancel(running.id)
    assert asked.state == "running" and asked.cancel_requested and store.cancel_requested(running.id)
    with pytest.raises(JobError, match="already cancelled"):
        store.cancel(queued.id)
    with pytest.raises(JobError, match="no job #99"):
        store.cancel(99)


def test_a_restart_runs_an_interrupted_job_again_once_then_fails_it(engine):
    store = JobStore(engine)
    job = store.enqueue("publish", "a", {})
    store.claim("hub-old")
    assert store.recover() == [(job.id, "queued")]
    assert "queued again" in store.events(job.id)[-1]["data"]["message"]
    for _ in range(MAX_ATTEMPTS - 1):
        store.claim("hub-new")
    assert store.get(job.id).attempts == MAX_ATTEMPTS
    assert store.recover() == [(job.id, "failed")]
    failed = store.get(job.id)
    assert failed.state == "failed" and f"interrupted by a hub restart {MAX_ATTEMPTS} times" in failed.error
    alive = store.enqueue("publish", "a", {})
    store.claim("hub-live")
    assert store.recover(runner_alive=lambda runner: runner == "hub-live") == []  # another live hub's job is spared
    assert store.get(alive.id).state == "running"


def test_uploads_resume_check_their_sha256_and_limits(engine, tmp_path):
    store = UploadStore(engine, tmp_path / "uploads", max_bytes=1000)
    data = bytes(range(256)) * 2
    sha = hashlib.sha256(data).hexdigest()
    up = store.create("token:a", "../../etc/model.onnx", len(data), sha)
    assert up.filename == "model.onnx" and up.received == 0 and not up.complete  # no path in the name
    assert store.append(up.id, "token:a", 0, data[:200]).received == 200
    with pytest.raises(UploadError, match="at offset 200, not 0") as stale:
        store.append(up.id, "token:a", 0, data[:200])
    assert stale.value.status == 409 and stale.value.offset == 200
    with pytest.raises(UploadError, match="no upload"):
        store.append(up.id, "token:b", 200, data[200:])  # another caller's upload does not exist for them
    with pytest.raises(UploadError, match="incomplete"):
        store.complete_path(up.id, "token:a")
    done = store.append(up.id, "token:a", 200, data[200:])
    assert done.complete and store.complete_path(up.id, "token:a").read_bytes() == data
    assert store.find("token:a", sha, len(data)).id == up.id and store.find("token:b", sha, len(data)) is None

    bad = store.create("token:a", "m.onnx", 10, "0" * 64)
    with pytest.raises(UploadError, match="do not match the sha256") as corrupt:
        store.append(bad.id, "token:a", 0, b"0123456789")
    assert corrupt.value.status == 422 and not store.path(bad.id).exists()
    with pytest.raises(UploadError, match="no upload"):
        store.get(bad.id)
    with pytest.raises(UploadError, match="over the hub's upload limit") as big:
        store.create("token:a", "big.onnx", 1001, sha)
    assert big.value.status == 413
    with pytest.raises(UploadError, match="more than the declared"):
        store.append(store.create("token:a", "s.bin", 4, sha).id, "token:a", 0, b"12345")
