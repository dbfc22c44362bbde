"""Evaluating untrusted models in a child process, so that no model can hang or kill a publish.

A model file is input from whoever publishes it: it can hang ONNX Runtime (a Loop with a 2**62
trip count), allocate without bound, or crash the runtime (SIGSEGV). `edgehub publish` therefore
runs every evaluation (ORT or LiteRT over the eval set) in a child process,
`python -m edgehub.hub.publish.eval_child LIMIT_BYTES`, under a wall-clock timeout per evaluation and an
address-space limit (RLIMIT_AS). As in the agent's benchmark child (edgehub/agent/benchmark.py,
which explains the choice and the memory floor), the child sets the limit on itself before it
imports a runtime: preexec_fn is unsafe when the parent has threads (the hub service does).

One child serves a whole publish, so its start (Python, numpy, ONNX Runtime: a few tenths of a
second) is paid once, not per evaluation. Protocol: one JSON job per line on the child's stdin,
one JSON reply per line on its stdout; arrays travel as .npz files in the publish workdir (the eval
inputs are written once, each job's outputs to a file of their own), never through the pipes.
The child's stderr goes to a log file there, so a chatty runtime cannot fill a pipe and stall.

Every failure becomes a one-line ConversionError naming the model and what happened. On a timeout,
an out-of-memory error, a crash and when the runner closes, the child's whole process group is
killed and reaped: no child outlives the publish.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgehub.agent.sandbox import child_env, claim_stdout, kill_group, limit_address_space, signal_name
from edgehub.converters.errors import ConversionError
from edgehub.hub.publish.evaluate import EvalSpec, eval_spec, run_spec

ENV_TIMEOUT = "EDGEHUB_EVAL_TIMEOUT_S"
ENV_MEMORY = "EDGEHUB_EVAL_MEMORY_MB"
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_MEMORY_MB = 8192  # virtual memory: a batch of 256 through a large CNN needs a few GB

# Tests replace this to run a child that misbehaves on purpose.
CHILD_COMMAND: list[str] = [sys.executable, "-m", "edgehub.hub.publish.eval_child"]

_MEMORY_TEXT = re.compile(r"MemoryError|bad_alloc|Failed to allocate|Cannot allocate memory|out of memory|ENOMEM",
                          re.IGNORECASE)
_MAX_ERROR_CHARS = 400


def _env_number(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number") from None


@dataclass(frozen=True)
class EvalLimits:
    """Per evaluation: wall-clock seconds; for the child: its address-space limit in MB."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB

    @classmethod
    def resolve(cls, timeout_s: float | None = None, memory_mb: int | None = None) -> EvalLimits:
        """The values given, else $EDGEHUB_EVAL_TIMEOUT_S / $EDGEHUB_EVAL_MEMORY_MB, else defaults."""
        timeout = timeout_s if timeout_s is not None else _env_number(ENV_TIMEOUT, DEFAULT_TIMEOUT_S)
        memory = memory_mb if memory_mb is not None else _env_number(ENV_MEMORY, DEFAULT_MEMORY_MB)
        if not timeout > 0:
            raise ValueError(f"the evaluation timeout must be more than 0 s, got {timeout:g} ({ENV_TIMEOUT})")
        if not memory > 0:
            raise ValueError(f"the evaluation memory limit must be more than 0 MB, got {memory:g} ({ENV_MEMORY})")
        return cls(float(timeout), int(memory))

    @property
    def effective_memory_mb(self) -> int:
        """The limit the child runs under: never below what the runtime itself needs to start."""
        from edgehub.agent.benchmark import memory_floor_mb

        return max(self.memory_mb, memory_floor_mb(0))


