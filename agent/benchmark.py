"""Benchmark one model variant in a child process (the method is in the README, "Running a fleet").

The child (edgehub.agent.bench_child) does the measuring; this side enforces the limits and turns
every way the child can fail (crash, hang, out of memory, garbage output) into a BenchResult, so a
bad model can never take the agent down and `run_benchmark` never raises for one.

Memory limit: RLIMIT_AS (virtual memory), set by the child on itself before it imports the
runtime. Not in Popen's preexec_fn: Python documents preexec_fn as unsafe when the parent has
threads, and the agent runs paho-mqtt's network thread. Virtual size is more than RSS: measured
with Python 3.11 + numpy + ORT 1.32, the interpreter with ORT imported is ~185 MB, and each
intra-op thread reserves an 8 MB stack plus, by default, its own 64 MB glibc malloc arena
(8 threads: 770 MB virtual for a 62 MB RSS). The child therefore runs with MALLOC_ARENA_MAX=2
(8 threads: 320 MB), and limits below `memory_floor_mb` are raised to it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from edgehub.agent.sandbox import child_env, kill_group, signal_name
from edgehub.protocol.messages import BenchmarkReport, BenchmarkSettings, Measurement
from edgehub.protocol.runtime_settings import RuntimeSettings

# Tests monkeypatch this to simulate children that crash or misbehave.
CHILD_COMMAND: list[str] = [sys.executable, "-m", "edgehub.agent.bench_child"]

MEMORY_FLOOR_BASE_MB = 320  # interpreter + numpy + ORT imported, with headroom
MEMORY_FLOOR_PER_THREAD_MB = 16  # thread stack (8 MB) + share of the malloc arenas
_MAX_ERROR_CHARS = 600
_KILL_WAIT_S = 10.0
_MEMORY_TEXT = re.compile(
    r"MemoryError|bad_alloc|Failed to allocate|Cannot allocate memory|out of memory|ENOMEM",
    re.IGNORECASE,
)


class BenchJob(BaseModel):
    """What the parent sends the child on stdin."""

    model_config = ConfigDict(extra="forbid")

    model_path: str
    format: str
    references_path: str | None = None
    settings: BenchmarkSettings
    memory_limit_bytes: int | None = None  # the RLIMIT_AS the child applies (after the floor)
    runtime_settings: RuntimeSettings | None = None  # None: the runtime's defaults


class BenchResult(Measurement):
    """The measurement fields of a BenchmarkReport (what the child writes on stdout)."""


def memory_floor_mb(threads: int) -> int:
    """The smallest RLIMIT_AS under which the runtime itself starts with `threads` threads."""
    count = threads if threads > 0 else (os.cpu_count() or 1)
    return MEMORY_FLOOR_BASE_MB + MEMORY_FLOOR_PER_THREAD_MB * count


def effective_memory_limit_mb(settings: BenchmarkSettings) -> int | None:
    if settings.memory_limit_mb is None:
        return None
    return max(settings.memory_limit_mb, memory_floor_mb(settings.threads))


def _failure(error: str) -> BenchResult:
    return BenchResult(ok=False, error=error[:_MAX_ERROR_CHARS])


def _last_line(text: bytes) -> str:
    lines = [line.strip() for line in text.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _memory_error(settings: BenchmarkSettings, detail: str) -> str:
    limit = effective_memory_limit_mb(settings)
    if limit is None:
        return f"ran out of memory ({detail})" if detail else "ran out of memory"
    raised = (
        f", raised from {settings.memory_limit_mb} MB to fit the runtime itself"
        if limit != settings.memory_limit_mb else ""
    )
    text = f"exceeded the memory limit of {limit} MB{raised}"
    return f"{text} ({detail})" if detail else text


def _interpret(returncode: int, out: bytes, err: bytes, settings: BenchmarkSettings) -> BenchResult:
    stderr_tail = _last_line(err)
    if returncode < 0:
        name = signal_name(-returncode)
        if name == "SIGKILL" or _MEMORY_TEXT.search(err.decode(errors="replace")):
            # SIGKILL from nobody but us (we report timeouts before getting here) is the kernel's
            # OOM killer; SIGABRT after an uncaught std::bad_alloc is an allocation failure.
            return _failure(_memory_error(settings, f"killed by {name}"))
        return _failure(f"crashed with {name}" + (f" ({stderr_tail})" if stderr_tail else ""))
    text = out.decode(errors="replace").strip()
    if not text:
        if _MEMORY_TEXT.search(err.decode(errors="replace")):
            return _failure(_memory_error(settings, stderr_tail))
        return _failure(f"benchmark child exited with status {returncode} and no result: {stderr_tail}")
    try:
        result = BenchResult.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        return _failure(f"benchmark child wrote an unparsable result ({exc.__class__.__name__}): {text[:200]!r}")
    if not result.ok and result.error and _MEMORY_TEXT.search(result.error):
        result.error = _memory_error(settings, result.error)[:_MAX_ERROR_CHARS]
    return result


def run_benchmark(
    model_path: Path, format: str, references_path: Path | None, settings: BenchmarkSettings,
    runtime_settings: RuntimeSettings | None = None,
) -> BenchResult:
    """Benchmark `model_path` in a child process within settings' time and memory limits, run
    with `runtime_settings` (threads, provider, ...; None: the runtime's defaults)."""
    limit_mb = effective_memory_limit_mb(settings)
    job = BenchJob(
        model_path=str(model_path), format=format,
        references_path=None if references_path is None else str(references_path),
        settings=settings, memory_limit_bytes=None if limit_mb is None else limit_mb * 1024 * 1024,
        runtime_settings=runtime_settings,
    )
    try:
        proc = subprocess.Popen(
            list(CHILD_COMMAND), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=child_env(), start_new_session=True,
        )
    except OSError as exc:
        return _failure(f"cannot start the benchmark child: {exc}")
    try:
        out, err = proc.communicate(job.model_dump_json().encode(), timeout=settings.timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        try:
            proc.communicate(timeout=_KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.wait()  # a descendant left the group and holds our pipes: just reap the child
        return _failure(f"timed out after {settings.timeout_s:g}s")
    finally:
        if proc.poll() is None:  # interrupted (e.g. KeyboardInterrupt): leave no child behind
            kill_group(proc)
            proc.wait()
    return _interpret(proc.returncode, out, err, settings)


def to_report(
    result: BenchResult, event_id: str, device_id: str, generation: int, variant_id: str
) -> BenchmarkReport:
    return BenchmarkReport(
        event_id=event_id, device_id=device_id, generation=generation, variant_id=variant_id,
        **result.model_dump(),
    )
