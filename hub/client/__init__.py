"""One interface to a hub, local or remote: the CLI's commands call it, and the HTTP API serves the
local one, so a command prints the same thing (and the same `--json`) on the hub machine and from
a laptop. `connect()` picks: `--hub URL` / $EDGEHUB_HUB means remote, else the local home."""

from __future__ import annotations

import os
from pathlib import Path

HUB_ENV = "EDGEHUB_HUB"
TOKEN_ENV = "EDGEHUB_TOKEN"
CA_ENV = "EDGEHUB_CA"


def connect(home: str | Path | None = None, hub_url: str | None = None, token: str | None = None,
            ca: str | None = None):
    """A LocalHub on `home`, or a RemoteHub when a hub URL is given (argument or $EDGEHUB_HUB)."""
    hub_url = hub_url or os.environ.get(HUB_ENV)
    if hub_url:
        from edgehub.hub.client.remote import RemoteHub

        return RemoteHub(hub_url, token or os.environ.get(TOKEN_ENV), ca or os.environ.get(CA_ENV))
    from edgehub.hub.client.local import LocalHub

    return LocalHub.open(home)