class EvalRunner:
    """Runs a publish's evaluations in one child process; a context manager that ends the child."""

    def __init__(self, workdir: Path, limits: EvalLimits, model: str):
        # Absolute: the job's paths must mean the same in the child whatever the caller's cwd.
        self.workdir, self.limits, self.model = Path(workdir).absolute(), limits, model
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self._inputs: Path | None = None
        self._names: list[str] = []
        self._jobs = 0
        self._metric: str | None = None
        self._targets: Path | None = None
        self._target_names: list[str] = []
        self.metric_value: float | None = None  # the task metric of the last full evaluation

    def __enter__(self) -> EvalRunner:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def log_path(self) -> Path:
        return self.workdir / "eval-child.log"

    def start(self) -> None:
        """Start the child unless it runs; it imports its runtime while the caller goes on."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._kill()
        self.workdir.mkdir(parents=True, exist_ok=True)
        limit = self.limits.effective_memory_mb * 1024 * 1024
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen([*CHILD_COMMAND, str(limit)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=log, env=child_env(), start_new_session=True)
        self._buffer = b""

    def set_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        """The eval inputs every later evaluation runs on, written once for the child to read."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "eval-inputs.npz"
        # Positional keys: input names need not be valid file names inside the archive.
        np.savez(path, **{f"i{k}": array for k, array in enumerate(inputs.values())})
        self._inputs, self._names = path, list(inputs)

    def set_metric(self, metric: str, targets: dict[str, np.ndarray]) -> None:
        """A task metric ('package.module:function') the child computes after each full evaluation:
        function(outputs: list of arrays, data: dict of the eval set's target arrays) -> float,
        higher is better. It is the publisher's code, so it runs where the models do."""
        path = self.workdir / "eval-targets.npz"
        np.savez(path, **{f"t{k}": array for k, array in enumerate(targets.values())})
        self._metric, self._targets, self._target_names = metric, path, list(targets)

    def evaluate(self, artifact, label: str, head: int | None = None) -> list[np.ndarray] | None:
        """All outputs of the artifact over the eval inputs (the first `head` samples if given), or
        None where the hub cannot run its format."""
        spec = eval_spec(artifact)
        return None if spec is None else self.run(Path(artifact.path), spec, label, head)

    def run(self, path: Path, spec: EvalSpec, label: str, head: int | None = None) -> list[np.ndarray]:
        if self._inputs is None:
            raise RuntimeError("EvalRunner.set_inputs must come before the first evaluation")
        what = f"{self.model}: {label} ({Path(path).name})"
        self._jobs += 1
        out = self.workdir / f"eval-out-{self._jobs}.npz"
        job = {"model": str(Path(path).absolute()), "runtime": spec.runtime, "batch_size": spec.batch_size,
               "layout": spec.layout, "simulate_qdq": spec.simulate_qdq, "inputs": str(self._inputs),
               "names": self._names, "head": head, "output": str(out)}
        if self._metric and head is None:
            job.update(metric=self._metric, targets=str(self._targets), target_names=self._target_names)
        self.start()
        try:
            reply = self._exchange(job, what)
            if not reply.get("ok"):
                raise self._failed(reply, what)
            self.metric_value = reply.get("metric")
            with np.load(out, allow_pickle=False) as npz:
                return [npz[f"o{i}"] for i in range(int(reply["count"]))]
        finally:
            out.unlink(missing_ok=True)

    def close(self) -> None:
        """End the child now: it holds nothing worth waiting for (outputs are read as they come)."""
        self._kill()

    # ---- talking to the child ----------------------------------------------------------------

    def _exchange(self, job: dict, what: str) -> dict:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(job).encode() + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, ConnectionResetError):
            raise self._died(what) from None
        line = self._read_line(time.monotonic() + self.limits.timeout_s)
        if line is None:
            self._kill()
            raise ConversionError(f"{what}: evaluation timed out after {self.limits.timeout_s:g} s "
                                  f"(raise the limit with --eval-timeout or {ENV_TIMEOUT})")
        if not line:
            raise self._died(what)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            self._kill()
            raise ConversionError(f"{what}: the evaluation child wrote an unreadable reply: {line[:100]!r}") from None

    def _read_line(self, deadline: float) -> bytes | None:
        """The child's next reply line; b"" when it closed its stdout (it died); None at the deadline."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        poller = select.poll()  # not select.select: a busy hub service may hold fds past FD_SETSIZE
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return b""
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _memory_error(self, what: str, detail: str = "") -> ConversionError:
        self._kill()  # after an allocation failure the child's heap is not to be trusted
        extra = f"; {detail}" if detail else ""
        return ConversionError(f"{what}: ran out of memory (limit {self.limits.effective_memory_mb} MB{extra}; "
                               f"raise it with --eval-memory or {ENV_MEMORY})")

    def _failed(self, reply: dict, what: str) -> ConversionError:
        if reply.get("kind") == "memory":
            return self._memory_error(what)
        error = str(reply.get("error", "unknown error"))[:_MAX_ERROR_CHARS]
        return ConversionError(f"{what}: evaluation failed: {error}")

    def _died(self, what: str) -> ConversionError:
        """The error for a child that ended without replying (crash, OOM kill, exit)."""
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # closed its stdout yet runs on: stop it
            self._kill()
            return ConversionError(f"{what}: the evaluation child stopped answering")
        log = self._log_tail()
        self._kill()
        if code < 0:
            name = signal_name(-code)
            # Nobody but the kernel's OOM killer sends SIGKILL here (our timeout reports first);
            # SIGABRT after an uncaught std::bad_alloc is an allocation failure too.
            if -code == signal.SIGKILL or _MEMORY_TEXT.search(log):
                return self._memory_error(what, f"killed by {name}")
            return ConversionError(f"{what}: the runtime crashed (signal {-code}, {name})")
        if _MEMORY_TEXT.search(log):
            return self._memory_error(what)
        last = next((x.strip() for x in reversed(log.splitlines()) if x.strip()), "no message")
        return ConversionError(f"{what}: the evaluation child exited with status {code}: {last[:200]}")

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 4000))
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _kill(self) -> None:
        """Kill the child and its process group (it leads its own), reap it, close its pipes."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            kill_group(proc)
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with suppress(OSError):  # BrokenPipeError flushing to a dead child: nothing to save
                    pipe.close()


