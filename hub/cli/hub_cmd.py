"""`edgehub hub serve` (run the hub), `hub certs` (TLS material), `hub keys` (signing key rotation),
and `hub worker` (an extra fleet worker; `hub serve --workers N` starts them)."""

from __future__ import annotations

import functools
import logging
import signal
import threading
from pathlib import Path
from urllib.parse import urlsplit

import click
from rich.table import Table

from edgehub.hub.cli.common import (
    console,
    fail,
    home_option,
    json_option,
    one_line_errors,
    print_json,
)


@click.group()
def hub() -> None:
    """Run the hub service; its API tokens and audit log."""


def security_errors(fn):
    """Certificate and key errors are bad input: one line, exit 1 (like `one_line_errors`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from edgehub.hub.serve.certs import CertError
        from edgehub.zoo.signing import HubKeyError

        try:
            return fn(*args, **kwargs)
        except (CertError, HubKeyError) as exc:
            fail(str(exc))

    return wrapper


@hub.command("serve")
@click.option("--fleet", help="Fleet name (topic root edgehub/v1/<fleet>/). Default: as before, or 'default'.")
@click.option("--broker", "broker_url", help="Use this broker (mqtt://host:port or mqtts://...) instead of "
              "managing a local Mosquitto. The hub user's password is read from <home>/hub-mqtt-password. "
              "Kept for later runs; `--broker managed` goes back to the hub's own Mosquitto.")
@click.option("--broker-ca", type=click.Path(path_type=Path), metavar="FILE",
              help="CA certificate (PEM) that signed the --broker mqtts:// broker's certificate, when the "
                   "system does not trust it (a private CA). Kept for later runs; devices enrolled from "
                   "then on get it with their agent config. `--broker-ca system` trusts the system's CAs again.")
@click.option("--mqtt-port", type=int, help="Port of the managed broker (default: kept from the first run).")
@click.option("--http-host", help="Address of the artifact server (default 127.0.0.1).")
@click.option("--http-port", type=int, help="Port of the artifact server (default: kept from the first run).")
@click.option("--public-url", help="Artifact server URL as devices reach it (default http://host:port).")
@click.option("--api-host", help="Address of the HTTP API, web console and /metrics (default 127.0.0.1).")
@click.option("--api-port", type=int, help="Port of the API and console (default: kept from the first run; 0: off).")
@click.option("--workers", type=click.IntRange(1, 32),
              help="Fleet workers sharing the devices' events over an MQTT 5 shared subscription: this "
                   "process and N-1 `edgehub hub worker` processes, restarted if one dies (default: as "
                   "before, or 1). With --broker, worker i needs the user edgehub-hub-i on that broker "
                   "and its password in <home>/hub-mqtt-password-i.")
@click.option("--cohort-sample", type=click.IntRange(0, 100),
              help="Cohort benchmarking: K devices of each cohort (same profile and hardware) benchmark "
                   "every candidate, the others only the cohort's winner; 0: every device benchmarks "
                   "every candidate (default: as before, or 0).")
@click.option("--tune-budget", "tune_budget_s", type=click.FloatRange(0, 3600),
              help="On-device runtime tuning: seconds per device and model for measuring the leading "
                   "variants under other thread counts, providers and delegates; the hub then picks "
                   "the (variant, settings) pair. 0: off (default: as before, or 0).")
@click.option("--tls/--no-tls", "tls", default=None,
              help="Serve MQTT and HTTP over TLS with the certificates of `edgehub hub certs` (kept for "
                   "later runs). Default: as before; on once `hub certs` has run.")
@click.option("--insecure-broker", is_flag=True,
              help="Run even when the --broker fails the start-up check (a device could subscribe to other "
                   "devices' events or write their topics); the findings are logged as warnings. Not kept.")
@click.option("-v", "--verbose", is_flag=True)
@home_option
@one_line_errors
@security_errors
def serve(fleet, broker_url, broker_ca, mqtt_port, http_host, http_port, public_url, api_host, api_port, workers,
          cohort_sample, tune_budget_s, tls, insecure_broker, verbose, home):
    """Start the broker (unless --broker), the artifact server and the fleet loop; Ctrl-C stops."""
    from edgehub.hub.home import HubPaths
    from edgehub.hub.serve.service import HubOptions, HubService
    from edgehub.hub.serve.settings import resolve_serve_settings

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = HubPaths.from_home(home)
    settings = resolve_serve_settings(paths, broker_url=broker_url, broker_ca=broker_ca, tls=tls, fleet=fleet,
                                      mqtt_port=mqtt_port, http_host=http_host, http_port=http_port,
                                      public_http_url=public_url, workers=workers, cohort_sample=cohort_sample,
                                      tune_budget_s=tune_budget_s,
                                      api_host=api_host, api_port=api_port)
    service = HubService(paths, settings, HubOptions(insecure_broker=insecure_broker)).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    scheme = "mqtts" if service.broker is not None and service.broker.files.tls is not None else "mqtt"
    console.print(f"[bold]edgehub hub[/] fleet [cyan]{settings.fleet}[/], broker "
                  f"{settings.broker_url or f'{scheme}://{settings.mqtt_host}:{settings.mqtt_port} (managed)'}, "
                  f"artifacts {service.http.base_url}, {settings.workers} worker(s), home {paths.root}.\n"
                  + (f"API {service.api.base_url}/api/v1, console {service.api.base_url}/console, metrics "
                     f"{service.api.base_url}/metrics (tokens: `edgehub hub token create NAME --role ROLE`). "
                     if service.api else "") + "Ctrl-C stops.")
    try:
        while not stop.wait(1.0):
            for what in service.supervise():
                logging.getLogger("edgehub.hub").warning("the %s had stopped; restarted it", what)
    finally:
        service.stop()


@hub.command("worker", hidden=True)
@click.option("--index", type=click.IntRange(1, 31), required=True, help="This worker's index (1..count-1).")
@click.option("--count", type=click.IntRange(2, 32), required=True, help="How many workers the hub runs.")
@home_option
@one_line_errors
def worker(index, count, home):
    """One extra fleet worker (started and supervised by `edgehub hub serve --workers N`)."""
    from edgehub.hub.home import HubPaths
    from edgehub.hub.serve.workers import run_worker

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s")
    run_worker(HubPaths.from_home(home), index, count)


@hub.command("certs")
@click.option("--host", "hosts", multiple=True,
              help="Name or address devices use to reach the hub (repeatable); localhost, the loopback "
                   "addresses and this machine's name are always included.")
@click.option("--days", type=click.IntRange(1, 3650), default=825, show_default=True,
              help="Validity of the server certificate.")
@click.option("--ca-cert", type=click.Path(dir_okay=False, path_type=Path),
              help="Use your own CA certificate (PEM) instead of making one; needs --cert and --key.")
@click.option("--cert", "cert_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Your server certificate (PEM), signed by --ca-cert.")
@click.option("--key", "key_file", type=click.Path(dir_okay=False, path_type=Path),
              help="The server certificate's private key (PEM, unencrypted).")
@click.option("--force", is_flag=True, help="Make a new CA too (devices must then get the new ca.pem).")
@home_option
@json_option
@one_line_errors
@security_errors
def certs(hosts, days, ca_cert, cert_file, key_file, force, home, as_json):
    """Make a CA and a server certificate for MQTT and HTTPS (or install yours); TLS is on from the next `hub serve`."""
    from edgehub.hub.home import HubPaths
    from edgehub.hub.serve.certs import CertError, default_hosts, fingerprint, generate, install_supplied
    from edgehub.hub.serve.settings import load_settings

    paths = HubPaths.from_home(home)
    supplied = [ca_cert, cert_file, key_file]
    if any(supplied) and not all(supplied):
        raise CertError("give --ca-cert, --cert and --key together (or none, to have the hub make them)")
    if all(supplied):
        material = install_supplied(paths.root, ca_cert, cert_file, key_file)
    else:
        settings = load_settings(paths.root)
        public = urlsplit(settings.public_http_url).hostname if settings.public_http_url else None
        names = default_hosts(settings.mqtt_host, settings.http_host, public, *hosts)
        material = generate(paths.root, names, days=days, force=force)
    info = {"ca": str(material.ca_cert), "certificate": str(material.server_cert),
            "hosts": material.read_settings().hosts, "ca_sha256": fingerprint(material.ca_cert)}
    if as_json:
        print_json(info)
        return
    console.print(f"TLS certificates in {material.root} for {', '.join(info['hosts']) or '(names in your certificate)'}.\n"
                  f"CA fingerprint (SHA-256) {info['ca_sha256']}\n"
                  "Restart `edgehub hub serve`; devices enrolled from now on get ca.pem with their config.",
                  soft_wrap=True)


@hub.group("keys")
def keys() -> None:
    """The ed25519 keys that sign manifests: list, stage the next, rotate, retire."""


def _keys_dir(home):
    from edgehub.hub.home import HubPaths

    return HubPaths.from_home(home).keys_dir


@keys.command("list")
@home_option
@json_option
@one_line_errors
@security_errors
def keys_list(home, as_json):
    """The active key, a staged next key and earlier keys still trusted."""
    from edgehub.zoo.signing import list_keys

    found = list_keys(_keys_dir(home))
    if as_json:
        print_json([k.model_dump() for k in found])
        return
    table = Table(title="hub signing keys")
    for column in ("key id", "role", "public key (base64)"):
        table.add_column(column)
    for k in found:
        table.add_row(k.key_id, k.role, k.public_b64)
    console.print(table)


@keys.command("stage")
@home_option
@one_line_errors
@security_errors
def keys_stage(home):
    """Make the next key; agent configs written from now on trust it (add it to existing agents' trusted_keys)."""
    from edgehub.zoo.signing import stage_next_key

    key = stage_next_key(_keys_dir(home))
    console.print(f"next key {key.key_id} staged; public key {key.public_b64}\n"
                  "Add it to every agent's trusted_keys, then run `edgehub hub keys rotate`.")


@keys.command("rotate")
@home_option
@one_line_errors
@security_errors
def keys_rotate(home):
    """Sign new manifests with the staged key; the old key stays trusted until retired."""
    from edgehub.zoo.signing import rotate_key

    old, new = rotate_key(_keys_dir(home))
    console.print(f"manifests are now signed by {new}; {old} stays trusted (retire it with "
                  f"`edgehub hub keys retire {old}` once no variant signed by it is in use).")


@keys.command("retire")
@click.argument("key_id")
@home_option
@one_line_errors
@security_errors
def keys_retire(key_id, home):
    """Stop trusting an earlier key (agent configs written from now on leave it out)."""
    from edgehub.zoo.signing import retire_key

    retire_key(_keys_dir(home), key_id)
    console.print(f"retired {key_id}")


def _access_commands() -> None:
    from edgehub.hub.cli.access_cmd import audit, token

    hub.add_command(token)
    hub.add_command(audit)


_access_commands()
