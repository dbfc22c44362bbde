"""What an operator can tune in the generated mosquitto.conf: the TLS listener's files and the
broker's limits."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


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
    # A body is at most 256 KiB (protocol.wire.MAX_BODY_BYTES); leave room for topic and properties.
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
