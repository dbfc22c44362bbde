"""The hub's own settings, kept in <home>/hub.json so `fleet enroll` knows what `hub serve` uses."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

from edgehub.protocol.base import ID_PATTERN

SETTINGS_NAME = "hub.json"


class HubSettings(BaseModel):
    fleet: str = Field("default", pattern=ID_PATTERN)
    broker_url: str | None = None  # an external broker; None: the hub manages a local Mosquitto
    # The CA (PEM) that signed an external mqtts:// broker's certificate, when it is not one the
    # system trusts; the hub verifies the broker with it and ships it to enrolled devices.
    broker_ca: str | None = None
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int | None = None  # managed broker: chosen on first use, then kept
    http_host: str = "127.0.0.1"
    http_port: int | None = None  # artifact server: chosen on first use, then kept
    public_http_url: str | None = None  # what devices use to reach the artifact server, if not host:port
    # Fleet workers sharing the events over an MQTT 5 shared subscription (hub/serve/workers.py);
    # the bound is hub/serve/workers.py's MAX_WORKERS (not imported here: this module stays light).
    workers: int = Field(1, ge=1, le=32)
    # Cohort benchmarking (hub/control/cohorts.py): k devices per cohort benchmark every candidate and the
    # rest get the cohort's winner; 0: every device benchmarks every candidate.
    cohort_sample: int = Field(0, ge=0, le=100)


def load_settings(home: Path) -> HubSettings:
    path = home / SETTINGS_NAME
    if not path.exists():
        return HubSettings()
    return HubSettings.model_validate_json(path.read_text())


def save_settings(home: Path, settings: HubSettings) -> None:
    home.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=home, prefix=".hub-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(settings.model_dump(mode="json"), indent=2))
    os.replace(tmp, home / SETTINGS_NAME)
