"""A local Mosquitto managed by the hub: config, ACL and password files, and the process.

Everything lives in one directory (the hub home's ``broker/`` folder)::

    mosquitto.conf   generated config (rewritten while it keeps the "managed by edgehub" header)
    acl              generated ACL: the hub user reads and writes the fleet's topics; a device
                     (pattern %u) writes only its own state/events, reads only its own desired
                     and the hub state
    passwd           password file, edited only through the real ``mosquitto_passwd`` tool
    state.json       {"port": ..., "host": ...}: a restart keeps the port the devices know
    mosquitto.pid    pid of the running broker, so another process can send SIGHUP
    mosquitto.db     persistence (retained messages, persistent sessions, queued QoS 1)
    mosquitto.log    the broker's log (no passwords are ever written anywhere but passwd, hashed)

Passwords are handed to ``mosquitto_passwd`` on its stdin, never on its command line, so they
do not show up in ``ps``; the file is edited on a copy and moved into place atomically, under a
lock, so a concurrent reload never sees half a file and two editors never lose an update.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgehub.agent.messages import Topics

log = logging.getLogger(__name__)

HUB_USER = "edgehub-hub"
USER_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
_USER_RE = re.compile(USER_PATTERN)
_HOST_RE = re.compile(r"[A-Za-z0-9.:_-]{1,253}")
MAX_PASSWORD_CHARS = 512
MAX_LOG_BYTES = 10 * 1024 * 1024  # mosquitto.log is moved to mosquitto.log.1 past this size
# Where Mosquitto lives when it is not on PATH (Debian puts the broker in /usr/sbin).
TOOL_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin", "/opt/homebrew/sbin")
MANAGED_HEADER = "# managed by edgehub"

CONF_NAME = "mosquitto.conf"
ACL_NAME = "acl"
PASSWD_NAME = "passwd"
STATE_NAME = "state.json"
PID_NAME = "mosquitto.pid"
LOG_NAME = "mosquitto.log"
OUT_NAME = "mosquitto.out"
DB_NAME = "mosquitto.db"
HUB_SECRET_NAME = "hub.secret"
_LOCK_NAME = ".lock"
_START_LOCK_NAME = ".start.lock"
_RELOAD_MARK = "Reloading config"


class BrokerError(RuntimeError):
    """The broker could not be set up, started, stopped or reloaded; the message says why."""


class MosquittoNotFound(BrokerError):
    pass


# ---- small helpers --------------------------------------------------------------------------

def validate_username(user: str) -> str:
    """Return `user` if it is a safe MQTT user name (device id), else raise ValueError.

    ^[a-z0-9][a-z0-9._-]{0,63}$, matched in full (a trailing newline does not pass), so no
    '/', '+', '#', whitespace or ':' can reach the ACL (%u) or the password file.
    """
    if not isinstance(user, str) or not _USER_RE.fullmatch(user):
        raise ValueError(f"invalid MQTT user name {user!r}: must match ^{USER_PATTERN}$")
    return user


def _validate_password(password: str) -> str:
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty string")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"password is longer than {MAX_PASSWORD_CHARS} characters")
    if any(c in password for c in "\n\r\0"):
        raise ValueError("password must not contain newlines or NUL")
    return password


def _validate_host(host: str) -> str:
    if not isinstance(host, str) or not _HOST_RE.fullmatch(host):
        raise ValueError(f"invalid listener host {host!r}")
    return host


def _conf_path_value(path: Path) -> str:
    """An absolute path that can sit on a mosquitto config line (spaces are fine, newlines not)."""
    text = str(Path(path).resolve())
    if any(c in text for c in "\n\r\0"):
        raise ValueError(f"path {text!r} cannot be used in a mosquitto config")
    return text


def _local_host(host: str) -> str:
    """Where to connect to reach a listener bound on `host`."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (bind to port 0 and let the kernel pick)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto does
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _find_tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for folder in TOOL_DIRS:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise MosquittoNotFound(
        f"{name} not found on PATH or in /usr/sbin; install Mosquitto "
        "(Debian/Ubuntu: `apt-get install mosquitto mosquitto-clients`; macOS: `brew install mosquitto`) "
        "or give the hub a broker URL"
    )


def find_mosquitto() -> str:
    """Path of the `mosquitto` executable (PATH, then /usr/sbin etc.), or MosquittoNotFound."""
    return _find_tool("mosquitto")


