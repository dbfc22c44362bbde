"""Shared pieces of the managed broker: names, validation, tool lookup, ports, private files.

Used by the broker's files (`broker.files`), its process helpers (`broker.process`), the managed
process (`broker.managed`) and the probe (`broker.probe`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import socket
import tempfile
from pathlib import Path

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
# An older edgehub's ACL and password files (taken over into the accounts file, then removed).
ACL_NAME = "acl"
PASSWD_NAME = "passwd"
STATE_NAME = "state.json"
PID_NAME = "mosquitto.pid"
LOG_NAME = "mosquitto.log"
OUT_NAME = "mosquitto.out"
DB_NAME = "mosquitto.db"
HUB_SECRET_NAME = "hub.secret"
LOCK_NAME = ".lock"
START_LOCK_NAME = ".start.lock"
RELOAD_MARK = "Reloading config"


class BrokerError(RuntimeError):
    """The broker could not be set up, started, stopped or reloaded; the message says why."""


class MosquittoNotFound(BrokerError):
    pass


def validate_username(user: str) -> str:
    """Return `user` if it is a safe MQTT user name (device id), else raise ValueError.

    ^[a-z0-9][a-z0-9._-]{0,63}$, matched in full (a trailing newline does not pass), so no
    '/', '+', '#', whitespace or ':' can reach a topic in the device's role.
    """
    if not isinstance(user, str) or not _USER_RE.fullmatch(user):
        raise ValueError(f"invalid MQTT user name {user!r}: must match ^{USER_PATTERN}$")
    return user


def validate_password(password: str) -> str:
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty string")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"password is longer than {MAX_PASSWORD_CHARS} characters")
    if any(c in password for c in "\n\r\0"):
        raise ValueError("password must not contain newlines or NUL")
    return password


def validate_host(host: str) -> str:
    if not isinstance(host, str) or not _HOST_RE.fullmatch(host):
        raise ValueError(f"invalid listener host {host!r}")
    return host


def conf_path_value(path: Path) -> str:
    """An absolute path that can sit on a mosquitto config line (spaces are fine, newlines not)."""
    text = str(Path(path).resolve())
    if any(c in text for c in "\n\r\0"):
        raise ValueError(f"path {text!r} cannot be used in a mosquitto config")
    return text


def local_host(host: str) -> str:
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


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto does
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def find_tool(name: str, dirs: tuple[str, ...] = TOOL_DIRS) -> str:
    found = shutil.which(name)
    if found:
        return found
    for folder in dirs:
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
    return find_tool("mosquitto", TOOL_DIRS)


def tail(path: Path, lines: int) -> list[str]:
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
def locked(directory: Path, name: str = LOCK_NAME):
    """An exclusive lock over the broker directory's files (across processes)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / name, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_private(path: Path, text: str) -> None:
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


def secret_file(path: Path, nbytes: int = 32) -> tuple[str, bool]:
    """The secret kept in `path` (made on first use, 0600) and whether it was made now."""
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        secret = ""
    if secret:
        return secret, False
    secret = secrets.token_urlsafe(nbytes)
    write_private(path, secret + "\n")
    return secret, True
