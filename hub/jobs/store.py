"""The job queue in the database: enqueue, claim (one runner wins a job), progress events, finish,
cancel, and what a hub start does with the jobs a stopped hub was running."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import sessionmaker

from edgehub.hub.fleet.records import FleetError
from edgehub.hub.jobs.schema import JobEventRow, JobRow
from edgehub.zoo.records import utcnow
from edgehub.zoo.schema import Base

FINISHED = ("succeeded", "failed", "cancelled")
# A build interrupted by a hub restart is run again once; interrupted twice, it is marked failed
# (a model that takes the hub down with it must not do so in a loop).
MAX_ATTEMPTS = 2


class JobError(FleetError):
    """A job that does not exist, or an action that does not apply to its state (one line)."""


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    state: str
    owner: str
    request: dict
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    cancel_requested: bool
    result: dict | None
    error: str | None

    def as_json(self, *, with_result: bool = True) -> dict:
        iso = lambda t: t.isoformat() if t else None  # noqa: E731
        data = {"id": self.id, "kind": self.kind, "state": self.state, "owner": self.owner,
                "name": self.request.get("name"), "created_at": iso(self.created_at),
                "started_at": iso(self.started_at), "finished_at": iso(self.finished_at),
                "attempts": self.attempts, "cancel_requested": self.cancel_requested, "error": self.error}
        if with_result:
            data["request"] = self.request
            data["result"] = self.result
        return data


def _job(r: JobRow) -> Job:
    return Job(r.id, r.kind, r.state, r.owner, r.request, r.created_at, r.started_at, r.finished_at, r.attempts,
               r.cancel_requested, r.result, r.error)


class JobStore:
    def __init__(self, engine: Engine):
        Base.metadata.create_all(engine, tables=[JobRow.__table__, JobEventRow.__table__])
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    def enqueue(self, kind: str, owner: str, request: dict, now: datetime | None = None) -> Job:
        row = JobRow(kind=kind, state="queued", owner=owner, request=request, created_at=now or utcnow(), attempts=0,
                     cancel_requested=False)
        with self.sessions.begin() as session:
            session.add(row)
            session.flush()
            session.add(JobEventRow(job_id=row.id, seq=1, at=row.created_at, kind="log", data={"message": "queued"}))
        return _job(row)

    def get(self, job_id: int) -> Job:
        with self.sessions() as session:
            row = session.get(JobRow, job_id)
        if row is None:
            raise JobError(f"no job #{job_id}; see `edgehub jobs list`")
        return _job(row)

    def list(self, *, limit: int = 50, offset: int = 0, state: str | None = None) -> tuple[int, list[Job]]:
        where = [JobRow.state == state] if state else []
        with self.sessions() as session:
            total = session.scalar(select(func.count()).select_from(JobRow).where(*where)) or 0
            rows = session.scalars(select(JobRow).where(*where).order_by(JobRow.id.desc()).limit(limit)
                                   .offset(offset)).all()
        return total, [_job(r) for r in rows]

    def claim(self, runner: str, now: datetime | None = None) -> Job | None:
        """The oldest queued job, now running under `runner`; None when none is queued. A conditional
        UPDATE, so two runners (two hubs on one database) never run the same job."""
        now = now or utcnow()
        with self.sessions.begin() as session:
            for job_id in session.scalars(select(JobRow.id).where(JobRow.state == "queued").order_by(JobRow.id)
                                          .limit(5)):
                won = session.execute(update(JobRow).where(JobRow.id == job_id, JobRow.state == "queued")
                                      .values(state="running", runner=runner, started_at=now,
                                              attempts=JobRow.attempts + 1)).rowcount
                if won:
                    self._event(session, job_id, "log", {"message": f"running (runner {runner})"}, now)
                    return _job(session.get(JobRow, job_id))
        return None

    def finish(self, job_id: int, *, state: str, result: dict | None = None, error: str | None = None,
               now: datetime | None = None) -> bool:
        """Mark a running job finished; False if it was not running (already finished elsewhere)."""
        now = now or utcnow()
        with self.sessions.begin() as session:
            done = session.execute(update(JobRow).where(JobRow.id == job_id, JobRow.state == "running")
                                   .values(state=state, result=result, error=error, finished_at=now)).rowcount
            if done:
                self._event(session, job_id, "log", {"message": state + (f": {error}" if error else ""),
                                                     "state": state}, now)
            return bool(done)

    def cancel(self, job_id: int, now: datetime | None = None) -> Job:
        """A queued job is cancelled at once; a running one is asked to stop (its runner kills the build)."""
        now = now or utcnow()
        with self.sessions.begin() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise JobError(f"no job #{job_id}; see `edgehub jobs list`")
            if row.state in FINISHED:
                raise JobError(f"job #{job_id} is already {row.state}")
            if row.state == "queued":
                row.state, row.finished_at, row.error = "cancelled", now, "cancelled before it started"
                self._event(session, job_id, "log", {"message": "cancelled", "state": "cancelled"}, now)
            else:
                row.cancel_requested = True
                self._event(session, job_id, "log", {"message": "cancel requested"}, now)
            session.flush()
            return _job(row)

    def cancel_requested(self, job_id: int) -> bool:
        with self.sessions() as session:
            return bool(session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))

    def recover(self, runner_alive: Any = None, now: datetime | None = None) -> list[tuple[int, str]]:
        """At hub start: every job still `running` was cut off by a stop or crash of the hub that ran it.
        Run it again (state queued) if it has attempts left, else mark it failed; returns (id, new state).
        `runner_alive(runner) -> bool` spares jobs of runners that still live (another hub on the database)."""
        now = now or utcnow()
        changed = []
        with self.sessions.begin() as session:
            for row in session.scalars(select(JobRow).where(JobRow.state == "running")):
                if runner_alive is not None and runner_alive(row.runner):
                    continue
                if row.cancel_requested:
                    row.state, row.finished_at, row.error = "cancelled", now, "cancelled (the hub stopped meanwhile)"
                elif row.attempts < MAX_ATTEMPTS:
                    row.state, row.runner = "queued", None
                else:
                    row.state, row.finished_at = "failed", now
                    row.error = f"interrupted by a hub restart {row.attempts} times; not run again"
                message = {"queued": "the hub restarted during the build: queued again",
                           }.get(row.state, f"the hub restarted during the build: {row.state} ({row.error})")
                self._event(session, row.id, "log", {"message": message, "state": row.state}, now)
                changed.append((row.id, row.state))
        return changed

    # -- events -----------------------------------------------------------------------------------

    @staticmethod
    def _event(session, job_id: int, kind: str, data: dict, now: datetime) -> None:
        seq = (session.scalar(select(func.max(JobEventRow.seq)).where(JobEventRow.job_id == job_id)) or 0) + 1
        session.add(JobEventRow(job_id=job_id, seq=seq, at=now, kind=kind, data=data))

    def add_event(self, job_id: int, kind: str, data: dict, now: datetime | None = None) -> None:
        with self.sessions.begin() as session:
            self._event(session, job_id, kind, data, now or utcnow())

    def events(self, job_id: int, after: int = 0, limit: int = 1000) -> list[dict]:
        with self.sessions() as session:
            rows = session.scalars(select(JobEventRow).where(JobEventRow.job_id == job_id, JobEventRow.seq > after)
                                   .order_by(JobEventRow.seq).limit(limit)).all()
        return [{"seq": r.seq, "at": r.at.isoformat(), "kind": r.kind, "data": r.data} for r in rows]

    def counts(self) -> dict[str, int]:
        with self.sessions() as session:
            return {state: n for state, n in session.execute(select(JobRow.state, func.count()).group_by(JobRow.state))}
