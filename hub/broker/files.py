"""The generated files of a managed Mosquitto: config, accounts and rights, state.

Everything lives in one directory (the hub home's ``broker/`` folder)::

    mosquitto.conf         generated config (rewritten while it keeps the "managed by edgehub" header)
    dynamic-security.json  accounts and rights (Mosquitto's dynamic-security plugin, see
                           `broker.dynsec`): hashed passwords, a role per device, the hub role
    admin.secret           the admin user's password (changes accounts on a running broker)
    state.json             {"port": ..., "host": ...}: a restart keeps the port the devices know
    mosquitto.pid    pid of the running broker, so another process can find (and adopt) it
    mosquitto.db     persistence (retained messages, persistent sessions, queued QoS 1)
    mosquitto.log    the broker's log (no password is written anywhere in clear but the 0600 secrets)

Accounts change through the plugin's control topic while the broker runs (at once, no reload:
`broker.admin`) and in its file while it does not (the plugin reads it at start). Either way under
the directory's start lock, so a broker starting meanwhile cannot load a file about to change.

With TLS the devices' listener is TLS-only and a second, plain listener on the loopback
interface serves the hub's own connection (the hub runs on this machine; TLS protects the path
to the devices).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path

from edgehub.hub.broker import dynsec
from edgehub.hub.broker.admin import run_commands
from edgehub.hub.broker.process import running_broker_pid
from edgehub.hub.broker.settings import BrokerSettings, TLSFiles
from edgehub.hub.broker.tools import (
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
    START_LOCK_NAME,
    STATE_NAME,
    BrokerError,
    conf_path_value,
    local_host,
    locked,
    secret_file,
    validate_host,
    validate_password,
    validate_username,
    write_private,
)
from edgehub.protocol.topics import Topics

log = logging.getLogger("edgehub.hub.broker")

# Worker users (hub/serve/workers.py): the hub's own, whatever the list given to BrokerFiles says.
_WORKER_USER = re.compile(re.escape(HUB_USER) + r"-\d{1,3}")


class BrokerFiles:
    """The files of a managed broker inside `directory`: config, accounts (dynamic security), state."""

    def __init__(self, directory: Path | str, fleet: str, *, hub_user: str = HUB_USER,
                 settings: BrokerSettings | None = None, tls: TLSFiles | None = None,
                 extra_hub_users: tuple[str, ...] = (), share_group: str | None = None):
        self.directory = Path(directory).expanduser().resolve()
        self.topics = Topics(fleet)  # validates the fleet name
        self.fleet = fleet
        self.hub_user = validate_username(hub_user)
        # More hub connections (workers): with use_username_as_clientid every connection needs its
        # own user name, else they would keep disconnecting each other.
        self.extra_hub_users = tuple(validate_username(u) for u in extra_hub_users)
        self.settings = settings or BrokerSettings()
        self.tls = tls
        # The one shared subscription the hub users may join (None: none at all).
        self.share_group = dynsec.valid_share_group(share_group) if share_group is not None else None

    # paths
    @property
    def conf_path(self) -> Path:
        return self.directory / CONF_NAME

    @property
    def dynsec_path(self) -> Path:
        return self.directory / dynsec.DYNSEC_NAME

    @property
    def admin_secret_path(self) -> Path:
        return self.directory / dynsec.ADMIN_SECRET_NAME

    @property
    def legacy_password_path(self) -> Path:
        """An older edgehub's password file: its users are taken over once, then it is removed."""
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
    def render_config(self, port: int, host: str = "127.0.0.1", local_port: int | None = None,
                      plugin: str | None = None) -> str:
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
            "# Accounts and rights, subscriptions checked at SUBSCRIBE (see edgehub.hub.broker.dynsec).",
            f"plugin {conf_path_value(Path(plugin or dynsec.find_plugin()))}",
            f"plugin_opt_config_file {conf_path_value(self.dynsec_path)}",
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
        """Config and accounts, before the broker starts (the caller holds the start lock)."""
        self.write_config(port, host, local_port=local_port)
        with locked(self.directory):
            self._write_base()

    def _write_base(self) -> None:
        doc = self._load_document()
        admin, created = self._admin_password()
        fresh = created or dynsec.ADMIN_USER not in dynsec.client_names(doc)
        self._save_document(dynsec.with_base(doc, self.topics, self.share_group,
                                             dynsec.hashed(admin) if fresh else None))
        # Taken over; an older broker that read them is stopped before the new one starts.
        for old in (self.legacy_password_path, self.directory / ACL_NAME):
            old.unlink(missing_ok=True)

    def _load_document(self) -> dict:
        """The accounts file for an edit; the first time, with an older edgehub's password-file
        users taken over (same hash scheme: nobody has to be enrolled again)."""
        doc = dynsec.read_document(self.dynsec_path)
        if doc is not None:
            return doc
        doc = dynsec.empty_document()
        with contextlib.suppress(FileNotFoundError):
            for user, password in dynsec.from_password_file(self.legacy_password_path.read_text()).items():
                dynsec.put_client(doc, user, password, self._role_of(user))
        return doc

    def _save_document(self, doc: dict) -> None:
        dynsec.write_document(self.dynsec_path, doc)

    def base_is_current(self) -> bool:
        """Whether the accounts file has this hub's roles (a running broker with another base must be
        restarted: the plugin reads the hub role only at start)."""
        try:
            doc = dynsec.read_document(self.dynsec_path)
        except BrokerError:
            return False
        return (doc is not None and self.admin_secret_path.exists()
                and dynsec.base_matches(doc, self.topics, self.share_group))

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

    # accounts
    def is_hub_user(self, user: str) -> bool:
        return user in (self.hub_user, *self.extra_hub_users) or bool(_WORKER_USER.fullmatch(user))

    def _role_of(self, user: str) -> dict:
        return dynsec.hub_role(self.topics, self.share_group) if self.is_hub_user(user) \
            else dynsec.device_role(self.topics, user)

    def users(self) -> list[str]:
        """User names with access to the broker (the admin user aside), in file order."""
        try:
            doc = dynsec.read_document(self.dynsec_path)
        except BrokerError:
            return []
        return [u for u in dynsec.client_names(doc or {}) if u != dynsec.ADMIN_USER]

    def has_user(self, user: str) -> bool:
        return validate_username(user) in self.users()

    def set_password(self, user: str, password: str) -> None:
        """Add `user` or give it a new password (a connected client with that name is disconnected).
        Hub users get the hub role, every other user a device role of its own."""
        validate_username(user)
        validate_password(password)
        role = self._role_of(user)
        self._change(lambda doc: dynsec.put_client(doc, user, dynsec.hashed(password), role),
                     dynsec.put_client_commands(user, password, role))
        log.info("broker: credentials set for user %s", user)

    def remove_user(self, user: str) -> bool:
        """Remove `user` (a connected client is disconnected at once); False if it was not there."""
        validate_username(user)
        if user not in self.users():
            return False
        self._change(lambda doc: dynsec.drop_client(doc, user), dynsec.drop_client_commands(user))
        log.info("broker: user %s removed", user)
        return True

    def add_devices(self, passwords: dict[str, str]) -> None:
        """Add or replace many devices at once, in the file: for a broker that is not running (the
        plugin saves its whole file after every command, so thousands of commands take minutes;
        `ManagedBroker.edit_stopped` stops and restarts a running one around this)."""
        for user, password in passwords.items():
            validate_username(user)
            validate_password(password)
        self.ensure_directory()
        with locked(self.directory):
            if self._running_with_accounts():
                raise BrokerError("the broker is running: add many devices through ManagedBroker.edit_stopped")
            doc = self._load_document()
            for user, password in passwords.items():
                dynsec.put_client(doc, user, dynsec.hashed(password), self._role_of(user))
            self._save_document(doc)

    def _change(self, edit, commands: list[dict]) -> None:
        """One account change: through the control topic of a running broker, else in the file."""
        self.ensure_directory()
        with locked(self.directory, START_LOCK_NAME), locked(self.directory):
            if self._running_with_accounts():
                host, port = self.admin_address()
                run_commands(host, port, self._admin_password()[0], commands)
                return
            doc = self._load_document()
            edit(doc)
            self._save_document(doc)

    def _running_with_accounts(self) -> bool:
        """A broker runs from this folder with the accounts plugin. One an older edgehub started
        (password and ACL files) is restarted by the next `start()`: until then, edits go to the file."""
        if running_broker_pid(self.directory) is None:
            return False
        try:
            return "plugin_opt_config_file" in self.conf_path.read_text()
        except OSError:
            return False

    def admin_address(self) -> tuple[str, int]:
        """Where the admin connects: the plain loopback listener with TLS, else the devices' one."""
        state = self.read_state()
        port = state.get("local_port") if self.tls is not None else state.get("port")
        if not isinstance(port, int):
            raise BrokerError("the broker's port is not known yet (start it first)")
        host = "127.0.0.1" if self.tls is not None else local_host(str(state.get("host", "127.0.0.1")))
        return host, port

    def _admin_password(self) -> tuple[str, bool]:
        """(password, created now) of the admin user, kept in admin.secret (0600)."""
        return secret_file(self.admin_secret_path)

    def hub_password(self) -> str:
        """The hub user's password: made (random) and set on first use, kept in hub.secret (0600)."""
        self.ensure_directory()
        with locked(self.directory):
            password, created = secret_file(self.directory / HUB_SECRET_NAME)
        if created or self.hub_user not in self.users():
            self.set_password(self.hub_user, password)
        return password




__all__ = ["BrokerFiles"]
