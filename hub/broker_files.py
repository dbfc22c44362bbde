"""The generated files of a managed Mosquitto: config, ACL, password file, state.

Everything lives in one directory (the hub home's ``broker/`` folder)::

    mosquitto.conf   generated config (rewritten while it keeps the "managed by edgehub" header)
    acl              generated ACL: the hub user reads and writes the fleet's topics; a device
                     (pattern %u) writes only its own state/events, reads only its own desired
                     and the hub state
    passwd           password file, edited only through the real ``mosquitto_passwd`` tool
                     (see `broker_passwords`)
    state.json       {"port": ..., "host": ...}: a restart keeps the port the devices know
    mosquitto.pid    pid of the running broker, so another process can send SIGHUP
    mosquitto.db     persistence (retained messages, persistent sessions, queued QoS 1)
    mosquitto.log    the broker's log (no passwords are ever written anywhere but passwd, hashed)

With TLS the devices' listener is TLS-only and a second, plain listener on the loopback
interface serves the hub's own connection (the hub runs on this machine; TLS protects the path
to the devices).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from edgehub.agent.messages import Topics
from edgehub.hub.broker_passwords import PasswordFile
from edgehub.hub.broker_tools import (
    ACL_NAME,
    CONF_NAME,
    DB_NAME,
    HUB_SECRET_NAME,
    HUB_USER,
    LOG_NAME,
    MANAGED_HEADER,
    OUT_NAME,
    PASSWD_NAME,
    PID_NAME,
    STATE_NAME,
    conf_path_value,
    locked,
    validate_host,
    validate_username,
    write_private,
)


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

    def render_config(self, port: int, host: str = "127.0.0.1", local_port: int | None = None) -> str:
        """The config; with TLS, `local_port` adds the hub's plain listener on 127.0.0.1."""
        for value in (port, local_port):
            if value is not None and (not isinstance(value, int) or not 0 < value < 65536):
                raise ValueError(f"invalid port {value!r}")
        validate_host(host)
        s = self.settings
        clientid = f"use_username_as_clientid {'true' if s.use_username_as_clientid else 'false'}"
        lines = [
            MANAGED_HEADER + " (rewritten on start; delete this line to keep your own edits)",
            f"# fleet {self.fleet}",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {conf_path_value(self.password_path)}",
            f"acl_file {conf_path_value(self.acl_path)}",
            "",
            f"listener {port} {host}",
            clientid,
        ]
        if self.tls is not None:
            lines += [
                f"cafile {conf_path_value(self.tls.cafile)}",
                f"certfile {conf_path_value(self.tls.certfile)}",
                f"keyfile {conf_path_value(self.tls.keyfile)}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
                f"tls_version {self.tls.tls_version}",
            ]
            if local_port is not None:  # listener options apply to the listener above them
                lines += ["", "# The hub's own connection, on this machine only.",
                          f"listener {local_port} 127.0.0.1", clientid]
        lines += [
            "",
            "persistence true",
            f"persistence_location {conf_path_value(self.directory)}/",
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
            f"log_dest file {conf_path_value(self.log_path)}",
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
        write_private(self.acl_path, self.render_acl())
        return self.acl_path

    def config_is_managed(self) -> bool:
        try:
            return self.conf_path.read_text().startswith(MANAGED_HEADER)
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def write_config(self, port: int, host: str = "127.0.0.1", *, force: bool = False,
                     local_port: int | None = None) -> Path:
        """Write mosquitto.conf if it is missing or still managed by edgehub (or `force`)."""
        self.ensure_directory()
        if force or self.config_is_managed():
            text = self.render_config(port, host, local_port)
            try:
                current = self.conf_path.read_text()
            except OSError:
                current = None
            if current != text:
                write_private(self.conf_path, text)
        return self.conf_path

    def write(self, port: int, host: str = "127.0.0.1", local_port: int | None = None) -> None:
        """Config, ACL and (if missing) an empty password file."""
        self.write_config(port, host, local_port=local_port)
        self.write_acl()
        self.ensure_directory()
        self.passwords.ensure_exists()

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
        write_private(self.state_path, json.dumps(data, indent=2) + "\n")

    # passwords (take effect in a running broker after a reload)
    @property
    def passwords(self) -> PasswordFile:
        return PasswordFile(self.password_path, self.directory)

    def users(self) -> list[str]:
        """User names in the password file, in file order."""
        return self.passwords.users()

    def has_user(self, user: str) -> bool:
        return self.passwords.has_user(user)

    def set_password(self, user: str, password: str) -> None:
        """Add `user` or change its password (mosquitto_passwd; reload to apply)."""
        self.ensure_directory()
        self.passwords.set_password(user, password)

    def remove_user(self, user: str) -> bool:
        """Remove `user` from the password file; False if it was not there."""
        return self.passwords.remove_user(user)

    def hub_password(self) -> str:
        """The hub user's password: made (random) and set on first use, kept in hub.secret (0600)."""
        secret_path = self.directory / HUB_SECRET_NAME
        self.ensure_directory()
        with locked(self.directory):
            try:
                password = secret_path.read_text().strip()
            except FileNotFoundError:
                password = ""
            created = not password
            if created:
                password = secrets.token_urlsafe(32)
                write_private(secret_path, password + "\n")
        if created or self.hub_user not in self.users():
            self.set_password(self.hub_user, password)
        return password


__all__ = ["BrokerFiles", "BrokerSettings", "TLSFiles"]
