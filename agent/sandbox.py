"""A model that may hang, crash or eat memory runs in a child process: the agent's benchmark child
and the hub's evaluation child share how such a child is started, limited, read and killed.

The child limits its own address space (RLIMIT_AS) before it imports any runtime, so every
allocation of the runtime counts; not in Popen's preexec_fn, which Python documents as unsafe
when the parent has threads. MALLOC_ARENA_MAX keeps glibc's per-thread arenas from inflating the
address space a runtime with many threads reserves. The child leads its own process group, so a
kill takes anything it started too.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
from typing import TextIO


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ORT_DISABLE_TELEMETRY"] = "1"
    env["MALLOC_ARENA_MAX"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def kill_group(proc: subprocess.Popen) -> None:
    """Kill the child and anything it started (it leads its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # the group is gone (or not ours): make sure of the child itself


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def limit_address_space(limit_bytes: int) -> None:
    """In the child, before any runtime is imported."""
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def claim_stdout() -> TextIO:
    """In the child: keep the real stdout for the replies; anything else written to fd 1 (C
    libraries too) goes to stderr, so the parent reads nothing but its protocol."""
    sys.stdout.flush()
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(reply_fd, "w")
