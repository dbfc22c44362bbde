"""Enrolling and revoking devices: credentials in the broker and the registry, an agent config.

Each device gets its own user name (= its id = its MQTT client id) and a random password; the
registry keeps only a PBKDF2 hash, the managed broker's accounts file (dynamic security) another. The
agent config carries what the device needs to trust the hub: the CA when the hub runs TLS, an
external broker's private CA (`hub serve --broker-ca`), and every ed25519 key whose manifests it
may accept (the active key, a staged next key, earlier keys still trusted).
"""

from __future__ import annotations

from pathlib import Path

from edgehub.agent.config import AgentConfig
from edgehub.hub.broker.tools import free_port, write_private
from edgehub.hub.fleet.store import FleetStore
from edgehub.hub.home import HubPaths
from edgehub.hub.serve.certs import CertError, TlsPaths
from edgehub.hub.serve.credentials import hash_password, new_password
from edgehub.hub.serve.service import managed_broker
from edgehub.hub.serve.settings import HubSettings, load_settings, save_settings
from edgehub.zoo.profiles import get_profile, load_profiles
from edgehub.zoo.signing import HubKey, trusted_public_keys

AGENT_CA_BUNDLE = "agent-ca.pem"  # in the hub home: the hub's CA and the broker's, when devices need both


def agent_ca_file(paths: HubPaths, settings: HubSettings) -> Path | None:
    """The CA file a device verifies the hub with (its `ca_file`, which replaces the system's CAs).

    The hub's CA when the hub runs TLS (HTTPS; mqtts:// on the managed broker) and an external
    broker's private CA (`broker_ca`); both: the two in one bundle, <home>/agent-ca.pem. With an
    external broker and no `broker_ca` the device keeps the system's CAs: a hub CA there would make
    it distrust a publicly certified broker."""
    external = settings.broker_url is not None
    wanted = []
    if TlsPaths(paths.root).enabled() and (not external or settings.broker_ca):
        wanted.append(TlsPaths(paths.root).ca_cert)
    if external and settings.broker_ca:
        broker_ca = Path(settings.broker_ca)
        if not broker_ca.is_file():
            raise CertError(f"the broker CA {broker_ca} (hub setting broker_ca) is missing; run "
                            "`edgehub hub serve --broker-ca FILE` with the broker's CA certificate")
        wanted.append(broker_ca)
    if len(wanted) < 2:
        return wanted[0] if wanted else None
    bundle = paths.root / AGENT_CA_BUNDLE
    write_private(bundle, "".join(p.read_text().strip() + "\n" for p in wanted))
    return bundle


def enroll_device(paths: HubPaths, device_id: str, profile: str, *, data_dir: Path, serve_port: int = 8765,
                  tags: list[str] | None = None, replace: bool = False,
                  profiles_file: Path | None = None) -> AgentConfig:
    """Issue credentials for a device and return its agent config (with the password in it).

    With a managed broker the device gets an account with a role of its own (its topics only); a
    running broker takes it at once through its control topic (no other device notices)."""
    get_profile(profile, load_profiles(profiles_file))
    settings = load_settings(paths.root)
    ca_file = agent_ca_file(paths, settings)  # before enrolling: a missing CA file enrols nobody
    password = new_password()
    fleet = FleetStore(paths.db_url)
    try:
        fleet.enroll(device_id, profile, hash_password(password), tags=tags, replace=replace)
    finally:
        fleet.close()
    if settings.broker_url is None:
        if settings.mqtt_port is None:  # fix the managed broker's port now: the config names it
            settings.mqtt_port = free_port(settings.mqtt_host)
            save_settings(paths.root, settings)
        managed_broker(paths, settings).files.set_password(device_id, password)
        scheme = "mqtts" if TlsPaths(paths.root).enabled() else "mqtt"
        broker_url = f"{scheme}://{settings.mqtt_host}:{settings.mqtt_port}"
    else:
        broker_url = settings.broker_url
    key = HubKey.load_or_create(paths.keys_dir)
    others = [k for k in trusted_public_keys(paths.keys_dir) if k != key.public_b64]
    return AgentConfig(device_id=device_id, fleet=settings.fleet, profile=profile, broker_url=broker_url,
                       username=device_id, password=password, hub_public_key=key.public_b64,
                       trusted_keys=others, ca_file=ca_file,
                       data_dir=data_dir, serve_port=serve_port)


def revoke_device(paths: HubPaths, device_id: str) -> None:
    """Remove a device's credentials.

    A running managed broker disconnects the revoked device at once (no other device notices),
    and the artifact server refuses its downloads from the next request on."""
    settings = load_settings(paths.root)
    fleet = FleetStore(paths.db_url)
    try:
        fleet.revoke(device_id)
    finally:
        fleet.close()
    if settings.broker_url is None:
        managed_broker(paths, settings).files.remove_user(device_id)
