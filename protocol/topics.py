"""MQTT topic names of one fleet: the addresses both sides agree on.
"""

from __future__ import annotations

from edgehub.protocol.base import _ID_RE, MessageError


class Topics:
    """Topic names for one fleet."""

    def __init__(self, fleet: str):
        if not _ID_RE.fullmatch(fleet):  # fullmatch: `$` alone would accept a trailing newline
            raise ValueError(f"invalid fleet name {fleet!r}")
        self.fleet = fleet
        self.root = f"edgehub/v1/{fleet}"

    def state(self, device: str) -> str:
        return f"{self.root}/devices/{device}/state"

    def desired(self, device: str) -> str:
        return f"{self.root}/devices/{device}/desired"

    def events(self, device: str) -> str:
        return f"{self.root}/devices/{device}/events"

    @property
    def hub_state(self) -> str:
        return f"{self.root}/hub/state"

    def device_of(self, topic: str) -> tuple[str, str]:
        """(device id, kind) of a device topic, or MessageError."""
        parts = topic.split("/")
        if len(parts) != 6 or "/".join(parts[:3]) != self.root or parts[3] != "devices":
            raise MessageError(f"not a device topic of fleet {self.fleet}: {topic[:120]!r}")
        device, kind = parts[4], parts[5]
        if not _ID_RE.fullmatch(device) or kind not in ("state", "desired", "events"):
            raise MessageError(f"bad device topic {topic[:120]!r}")
        return device, kind
