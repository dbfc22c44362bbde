"""An "external" broker for `hub serve --broker` tests, set up as an operator would.

`operator_broker` is a Mosquitto with the accounts plugin (a ManagedBroker the hub does not own):
the operator adds the hub users, the hub's shared-subscription group and the probe device, and
writes the hub's password file. `acl_file_broker` is the configuration edgehub itself used before
the accounts plugin: a password file and an ACL file, whose rules Mosquitto checks only at
delivery, never at SUBSCRIBE.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from mqtt_helpers import try_connect

from edgehub.hub.broker.managed import ManagedBroker, find_mosquitto
from edgehub.hub.broker.probe import PROBE_USER, probe_password
from edgehub.hub.broker.tools import HUB_USER, free_port
from edgehub.hub.home import HubPaths
from edgehub.hub.serve.service import share_group


def operator_broker(directory: Path, paths: HubPaths, *, extra_hub_users: tuple[str, ...] = (),
                    tls=None) -> ManagedBroker:
    """A started broker with the hub user (password in <home>/hub-mqtt-password) and the probe device."""
    broker = ManagedBroker(directory, "default", extra_hub_users=extra_hub_users, share_group=share_group(paths),
                           tls=tls)
    paths.root.mkdir(parents=True, exist_ok=True)
    (paths.root / "hub-mqtt-password").write_text(broker.files.hub_password() + "\n")
    broker.files.set_password(PROBE_USER, probe_password(paths.root)[0])
    return broker.start()


class AclFileBroker:
    """Mosquitto with a password file and a read/write ACL file (no subscribe rules)."""

    def __init__(self, directory: Path, users: dict[str, str], fleet: str = "default"):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.port = directory, free_port()
        passwd = directory / "passwd"
        passwd.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
        subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
        root = f"edgehub/v1/{fleet}"
        (directory / "acl").write_text("\n".join([
            f"pattern write {root}/devices/%u/state", f"pattern write {root}/devices/%u/events",
            f"pattern read {root}/devices/%u/desired", f"pattern read {root}/hub/state", "",
            f"user {HUB_USER}", f"topic readwrite {root}/#", ""]))
        (directory / "mosquitto.conf").write_text("\n".join([
            "per_listener_settings false", "allow_anonymous false", f"password_file {passwd}",
            f"acl_file {directory / 'acl'}", f"listener {self.port} 127.0.0.1", "use_username_as_clientid true",
            *(["user root"] if os.geteuid() == 0 else []), ""]))
        self.proc = subprocess.Popen([find_mosquitto(), "-c", str(directory / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while try_connect(self.url, None, None, client_id="probe-up") == -1:
            assert time.monotonic() < deadline, "the ACL-file broker did not start"
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