def find_mosquitto_passwd() -> str:
    """Path of `mosquitto_passwd`, or MosquittoNotFound."""
    return _find_tool("mosquitto_passwd")


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return data.splitlines()[-lines:]


@contextlib.contextmanager
def _locked(directory: Path, name: str = _LOCK_NAME):
    """An exclusive lock over the broker directory's files (across processes)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / name, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically with mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---- configuration --------------------------------------------------------------------------

@dataclass(frozen=True)
class TLSFiles:
    """Server certificate and key (PEM) for a TLS listener; `cafile` verifies client certificates
    when `require_certificate` is on (and is what devices are given to verify the broker)."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False
    tls_version: str = "tlsv1.2"  # the minimum version (Mosquitto 2.x)

    def __post_init__(self):
        if self.tls_version not in ("tlsv1.2", "tlsv1.3"):
            raise ValueError(f"tls_version must be tlsv1.2 or tlsv1.3, not {self.tls_version!r}")


@dataclass(frozen=True)
class BrokerSettings:
    """Tunables of the generated mosquitto.conf."""

    # Queued QoS 1 messages per client before Mosquitto drops: sized for the hub, which may be
    # briefly slower than the whole fleet together (drops show in $SYS/broker/publish/messages/dropped).
    max_queued_messages: int = 100_000
    max_inflight_messages: int = 100
    # Sessions of clients that stay away longer than this are dropped (Mosquitto duration syntax).
    persistent_client_expiration: str = "30d"
    # Save the in-memory database every `autosave_interval` seconds, so a kill -9 loses at most a
    # couple of seconds. (With autosave_on_changes the interval counts changes instead; saving on
    # every change rewrites the whole database per message, which does not scale with the queue.)
    autosave_interval: int = 1
    autosave_on_changes: bool = False
    # A body is at most 256 KiB (agent.messages.MAX_BODY_BYTES); leave room for topic and properties.
    max_packet_size: int = 1024 * 1024
    # None: Mosquitto's default (65535). A lower value makes Mosquitto refuse MQTT 3.1.1 clients
    # that ask for a longer keepalive (or none), so it is left alone unless asked for.
    max_keepalive: int | None = None
    # The client id becomes the user name, whatever the client sent: a device cannot disconnect
    # another device or take over its persistent session by connecting with that device's id.
    # (Mosquitto's ACLs cannot tie the client id to the user otherwise.) Each connection of the
    # hub needs its own user name then: see BrokerFiles(extra_hub_users=...).
    use_username_as_clientid: bool = True
    log_types: tuple[str, ...] = ("error", "warning", "notice", "information")

    def __post_init__(self):
        if not re.fullmatch(r"\d+[hdwmy]?", self.persistent_client_expiration):
            raise ValueError(f"bad persistent_client_expiration {self.persistent_client_expiration!r}")
        for name in ("max_queued_messages", "max_inflight_messages", "autosave_interval",
                     "max_packet_size", "max_keepalive"):
            value = getattr(self, name)
            if name == "max_keepalive" and value is None:
                continue
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int")
        allowed = {"debug", "error", "warning", "notice", "information", "subscribe", "unsubscribe",
                   "websockets", "none", "all"}
        for kind in self.log_types:
            if kind not in allowed:
                raise ValueError(f"unknown log_type {kind!r}")


