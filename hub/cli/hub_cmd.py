"""`edgehub hub serve`: run the hub."""

from __future__ import annotations

import logging
import signal
import threading

import click

from edgehub.hub.cli.common import console, home_option, one_line_errors


@click.group()
def hub() -> None:
    """Run the hub service."""


@hub.command("serve")
@click.option("--fleet", help="Fleet name (topic root edgehub/v1/<fleet>/). Default: as before, or 'default'.")
@click.option("--broker", "broker_url", help="Use this broker (mqtt://host:port or mqtts://...) instead of "
              "managing a local Mosquitto. The hub user's password is read from <home>/hub-mqtt-password.")
@click.option("--mqtt-port", type=int, help="Port of the managed broker (default: kept from the first run).")
@click.option("--http-host", help="Address of the artifact server (default 127.0.0.1).")
@click.option("--http-port", type=int, help="Port of the artifact server (default: kept from the first run).")
@click.option("--public-url", help="Artifact server URL as devices reach it (default http://host:port).")
@click.option("-v", "--verbose", is_flag=True)
@home_option
@one_line_errors
def serve(fleet, broker_url, mqtt_port, http_host, http_port, public_url, verbose, home):
    """Start the broker (unless --broker), the artifact server and the fleet loop; Ctrl-C stops."""
    from edgehub.hub.hub_settings import load_settings
    from edgehub.hub.service import HubService
    from edgehub.zoo.home import HubPaths

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = HubPaths.from_home(home)
    settings = load_settings(paths.root)
    for name, value in (("fleet", fleet), ("broker_url", broker_url), ("mqtt_port", mqtt_port),
                        ("http_host", http_host), ("http_port", http_port), ("public_http_url", public_url)):
        if value is not None:
            setattr(settings, name, value)
    service = HubService(paths, settings).start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"[bold]edgehub hub[/] fleet [cyan]{settings.fleet}[/], broker "
                  f"{settings.broker_url or f'mqtt://{settings.mqtt_host}:{settings.mqtt_port} (managed)'}, "
                  f"artifacts {service.http.base_url}, home {paths.root}. Ctrl-C stops.")
    try:
        while not stop.wait(1.0):
            if service.broker is not None and service.broker.ensure_running():
                logging.getLogger("edgehub.hub").warning("the broker had stopped; restarted it")
    finally:
        service.stop()
