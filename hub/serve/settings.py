"""The hub's own settings, kept in <home>/hub.json so `fleet enroll` knows what `hub serve` uses, and how
one `hub serve` command line changes them (a value not given keeps the last run's)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from edgehub.protocol.base import ID_PATTERN

if TYPE_CHECKING:
    from edgehub.hub.home import HubPaths

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
    # The HTTP API, web console and /metrics (hub/api/): their own port, apart from the artifact server.
    api_host: str = "127.0.0.1"
    api_port: int | None = None  # chosen on first use, then kept; 0 in `hub serve --api-port 0`: none
    # Build jobs (remote publishes) run at once, each in its own process.
    job_slots: int = Field(1, ge=1, le=16)
    max_upload_mb: int = Field(4096, ge=1)
    # Fleet workers sharing the events over an MQTT 5 shared subscription (hub/serve/workers.py);
    # the bound is hub/serve/workers.py's MAX_WORKERS (not imported here: this module stays light).
    workers: int = Field(1, ge=1, le=32)
    # Cohort benchmarking (hub/control/cohorts.py): k devices per cohort benchmark every candidate and the
    # rest get the cohort's winner; 0: every device benchmarks every candidate.
    cohort_sample: int = Field(0, ge=0, le=100)
    # On-device runtime tuning (hub/control/tuning.py): seconds per device and model for measuring
    # the leading variants under other runtime settings (threads, providers, ...); 0: off.
    tune_budget_s: float = Field(0.0, ge=0, le=3600)


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


def checked_broker_ca(path: Path) -> str:
    """`--broker-ca FILE`: a readable PEM certificate (or bundle); its absolute path, kept in hub.json."""
    from cryptography import x509

    from edgehub.hub.serve.certs import CertError

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertError(f"--broker-ca {path}: no such file") from None
    except OSError as exc:
        raise CertError(f"--broker-ca {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertError(f"--broker-ca {path}: not a PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    return str(path.resolve())


MANAGED = "managed"  # `--broker managed`: back to the hub's own Mosquitto
SYSTEM_CAS = "system"  # `--broker-ca system`: trust the system's CAs again


def serve_settings(settings: HubSettings, *, broker_url: str | None = None, broker_ca: str | None = None,
                   **values) -> HubSettings:
    """`settings` (kept from the last run) with what this `hub serve` was given; None keeps a value.

    `broker_url` "managed" drops an external broker (and its CA); `broker_ca` "system" drops the CA
    file; `broker_ca` otherwise is a checked absolute path. Raises CertError for a CA without an
    mqtts:// broker."""
    from edgehub.hub.serve.certs import CertError

    settings = settings.model_copy()
    if broker_url == MANAGED:
        settings.broker_url = settings.broker_ca = None
    elif broker_url is not None:
        settings.broker_url = broker_url
    if broker_ca == SYSTEM_CAS:
        settings.broker_ca = None
    elif broker_ca is not None:
        if not (settings.broker_url or "").startswith("mqtts://"):
            raise CertError("--broker-ca is the CA of an external TLS broker: give it with --broker mqtts://host:port")
        settings.broker_ca = broker_ca
    for name, value in values.items():
        if value is not None:
            setattr(settings, name, value)
    return settings


def resolve_serve_settings(paths: HubPaths, *, broker_url: str | None = None, broker_ca: Path | str | None = None,
                           tls: bool | None = None, **values) -> HubSettings:
    """The settings this `hub serve` runs with: the kept ones, changed by what was given.

    `tls` turns the TLS material of `hub certs` on or off (kept in its own settings file); a CA
    file is checked before anything is changed. Raises CertError for bad TLS input."""
    from edgehub.hub.serve.certs import CertError, TlsPaths

    if broker_ca is not None and str(broker_ca) != SYSTEM_CAS:
        broker_ca = checked_broker_ca(Path(broker_ca))
    if tls is not None:
        material = TlsPaths(paths.root)
        current = material.read_settings()
        if tls and (current is None or not material.complete()):
            raise CertError(f"no TLS certificates in {material.root}: run `edgehub hub certs` first")
        if current is not None and current.enabled != tls:
            material.write_settings(current.model_copy(update={"enabled": tls}))
    return serve_settings(load_settings(paths.root), broker_url=broker_url,
                          broker_ca=None if broker_ca is None else str(broker_ca), **values)
