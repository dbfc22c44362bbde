"""Runs queued build jobs, each in its own child process (hub/jobs/child.py), a few at a time.

A thread of `hub serve` claims queued jobs from the database, starts a child per job (a crash or
an out-of-memory kill of a build cannot take the hub down), kills the child of a job that is
cancelled, and marks a job whose child died without a word as failed with its exit code. At start
it recovers the jobs a stopped hub was running (JobStore.recover: run again once, else failed), so
a build is never lost silently.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from edgehub.hub.home import HubPaths
from edgehub.hub.jobs.child import job_dir
from edgehub.hub.jobs.store import JobStore
from edgehub.zoo.db import make_engine

log = logging.getLogger("edgehub.hub.jobs")


@dataclass
class _Running:
    job_id: int
    process: subprocess.Popen
    cancelling: bool = False


class JobRunner:
    def __init__(self, paths: HubPaths, slots: int = 1, poll_s: float = 0.5):
        self.paths, self.slots, self.poll_s = paths, max(1, slots), poll_s
        self.engine = make_engine(paths.db_url)
        self.store = JobStore(self.engine)
        self.runner_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.running: dict[int, _Running] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> JobRunner:
        for job_id, state in self.store.recover():
            log.warning("job #%d was running when the hub stopped: now %s", job_id, state)
        self._thread = threading.Thread(target=self._loop, name="edgehub-jobs", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - the loop outlives a database hiccup; the next tick retries
                log.exception("job runner tick failed")
            self._stop.wait(self.poll_s)

    def _tick(self) -> None:
        for job_id, run in list(self.running.items()):
            code = run.process.poll()
            if code is None:
                if not run.cancelling and self.store.cancel_requested(job_id):
                    run.cancelling = True
                    log.info("job #%d: cancelled, stopping its build", job_id)
                    self._kill(run.process)
                continue
            del self.running[job_id]
            if run.cancelling:
                self.store.finish(job_id, state="cancelled", error="cancelled while running")
            elif self.store.finish(job_id, state="failed", error=f"the build process exited with code {code}"):
                log.warning("job #%d: build process exited with code %s without a result", job_id, code)
        while len(self.running) < self.slots and not self._stop.is_set():
            job = self.store.claim(self.runner_id)
            if job is None:
                break
            self.running[job.id] = _Running(job.id, self._spawn(job.id))
            log.info("job #%d (%s by %s): started", job.id, job.kind, job.owner)

    def _spawn(self, job_id: int) -> subprocess.Popen:
        work = job_dir(self.paths, job_id)
        work.mkdir(parents=True, exist_ok=True)
        out = open(work / "build.log", "ab")  # noqa: SIM115 - the child owns it; closed by the child's exit
        try:
            return subprocess.Popen([sys.executable, "-m", "edgehub.hub.jobs.child", "--home", str(self.paths.root),
                                     "--job", str(job_id)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, "EDGEHUB_HOME": str(self.paths.root)})
        finally:
            out.close()

    @staticmethod
    def _kill(process: subprocess.Popen) -> None:
        """The build and its evaluation children (one process group)."""
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return  # already gone: its exit is handled on the next tick

    def stop(self, *, kill_builds: bool = True) -> None:
        """Stop claiming. Running builds are killed and left `running` in the database, so the next
        start recovers them (run again or failed), as after a crash."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if kill_builds:
            for run in self.running.values():
                self._kill(run.process)
                run.process.wait(timeout=10)
        self.engine.dispose()

    def build_log(self, job_id: int) -> Path:
        return job_dir(self.paths, job_id) / "build.log"