class BrokerFiles:
    """The files of a managed broker inside `directory`: config, ACL, password file, state."""

    def __init__(self, directory: Path | str, fleet: str, *, hub_user: str = HUB_USER,
                 settings: BrokerSettings | None = None, tls: TLSFiles | None = None,
                 extra_hub_users: tuple[str, ...] = ()):
        self.directory = Path(directory).expanduser().resolve()
        self.topics = Topics(fleet)  # validates the fleet name
        self.fleet = fleet
        self.hub_user = validate_username(hub_user)
        # More hub connections (workers): with use_username_as_clientid every connection needs its
        # own user name, else they would keep disconnecting each other.
        self.extra_hub_users = tuple(validate_username(u) for u in extra_hub_users)
        self.settings = settings or BrokerSettings()
        self.tls = tls

    # paths
    @property
    def conf_path(self) -> Path:
        return self.directory / CONF_NAME

    @property
    def acl_path(self) -> Path:
        return self.directory / ACL_NAME

    @property
    def password_path(self) -> Path:
        return self.directory / PASSWD_NAME

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_NAME

    @property
    def pid_path(self) -> Path:
        return self.directory / PID_NAME

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_NAME

    @property
    def out_path(self) -> Path:
        return self.directory / OUT_NAME

    @property
    def db_path(self) -> Path:
        return self.directory / DB_NAME

    def ensure_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.directory, 0o700)

    # rendering
    def render_acl(self) -> str:
        root = self.topics.root
        return "\n".join([
            MANAGED_HEADER,
            f"# fleet {self.fleet}. Devices authenticate with user name == device id == client id.",
            "",
            "# Every device (%u is its user name): its own state and events, its own desired, the hub state.",
            f"pattern write {root}/devices/%u/state",
            f"pattern write {root}/devices/%u/events",
            f"pattern read {root}/devices/%u/desired",
            f"pattern read {root}/hub/state",
            "",
            "# (Mosquitto warns that the hub/state pattern has no %u: it is meant for every device.)",
            "",
            "# The hub: everything in the fleet, and the broker's statistics.",
            *[line for user in (self.hub_user, *self.extra_hub_users)
              for line in (f"user {user}", f"topic readwrite {root}/#", "topic read $SYS/#", "")],
        ])

    def render_config(self, port: int, host: str = "127.0.0.1") -> str:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"invalid port {port!r}")
        _validate_host(host)
        s = self.settings
        lines = [
            MANAGED_HEADER + " (rewritten on start; delete this line to keep your own edits)",
            f"# fleet {self.fleet}",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {_conf_path_value(self.password_path)}",
            f"acl_file {_conf_path_value(self.acl_path)}",
            "",
            f"listener {port} {host}",
            f"use_username_as_clientid {'true' if self.settings.use_username_as_clientid else 'false'}",
        ]
        if self.tls is not None:
            lines += [
                f"cafile {_conf_path_value(self.tls.cafile)}",
                f"certfile {_conf_path_value(self.tls.certfile)}",
                f"keyfile {_conf_path_value(self.tls.keyfile)}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
                f"tls_version {self.tls.tls_version}",
            ]
        lines += [
            "",
            "persistence true",
            f"persistence_location {_conf_path_value(self.directory)}/",
            f"persistence_file {DB_NAME}",
            f"autosave_interval {s.autosave_interval}",
            f"autosave_on_changes {'true' if s.autosave_on_changes else 'false'}",
            f"persistent_client_expiration {s.persistent_client_expiration}",
            "",
            f"max_queued_messages {s.max_queued_messages}",
            "max_queued_bytes 0",
            f"max_inflight_messages {s.max_inflight_messages}",
            f"max_packet_size {s.max_packet_size}",
            *([f"max_keepalive {s.max_keepalive}"] if s.max_keepalive is not None else []),
            "set_tcp_nodelay true",
            "",
            f"log_dest file {_conf_path_value(self.log_path)}",
            *[f"log_type {kind}" for kind in s.log_types],
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Started as root, Mosquitto would switch to the user "mosquitto", which cannot read
            # these 0600 files: keep the user that owns them.
            import pwd

            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        return "\n".join(lines) + "\n"

    # writing
    def write_acl(self) -> Path:
        self.ensure_directory()
        _write_private(self.acl_path, self.render_acl())
        return self.acl_path

    def config_is_managed(self) -> bool:
        try:
            return self.conf_path.read_text().startswith(MANAGED_HEADER)
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def write_config(self, port: int, host: str = "127.0.0.1", *, force: bool = False) -> Path:
        """Write mosquitto.conf if it is missing or still managed by edgehub (or `force`)."""
        self.ensure_directory()
        if force or self.config_is_managed():
            text = self.render_config(port, host)
            try:
                current = self.conf_path.read_text()
            except OSError:
                current = None
            if current != text:
                _write_private(self.conf_path, text)
        return self.conf_path

    def write(self, port: int, host: str = "127.0.0.1") -> None:
        """Config, ACL and (if missing) an empty password file."""
        self.write_config(port, host)
        self.write_acl()
        with _locked(self.directory):
            if not self.password_path.exists():
                _write_private(self.password_path, "")

    # state (the port a restart keeps)
    def read_state(self) -> dict:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_state(self, **values) -> None:
        self.ensure_directory()
        data = self.read_state()
        data.update(values)
        _write_private(self.state_path, json.dumps(data, indent=2) + "\n")

    # passwords
    def users(self) -> list[str]:
        """User names in the password file, in file order."""
        try:
            text = self.password_path.read_text()
        except FileNotFoundError:
            return []
        names = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#") and ":" in line:
                names.append(line.split(":", 1)[0])
        return names

    def has_user(self, user: str) -> bool:
        return validate_username(user) in self.users()

    def _run_passwd(self, args: list[str], *, stdin: str | None, what: str) -> subprocess.CompletedProcess:
        tool = find_mosquitto_passwd()
        try:
            return subprocess.run([tool, *args], input=stdin, capture_output=True, text=True,
                                  timeout=30, check=False)
        except subprocess.TimeoutExpired:
            raise BrokerError(f"mosquitto_passwd timed out while {what}") from None

    @staticmethod
    def _tool_message(result: subprocess.CompletedProcess) -> str:
        # stdout holds only the "Password:" prompts; stderr the error. Neither echoes the password.
        text = " ".join(line.strip() for line in (result.stderr or "").splitlines() if line.strip())
        return text[:300] or f"exit code {result.returncode}"

    def set_password(self, user: str, password: str) -> None:
        """Add `user` or change its password (hashed by mosquitto_passwd, sha512-pbkdf2).

        Takes effect in a running broker after `reload()` / `reload_running_broker()`.
        """
        validate_username(user)
        _validate_password(password)
        self.ensure_directory()
        with _locked(self.directory):
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".passwd.")
            os.close(fd)
            tmp_path = Path(tmp)
            try:
                exists = self.password_path.exists() and self.password_path.stat().st_size > 0
                if exists:
                    shutil.copyfile(self.password_path, tmp_path)
                    args = [str(tmp_path), user]
                else:
                    tmp_path.unlink()
                    args = ["-c", str(tmp_path), user]
                # On stdin (twice: the tool asks to confirm), so it never appears in `ps`.
                result = self._run_passwd(args, stdin=f"{password}\n{password}\n",
                                          what=f"setting the password of {user}")
                if result.returncode != 0:
                    raise BrokerError(f"mosquitto_passwd failed for user {user}: {self._tool_message(result)}")
                os.chmod(tmp_path, 0o600)
                os.replace(tmp_path, self.password_path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp_path.unlink()
        log.info("broker: password set for user %s", user)

    def remove_user(self, user: str) -> bool:
        """Remove `user` from the password file; False if it was not there."""
        validate_username(user)
        with _locked(self.directory):
            if user not in self.users():
                return False
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".passwd.")
            os.close(fd)
            tmp_path = Path(tmp)
            try:
                shutil.copyfile(self.password_path, tmp_path)
                result = self._run_passwd(["-D", str(tmp_path), user], stdin=None,
                                          what=f"removing user {user}")
                if result.returncode != 0:
                    raise BrokerError(f"mosquitto_passwd -D failed for user {user}: {self._tool_message(result)}")
                os.chmod(tmp_path, 0o600)
                os.replace(tmp_path, self.password_path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp_path.unlink()
        log.info("broker: user %s removed", user)
        return True

    def hub_password(self) -> str:
        """The hub user's password: made (random) and set on first use, kept in hub.secret (0600)."""
        secret_path = self.directory / HUB_SECRET_NAME
        self.ensure_directory()
        with _locked(self.directory):
            try:
                password = secret_path.read_text().strip()
            except FileNotFoundError:
                password = ""
            created = not password
            if created:
                password = secrets.token_urlsafe(32)
                _write_private(secret_path, password + "\n")
        if created or self.hub_user not in self.users():
            self.set_password(self.hub_user, password)
        return password


# ---- the process ----------------------------------------------------------------------------

def _cmdline(pid: int) -> list[str]:
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


def _is_our_broker(pid: int, conf_path: Path) -> bool:
    """Whether `pid` is a live mosquitto started with `conf_path` (not a reused pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    argv = _cmdline(pid)
    if not argv:  # gone, or a zombie
        return False
    return Path(argv[0]).name.startswith("mosquitto") and str(conf_path) in " ".join(argv)


def _process_gone(pid: int) -> bool:
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


def _read_pid(pid_path: Path) -> int | None:
    try:
        return int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None


def running_broker_pid(directory: Path | str) -> int | None:
    """The pid of the live broker managed in `directory`, or None."""
    directory = Path(directory).expanduser().resolve()
    pid = _read_pid(directory / PID_NAME)
    if pid is not None and _is_our_broker(pid, directory / CONF_NAME):
        return pid
    return None


def _count_reloads(log_path: Path) -> int:
    try:
        return log_path.read_text(errors="replace").count(_RELOAD_MARK)
    except OSError:
        return 0


def _signal_reload(directory: Path, pid: int, timeout: float) -> None:
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
    """Make the broker managed in `directory` re-read its password and ACL files (SIGHUP).

    For other processes (e.g. `edgehub fleet enroll`). False if no broker runs there.
    Returns once the broker logged the reload (or after `timeout`).
    """
    directory = Path(directory).expanduser().resolve()
    pid = running_broker_pid(directory)
    if pid is None:
        return False
    try:
        _signal_reload(directory, pid, timeout)
    except ProcessLookupError:
        return False
    return True


class ManagedBroker:
    """A Mosquitto child process with the generated config, for one fleet.

    >>> with ManagedBroker(home / "broker", "default") as broker:
    ...     broker.files.set_password("dev-1", "...")
    ...     broker.reload()
    ...     print(broker.url)

    The port is remembered in state.json, so a restart keeps it. The broker runs in its own
    session (a Ctrl-C of the hub does not kill it); a broker left running by a hub that died
    is found through the pid file and adopted by the next `start()`.
    """

    def __init__(self, directory: Path | str, fleet: str, port: int | None = None,
                 host: str = "127.0.0.1", *, tls: TLSFiles | None = None,
                 settings: BrokerSettings | None = None, hub_user: str = HUB_USER,
                 extra_hub_users: tuple[str, ...] = (), start_timeout: float = 10.0,
                 mosquitto: str | None = None):
        self.files = BrokerFiles(directory, fleet, hub_user=hub_user, settings=settings, tls=tls,
                                 extra_hub_users=extra_hub_users)
        self.host = _validate_host(host)
        if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
            raise ValueError(f"invalid port {port!r}")
        self._requested_port = port
        self._port: int | None = port
        self.start_timeout = start_timeout
        self._mosquitto = mosquitto
        self._proc: subprocess.Popen | None = None
        self._adopted_pid: int | None = None
        self.restarts = 0

    # properties
    @property
    def directory(self) -> Path:
        return self.files.directory

    @property
    def fleet(self) -> str:
        return self.files.fleet

    @property
    def hub_user(self) -> str:
        return self.files.hub_user

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
        host = _local_host(self.host)
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        if self._adopted_pid is not None and _is_our_broker(self._adopted_pid, self.files.conf_path):
            return self._adopted_pid
        return None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # lifecycle
    def _choose_port(self) -> tuple[int, bool]:
        """(port, picked_now): the requested port, the remembered one, or a new free one."""
        if self._requested_port is not None:
            return self._requested_port, False
        stored = self.files.read_state().get("port")
        if isinstance(stored, int) and 0 < stored < 65536:
            return stored, False
        return free_port(_local_host(self.host)), True

    def start(self) -> "ManagedBroker":
        """Start the broker (or adopt the one already running from this directory)."""
        if self.running:
            return self
        self.files.ensure_directory()
        with _locked(self.directory, _START_LOCK_NAME):  # two hubs starting at once: one broker
            existing = running_broker_pid(self.directory)
            if existing is not None:
                return self._adopt(existing)
            mosquitto = self._mosquitto or find_mosquitto()
            find_mosquitto_passwd()
            port, picked_now = self._choose_port()
            attempts = 3 if picked_now else 1
            for attempt in range(attempts):
                if attempt:
                    port = free_port(_local_host(self.host))
                self.files.write(port, self.host)
                if _port_in_use(self.host, port):
                    if attempt + 1 < attempts:
                        continue
                    raise BrokerError(
                        f"port {port} on {self.host} is already in use by another process; stop it, "
                        f"or give the broker another port (the devices are told {self.host}:{port})")
                self._port = port
                self.files.write_state(port=port, host=self.host)
                try:
                    self._spawn(mosquitto, port)
                except _PortRace:
                    if attempt + 1 < attempts:
                        continue
                    raise BrokerError(f"mosquitto could not listen on {self.host}:{port}: "
                                      f"{self._failure_detail()}") from None
                return self
        raise BrokerError("could not find a free port for the broker")  # pragma: no cover

    def rotate_log(self, max_bytes: int = MAX_LOG_BYTES) -> bool:
        """Move mosquitto.log to mosquitto.log.1 once it is over `max_bytes` (the broker, if
        running, reopens its log on SIGHUP). Autosave alone logs a line every couple of seconds."""
        path = self.files.log_path
        try:
            if path.stat().st_size <= max_bytes:
                return False
        except FileNotFoundError:
            return False
        os.replace(path, path.with_name(path.name + ".1"))
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
        return True

    def _spawn(self, mosquitto: str, port: int) -> None:
        self.rotate_log()
        out_path = self.files.out_path
        with contextlib.suppress(FileNotFoundError):
            if out_path.stat().st_size > MAX_LOG_BYTES:
                os.replace(out_path, out_path.with_name(out_path.name + ".1"))
        offsets = {path: (path.stat().st_size if path.exists() else 0)
                   for path in (self.files.log_path, self.files.out_path)}
        with open(self.files.out_path, "ab") as out:
            self._proc = subprocess.Popen(
                [mosquitto, "-c", str(self.files.conf_path)],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                close_fds=True, start_new_session=True,
            )
        self._adopted_pid = None
        _write_private(self.files.pid_path, f"{self._proc.pid}\n")
        deadline = time.monotonic() + self.start_timeout
        connect_host = _local_host(self.host)
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                with contextlib.suppress(FileNotFoundError):
                    self.files.pid_path.unlink()
                if any(self._file_since(path, offset, "Address already in use")
                       for path, offset in offsets.items()):
                    raise _PortRace()
                raise BrokerError(f"mosquitto exited with code {code} while starting: {self._failure_detail()}")
            if _accepts(connect_host, port):
                # The listener answers, and it is ours (the process is still alive).
                if self._proc.poll() is None:
                    break
                continue
            if time.monotonic() > deadline:
                self._kill_child()
                raise BrokerError(f"mosquitto did not accept connections on {self.host}:{port} within "
                                  f"{self.start_timeout:.0f} s: {self._failure_detail()}")
            time.sleep(0.02)
        log.info("broker: mosquitto pid %s listening on %s", self._proc.pid, self.url)

    def _adopt(self, pid: int) -> "ManagedBroker":
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

    @staticmethod
    def _file_since(path: Path, offset: int, needle: str) -> bool:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                return needle.encode() in fh.read()
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's log and its stdout/stderr (never holds passwords)."""
        parts = _tail(self.files.log_path, lines)
        out = _tail(self.files.out_path, lines)
        if out:
            parts += ["-- stdout/stderr --", *out]
        return "\n".join(parts)

    def _failure_detail(self) -> str:
        tail = self.log_tail(15)
        return ("log tail:\n" + tail) if tail else f"nothing in {self.files.log_path}"

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
        if _read_pid(self.files.pid_path) == pid:
            with contextlib.suppress(FileNotFoundError):
                self.files.pid_path.unlink()
        self._adopted_pid = None
        log.info("broker: mosquitto pid %s stopped", pid)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None:
                try:
                    self._proc.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if _process_gone(pid):
                return True
            time.sleep(0.02)
        return False

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def reload(self, timeout: float = 5.0) -> None:
        """SIGHUP: re-read the password and ACL files, keeping connections.

        Returns once the broker logged the reload (or after `timeout`).
        """
        pid = self.pid
        if pid is None:
            raise BrokerError("the broker is not running")
        self.files.write_acl()
        _signal_reload(self.directory, pid, timeout)

    def ensure_running(self) -> bool:
        """Supervision: start the broker again (same port) if its process died. True if it did.

        Cheap enough to call every few seconds; also keeps the log from growing without bound.
        """
        if self.running:
            self.rotate_log()
            return False
        code = self._proc.poll() if self._proc is not None else None
        self._reap()
        log.warning("broker: mosquitto is not running (exit code %s); starting it again. %s",
                    code, self.log_tail(5).replace("\n", " | "))
        self.start()
        self.restarts += 1
        return True

    # password convenience (take effect after reload())
    def set_password(self, user: str, password: str) -> None:
        self.files.set_password(user, password)

    def remove_user(self, user: str) -> bool:
        return self.files.remove_user(user)

    def users(self) -> list[str]:
        return self.files.users()

    def __enter__(self) -> "ManagedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ManagedBroker({str(self.directory)!r}, fleet={self.fleet!r}, port={self.port}, pid={self.pid})"


class _PortRace(Exception):
    """The port was taken between choosing it and mosquitto binding it."""


__all__ = [
    "HUB_USER", "BrokerError", "MosquittoNotFound", "BrokerFiles", "BrokerSettings", "TLSFiles",
    "ManagedBroker", "find_mosquitto", "find_mosquitto_passwd", "free_port", "reload_running_broker",
    "running_broker_pid", "validate_username",
]
