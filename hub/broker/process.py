"""Finding and signalling a broker that runs from a broker directory (from any process).

`edgehub fleet enroll` and `revoke` run in their own processes: they find the hub's broker
through its pid file (checking the pid really is that mosquitto, not a reused one), to change its
accounts over the control topic while it runs, or in its accounts file while it does not.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from edgehub.hub.broker.tools import CONF_NAME, LOG_NAME, PID_NAME, RELOAD_MARK

log = logging.getLogger("edgehub.hub.broker")

def cmdline(pid: int) -> list[str]:
    if not Path("/proc/self").exists():  # macOS and friends: ask ps
        try:
            out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True,
                                 text=True, timeout=5, check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return []
        return out.split() if out else []
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def is_our_broker(pid: int, conf_path: Path) -> bool:
    """Whether `pid` is a live mosquitto started with `conf_path` (not a reused pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    argv = cmdline(pid)
    if not argv:  # gone, or a zombie
        return False
    return Path(argv[0]).name.startswith("mosquitto") and str(conf_path) in " ".join(argv)


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (gone, or a zombie): not merely "on its way out", which still
    holds its sockets and files."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    return state in ("Z", "X")


def read_pid(pid_path: Path) -> int | None:
    try:
        return int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None


def running_broker_pid(directory: Path | str) -> int | None:
    """The pid of the live broker managed in `directory`, or None."""
    directory = Path(directory).expanduser().resolve()
    pid = read_pid(directory / PID_NAME)
    if pid is not None and is_our_broker(pid, directory / CONF_NAME):
        return pid
    return None


def _count_reloads(log_path: Path) -> int:
    try:
        return log_path.read_text(errors="replace").count(RELOAD_MARK)
    except OSError:
        return 0


def signal_reload(directory: Path, pid: int, timeout: float) -> None:
    log_path = directory / LOG_NAME
    before = _count_reloads(log_path)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _count_reloads(log_path) > before:
            return
        time.sleep(0.02)
    log.warning("broker: sent SIGHUP to %s but saw no reload in the log within %.1f s", pid, timeout)


def reload_running_broker(directory: Path | str, timeout: float = 5.0) -> bool:
    """Make the broker managed in `directory` re-read its config and reopen its log (SIGHUP).

    For other processes (e.g. `edgehub fleet enroll`). False if no broker runs there.
    Returns once the broker logged the reload (or after `timeout`).
    """
    directory = Path(directory).expanduser().resolve()
    pid = running_broker_pid(directory)
    if pid is None:
        return False
    try:
        signal_reload(directory, pid, timeout)
    except ProcessLookupError:
        return False
    return True


__all__ = ["cmdline", "is_our_broker", "process_gone", "read_pid", "reload_running_broker",
           "running_broker_pid", "signal_reload"]
