"""One build job in its own process: `python -m edgehub.hub.jobs.child --home H --job N`.

Run by hub/jobs/runner.py. It lays the job's uploads out under <home>/jobs/<N>/ with their own
names (the pipeline reads a file's kind from its suffix), puts uploaded Python modules on the path
after the installed ones, runs the same publish as the local CLI (LocalHub.publish, acting as the
job's owner), streams progress as job events, and records the result or the one-line error.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from edgehub.hub.client.local import LocalHub
from edgehub.hub.client.models import PublishRequest
from edgehub.hub.home import HubPaths
from edgehub.hub.jobs.store import JobStore
from edgehub.hub.jobs.uploads import UploadStore

log = logging.getLogger("edgehub.hub.jobs")
UPDATE_EVERY_S = 0.25  # progress messages and training steps are sampled; starts and advances never are


def job_dir(paths: HubPaths, job_id: int) -> Path:
    return paths.root / "jobs" / str(job_id)


def uploads_dir(paths: HubPaths) -> Path:
    return paths.root / "uploads"


class JobSink:
    """A publish ProgressSink that writes job events (a follower replays them into progress bars)."""

    def __init__(self, store: JobStore, job_id: int):
        self.store, self.job_id = store, job_id
        self.last: dict[tuple[str, str], float] = {}

    def _sampled(self, kind: str, label: str) -> bool:
        now = time.monotonic()
        if now - self.last.get((kind, label), 0.0) < UPDATE_EVERY_S:
            return False
        self.last[(kind, label)] = now
        return True

    def start(self, label: str, steps: int) -> None:
        self.store.add_event(self.job_id, "start", {"label": label, "steps": steps})

    def update(self, label: str, message: str) -> None:
        if self._sampled("update", label):
            self.store.add_event(self.job_id, "update", {"label": label, "message": message})

    def advance(self, label: str) -> None:
        self.store.add_event(self.job_id, "advance", {"label": label})

    def train(self, label: str, progress) -> None:
        if self._sampled("train", label) or progress.step == progress.steps:
            self.store.add_event(self.job_id, "train", {"label": label, **vars(progress)})


def _place(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    return dst


def lay_out(request: PublishRequest, owner: str, uploads: UploadStore, work: Path) -> dict[str, Path]:
    """The job's files under `work`, by role, with the names they were uploaded with; the modules
    under work/modules/ as importable files."""
    files = {}
    for role, upload_id in request.files.items():
        upload = uploads.get(upload_id, owner)
        files[role] = _place(uploads.complete_path(upload_id, owner), work / role / upload.filename)
    modules = work / "modules"
    for dotted, upload_id in request.modules.items():
        parts = dotted.split(".")
        if not all(p.isidentifier() for p in parts):
            raise ValueError(f"bad module name {dotted!r}")
        for depth in range(1, len(parts)):
            init = modules.joinpath(*parts[:depth], "__init__.py")
            init.parent.mkdir(parents=True, exist_ok=True)
            init.touch()
        _place(uploads.complete_path(upload_id, owner), modules.joinpath(*parts[:-1], parts[-1] + ".py"))
    return files


def run(paths: HubPaths, job_id: int) -> int:
    from edgehub.hub.cli.common import known_errors
    from edgehub.hub.publish.pipeline import PublishOptions

    hub = LocalHub.open(paths.root)
    jobs = JobStore(hub.context.engine)
    job = jobs.get(job_id)
    try:
        request = PublishRequest.model_validate(job.request)
        work = job_dir(paths, job_id)
        files = lay_out(request, job.owner, UploadStore(hub.context.engine, uploads_dir(paths)), work)
        # After the installed packages: the hub's own modules win over an uploaded file of the same name,
        # and the evaluation children (subprocesses) inherit the path.
        modules = str(work / "modules")
        sys.path.append(modules)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), modules]))
        options = PublishOptions(
            source=str(files["source"]) if "source" in files else (request.source or ""), name=request.name,
            eval_path=files.get("eval"), profiles=request.profiles, calib_path=files.get("calib"),
            weights=files.get("weights"), new_version=request.new_version, profiles_file=files.get("profiles_file"),
            train_path=files.get("train"), unlabeled_path=files.get("unlabeled"), recipe_path=files.get("recipe"),
            metric=request.metric, eval_timeout_s=request.eval_timeout_s, eval_memory_mb=request.eval_memory_mb)
        if options.eval_path is None:
            raise ValueError("a publish needs an eval set (files.eval)")
        result = hub.as_actor(job.owner).publish(options, JobSink(jobs, job_id), deploy=request.deploy,
                                                 rollout=request.rollout)
    except (*known_errors(), ValueError) as exc:
        jobs.finish(job_id, state="failed", error=str(exc).splitlines()[0] if str(exc) else repr(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug: the job says so, with the traceback in its events
        jobs.add_event(job_id, "log", {"message": traceback.format_exc()[-4000:]})
        jobs.finish(job_id, state="failed", error=f"internal error: {exc!r}")
        return 2
    finally:
        hub.close()
    jobs.finish(job_id, state="succeeded", result=result)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgehub-job")
    parser.add_argument("--home", required=True)
    parser.add_argument("--job", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(HubPaths.from_home(args.home), args.job)


if __name__ == "__main__":
    sys.exit(main())