# ---- the child --------------------------------------------------------------------------------

def _load_inputs(job: dict, cache: dict) -> dict[str, np.ndarray]:
    path = job["inputs"]
    if path not in cache:
        for key in [k for k in cache if isinstance(k, str)]:
            del cache[key]
        with np.load(path, allow_pickle=False) as npz:
            cache[path] = {name: npz[f"i{k}"] for k, name in enumerate(job["names"])}
    inputs = cache[path]
    head = job.get("head")
    return inputs if head is None else {name: array[:head] for name, array in inputs.items()}


def load_metric(reference: str):
    """The function a 'package.module:function' reference names (imported here, in the child)."""
    import importlib

    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--metric {reference!r}: expected 'package.module:function'")
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ValueError(f"--metric {reference!r}: cannot import {module_name} ({exc})") from None
    except AttributeError:
        raise ValueError(f"--metric {reference!r}: {module_name} has no {attr}") from None
    if not callable(function):
        raise ValueError(f"--metric {reference!r}: {attr} is not a function")
    return function


def _task_metric(job: dict, outputs: list[np.ndarray], cache: dict) -> float:
    key = ("metric", job["metric"], job["targets"])
    if key not in cache:
        with np.load(job["targets"], allow_pickle=False) as npz:
            cache[key] = (load_metric(job["metric"]), {n: npz[f"t{k}"] for k, n in enumerate(job["target_names"])})
    function, targets = cache[key]
    try:
        value = float(function([np.asarray(o) for o in outputs], dict(targets)))
    except Exception as exc:  # the publisher's code: its failure is this job's reply
        raise ValueError(f"--metric {job['metric']} failed: {type(exc).__name__}: {exc}") from None
    if not np.isfinite(value):
        raise ValueError(f"--metric {job['metric']} returned {value}, not a finite number")
    return value


def _handle(job: dict, cache: dict) -> dict:
    try:
        spec = EvalSpec(job["runtime"], int(job["batch_size"]), job.get("layout"), bool(job.get("simulate_qdq")))
        outputs = run_spec(Path(job["model"]), spec, _load_inputs(job, cache))
        np.savez(job["output"], **{f"o{i}": np.asarray(o) for i, o in enumerate(outputs)})
        reply: dict = {"ok": True, "count": len(outputs)}
        if job.get("metric"):
            reply["metric"] = _task_metric(job, outputs, cache)
        return reply
    except MemoryError as exc:
        return {"ok": False, "kind": "memory", "error": f"MemoryError: {exc}"}
    except Exception as exc:  # the model's or runtime's failure is this job's reply, not the child's end
        text = str(exc) if isinstance(exc, ConversionError) else f"{type(exc).__name__}: {exc}"
        text = " ".join(text.split())[:_MAX_ERROR_CHARS] or type(exc).__name__
        return {"ok": False, "kind": "memory" if _MEMORY_TEXT.search(text) else "error", "error": text}


def main() -> int:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if limit > 0:  # before any runtime is imported, so that all of its allocations count
        limit_address_space(limit)
    replies = claim_stdout()
    try:
        import onnxruntime  # noqa: F401  (now, while the parent prepares the first job)
    except ImportError as exc:  # the first ONNX job reports it
        print(f"eval_child: {exc}", file=sys.stderr)
    cache: dict = {}
    for line in sys.stdin.buffer:
        replies.write(json.dumps(_handle(json.loads(line), cache)) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
