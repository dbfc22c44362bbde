"""A local Mosquitto managed by the hub: the process (start, adopt, supervise, reload, stop).

Its files (config, accounts, state) are `edgehub.hub.broker.files`; the accounts and rights are
Mosquitto's dynamic-security plugin (`edgehub.hub.broker.dynsec`); finding and signalling a running broker from another
process is `edgehub.hub.broker.process`; shared names and helpers are
`edgehub.hub.broker.tools`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from edgehub.hub.broker import logs
from edgehub.hub.broker.files import BrokerFiles
from edgehub.hub.broker.process import (
    is_our_broker,
    process_gone,
    read_pid,
    running_broker_pid,
    signal_reload,
)
from edgehub.hub.broker.settings import BrokerSettings, TLSFiles
from edgehub.hub.broker.tools import (
    HUB_USER,
    MAX_LOG_BYTES,
    START_LOCK_NAME,
    BrokerError,
    accepts,
    find_mosquitto,
    free_port,
    local_host,
    locked,
    port_in_use,
    validate_host,
    write_private,
)

log = logging.getLogger(__name__)



class ManagedBroker:
    """A Mosquitto child process with the generated config, for one fleet.

    >>> with ManagedBroker(home / "broker", "default") as broker:
    ...     broker.files.set_password("dev-1", "...")   # effective at once
    ...     print(broker.url)

    The port is remembered in state.json, so a restart keeps it. The broker runs in its own
    session (a Ctrl-C of the hub does not kill it); a broker left running by a hub that died
    is found through the pid file and adopted by the next `start()`.
    """

    def __init__(self, directory: Path | str, fleet: str, port: int | None = None,
                 host: str = "127.0.0.1", *, tls: TLSFiles | None = None,
                 settings: BrokerSettings | None = None, hub_user: str = HUB_USER,
                 extra_hub_users: tuple[str, ...] = (), share_group: str | None = None,
                 start_timeout: float = 10.0, mosquitto: str | None = None):
        self.files = BrokerFiles(directory, fleet, hub_user=hub_user, settings=settings, tls=tls,
                                 extra_hub_users=extra_hub_users, share_group=share_group)
        self.host = validate_host(host)
        if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
            raise ValueError(f"invalid port {port!r}")
        self._requested_port = port
        self._port: int | None = port
        self.start_timeout = start_timeout
        self._mosquitto = mosquitto
        self._proc: subprocess.Popen | None = None
        self._adopted_pid: int | None = None
        self.restarts = 0

    @property
    def directory(self) -> Path:
        return self.files.directory

    @property
    def fleet(self) -> str:
        return self.files.fleet

    @property
    def port(self) -> int | None:
        if self._port is None:
            stored = self.files.read_state().get("port")
            if isinstance(stored, int):
                return stored
        return self._port

    @property
    def url(self) -> str:
        if self.port is None:
            raise BrokerError("the broker has no port yet: start() it first")
        scheme = "mqtts" if self.files.tls is not None else "mqtt"
        host = local_host(self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def local_port(self) -> int | None:
        """With TLS: the plain loopback listener's port, for the hub on this machine."""
        if self.files.tls is None:
            return None
        stored = self.files.read_state().get("local_port")
        return stored if isinstance(stored, int) else None

    @property
    def local_url(self) -> str:
        """Where a client on this machine (the hub) connects: the loopback listener with TLS,
        else the same as `url`."""
        if self.local_port is None:
            return self.url
        return f"mqtt://127.0.0.1:{self.local_port}"

    def _choose_local_port(self) -> int | None:
        if self.files.tls is None:
            return None
        stored = self.local_port
        if stored is not None and not port_in_use("127.0.0.1", stored):
            return stored
        return free_port("127.0.0.1")

    @property
    def pid(self) -> int | None:
        own = self._own_pid()
        if own is not None:
            return own
        # Started from this folder by another process or object (say around a bulk enrolment) on the
        # port this one would use: adopt it.
        found = running_broker_pid(self.directory)
        if found is not None and self._requested_port in (None, self.files.read_state().get("port")):
            self._reap()
            self._proc, self._adopted_pid = None, found
            return found
        return None

    def _own_pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        if self._adopted_pid is not None and is_our_broker(self._adopted_pid, self.files.conf_path):
            return self._adopted_pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _choose_port(self) -> tuple[int, bool]:
        """(port, picked_now): the requested port, the remembered one, or a new free one."""
        if self._requested_port is not None:
            return self._requested_port, False
        stored = self.files.read_state().get("port")
        if isinstance(stored, int) and 0 < stored < 65536:
            return stored, False
        return free_port(local_host(self.host)), True

    def start(self) -> ManagedBroker:
        """Start the broker (or adopt the one already running from this directory)."""
        if self._own_pid() is not None:
            return self
        self.files.ensure_directory()
        with locked(self.directory, START_LOCK_NAME):  # two hubs starting at once: one broker
            return self._start_locked()

    def _start_locked(self) -> ManagedBroker:
        existing = running_broker_pid(self.directory)
        if existing is not None and not self._config_changed():
            return self._adopt(existing)
        if existing is not None:
            # E.g. TLS was switched on (listeners are not reloaded by SIGHUP), or the hub role changed
            # (the accounts plugin reads it only at start): restart. Sessions and queues are saved.
            log.warning("broker: the config changed since mosquitto pid %s started; restarting it", existing)
            self.stop()
        mosquitto = self._mosquitto or find_mosquitto()
        port, picked_now = self._choose_port()
        attempts = 3 if picked_now else 1
        for attempt in range(attempts):
            if attempt:
                port = free_port(local_host(self.host))
            local_port = self._choose_local_port()
            self.files.write(port, self.host, local_port=local_port)
            if port_in_use(self.host, port):
                if attempt + 1 < attempts:
                    continue
                raise BrokerError(
                    f"port {port} on {self.host} is already in use by another process; stop it, "
                    f"or give the broker another port (the devices are told {self.host}:{port})")
            self._port = port
            self.files.write_state(port=port, host=self.host, local_port=local_port)
            try:
                self._spawn(mosquitto, port)
            except _PortRace:
                if attempt + 1 < attempts:
                    continue
                raise BrokerError(f"mosquitto could not listen on {self.host}:{port}: "
                                  f"{self._failure_detail()}") from None
            return self
        raise BrokerError("could not find a free port for the broker")  # pragma: no cover

    def _config_changed(self) -> bool:
        """Whether a running broker's config differs from what this object would write now."""
        state = self.files.read_state()
        port, local = state.get("port"), state.get("local_port")
        if not self.files.config_is_managed() or not isinstance(port, int):
            return False
        if self._requested_port is not None and self._requested_port != port:
            return False  # _adopt() reports the clash
        if (self.files.tls is None) != (local is None) or not self.files.base_is_current():
            return True
        try:
            current = self.files.conf_path.read_text()
        except OSError:
            return False
        return current != self.files.render_config(port, self.host, local)

    def rotate_log(self, max_bytes: int = MAX_LOG_BYTES) -> bool:
        """Move mosquitto.log to mosquitto.log.1 once it is over `max_bytes` (the broker, if
        running, reopens its log on SIGHUP). Autosave alone logs a line every couple of seconds."""
        if not logs.rotate(self.files.log_path, max_bytes):
            return False
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
        return True

    def _spawn(self, mosquitto: str, port: int) -> None:
        self.rotate_log()
        logs.rotate(self.files.out_path)
        offsets = {path: (path.stat().st_size if path.exists() else 0)
                   for path in (self.files.log_path, self.files.out_path)}
        with open(self.files.out_path, "ab") as out:
            self._proc = subprocess.Popen(
                [mosquitto, "-c", str(self.files.conf_path)],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                close_fds=True, start_new_session=True,
            )
        self._adopted_pid = None
        write_private(self.files.pid_path, f"{self._proc.pid}\n")
        deadline = time.monotonic() + self.start_timeout
        connect_host = local_host(self.host)
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                with contextlib.suppress(FileNotFoundError):
                    self.files.pid_path.unlink()
                if any(logs.written_since(path, offset, "Address already in use")
                       for path, offset in offsets.items()):
                    raise _PortRace()
                raise BrokerError(f"mosquitto exited with code {code} while starting: {self._failure_detail()}")
            local = self.local_port  # with TLS: the hub's loopback listener opens a moment later
            if accepts(connect_host, port) and (local is None or accepts("127.0.0.1", local)):
                # The listeners answer, and they are ours (the process is still alive).
                if self._proc.poll() is None:
                    break
                continue
            if time.monotonic() > deadline:
                self._kill_child()
                raise BrokerError(f"mosquitto did not accept connections on {self.host}:{port} within "
                                  f"{self.start_timeout:.0f} s: {self._failure_detail()}")
            time.sleep(0.02)
        log.info("broker: mosquitto pid %s listening on %s", self._proc.pid, self.url)

    def _adopt(self, pid: int) -> ManagedBroker:
        stored = self.files.read_state().get("port")
        if self._requested_port is not None and stored not in (None, self._requested_port):
            raise BrokerError(f"a broker from {self.directory} already runs (pid {pid}) on port {stored}; "
                              f"stop it before asking for port {self._requested_port}")
        if isinstance(stored, int):
            self._port = stored
        self._adopted_pid = pid
        self._proc = None
        log.info("broker: adopted running mosquitto pid %s on %s", pid, self.url)
        return self

    def log_tail(self, lines: int = 20) -> str:
        return logs.log_tail(self.files.log_path, self.files.out_path, lines)

    def _failure_detail(self) -> str:
        last = self.log_tail(15)
        return ("log tail:\n" + last) if last else f"nothing in {self.files.log_path}"

    def _kill_child(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
        self._proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Mosquitto saves its database), wait; SIGKILL if it does not exit in `timeout`.

        Also stops a broker of this directory that another process started (found by its pid file).
        """
        pid = self.pid or running_broker_pid(self.directory)
        if pid is None:
            self._reap()
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not self._wait_gone(pid, timeout):
            log.warning("broker: mosquitto pid %s ignored SIGTERM for %.0f s; killing it", pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 5.0)
        self._reap()
        if read_pid(self.files.pid_path) == pid:
            with contextlib.suppress(FileNotFoundError):
                self.files.pid_path.unlink()
        self._adopted_pid = None
        log.info("broker: mosquitto pid %s stopped", pid)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:  # (not an older child of ours)
                try:
                    self._proc.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if process_gone(pid):
                return True
            time.sleep(0.02)
        return False

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def reload(self, timeout: float = 5.0) -> None:
        """SIGHUP: re-read the config and reopen the log, keeping connections. (Account changes
        need no reload: they reach a running broker through its control topic.)

        Returns once the broker logged the reload (or after `timeout`).
        """
        pid = self.pid
        if pid is None:
            raise BrokerError("the broker is not running")
        signal_reload(self.directory, pid, timeout)

    @contextlib.contextmanager
    def edit_stopped(self):
        """Stop the broker if it runs, yield for edits of its files (e.g. `files.add_devices` for
        thousands of devices), then start it again. Sessions, queues and retained messages are
        saved by the stop; clients reconnect. Another process's supervisor cannot start it in
        between: the start lock is held throughout."""
        self.files.ensure_directory()
        with locked(self.directory, START_LOCK_NAME):
            was_running = running_broker_pid(self.directory) is not None
            if was_running:
                self.stop()
            yield self.files
            if was_running:
                self._start_locked()

    def ensure_running(self) -> bool:
        """Supervision: start the broker again (same port) if its process died. True if it did.

        A broker another process started meanwhile from this folder (say `fleet simulate`, which
        restarts it around a bulk enrolment) is adopted instead: False. Cheap enough to call every
        few seconds; also keeps the log from growing without bound.
        """
        if self.running:
            self.rotate_log()
            return False
        code = self._proc.poll() if self._proc is not None else None
        self._reap()
        self.start()
        if self._proc is None:  # adopted
            return False
        log.warning("broker: mosquitto had stopped (exit code %s); started it again. %s",
                    code, self.log_tail(5).replace("\n", " | "))
        self.restarts += 1
        return True

    # account convenience (effective at once)
    def __enter__(self) -> ManagedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ManagedBroker({str(self.directory)!r}, fleet={self.fleet!r}, port={self.port}, pid={self.pid})"


class _PortRace(Exception):
    """The port was taken between choosing it and mosquitto binding it."""


__all__ = ["ManagedBroker", "find_mosquitto"]
