"""The managed broker's accounts and rights, held by Mosquitto's dynamic-security plugin.

Why the plugin and not Mosquitto's `acl_file`: the ACL file is checked only when a message is
delivered, never when a SUBSCRIBE arrives (Mosquitto 2.0 `security_default.c` grants every
subscription). A device could therefore join the hub's shared subscription and take its share of
every other device's events, which its read ACL then dropped: measured, 20 of 40 honest events
lost. The plugin checks each filter when it is subscribed and answers 135 (not authorized) in the
SUBACK for anything not granted, in any form (`$share/...`, wildcards, other fleets, `$SYS`).

Mosquitto 2.0's plugin has no `%u` patterns, so each device has a role of its own, with literal
topics: publish its own `state` and `events`; subscribe to and receive its own `desired` and the
hub state; nothing else (the default for everything is deny). The hub users have the hub role:
the fleet's topics, `$SYS`, and exactly one shared subscription, whose group name comes from a
per-hub secret devices never see. A separate admin user, used only on the hub machine, may use
the plugin's control topic.

This module is the document (the plugin's JSON file) and the control commands that change it;
`broker.admin` sends them to a running broker, `broker.files` decides which of the two to use.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path

from edgehub.hub.broker.tools import BrokerError, write_private
from edgehub.protocol.topics import Topics

DYNSEC_NAME = "dynamic-security.json"
ADMIN_USER = "edgehub-hub-admin"  # the reserved "edgehub-hub" prefix: no device can be enrolled as it
ADMIN_SECRET_NAME = "admin.secret"
ADMIN_ROLE = "edgehub-admin"
HUB_ROLE = "edgehub-hub"
DEVICE_ROLE_PREFIX = "device:"
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
# Mosquitto's own default (mosquitto_passwd and the plugin). Device passwords are 192 random bits,
# so more iterations would not make them harder to guess, only every connect slower.
HASH_ITERATIONS = 101
PLUGIN_ENV = "EDGEHUB_MOSQUITTO_DYNSEC"
PLUGIN_NAME = "mosquitto_dynamic_security.so"
PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf",
               "/usr/lib", "/usr/local/lib", "/opt/homebrew/lib", "/usr/lib64")

DEFAULT_ACCESS = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                  "unsubscribe": True}


def find_plugin() -> str:
    """Path of `mosquitto_dynamic_security.so` ($EDGEHUB_MOSQUITTO_DYNSEC, then the usual lib dirs)."""
    given = os.environ.get(PLUGIN_ENV)
    candidates = [Path(given)] if given else [Path(d) / PLUGIN_NAME for d in PLUGIN_DIRS]
    for path in candidates:
        if path.is_file():
            return str(path)
    raise BrokerError(
        f"{PLUGIN_NAME} not found ({'$' + PLUGIN_ENV + ' = ' + given if given else 'looked in ' + ', '.join(PLUGIN_DIRS)}); "
        "it ships with Mosquitto 2.x (Debian/Ubuntu: `apt-get install mosquitto`); set $"
        f"{PLUGIN_ENV} to its path")


def hashed(password: str, *, iterations: int = HASH_ITERATIONS) -> dict:
    """The plugin's stored form of a password: PBKDF2-SHA512, 12-byte salt, base64 (as the plugin
    computes it in auth.c)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": iterations}


def _acl(kind: str, topic: str) -> dict:
    return {"acltype": kind, "topic": topic, "priority": 0, "allow": True}


def device_role_name(device: str) -> str:
    return DEVICE_ROLE_PREFIX + device


def device_role(topics: Topics, device: str) -> dict:
    """Only its own topics: write state and events; subscribe to and receive desired and the hub state."""
    return {"rolename": device_role_name(device), "acls": [
        _acl("publishClientSend", topics.state(device)),
        _acl("publishClientSend", topics.events(device)),
        _acl("subscribeLiteral", topics.desired(device)),
        _acl("subscribeLiteral", topics.hub_state),
        _acl("publishClientReceive", topics.desired(device)),
        _acl("publishClientReceive", topics.hub_state),
    ]}


def shared_events_filter(topics: Topics, group: str) -> str:
    return f"$share/{group}/{topics.root}/devices/+/events"


def hub_role(topics: Topics, share_group: str | None) -> dict:
    """The fleet's topics and `$SYS`; of the shared subscriptions only the hub's own group (a
    `root/#` pattern does not match `$share/...`, whose first level is `$share`)."""
    acls = [
        _acl("publishClientSend", f"{topics.root}/#"),
        _acl("publishClientReceive", f"{topics.root}/#"),
        _acl("publishClientReceive", "$SYS/#"),
        _acl("subscribePattern", f"{topics.root}/#"),
        _acl("subscribePattern", "$SYS/#"),
    ]
    if share_group is not None:
        acls.append(_acl("subscribeLiteral", shared_events_filter(topics, share_group)))
    return {"rolename": HUB_ROLE, "acls": acls}


def admin_role() -> dict:
    return {"rolename": ADMIN_ROLE, "acls": [
        _acl("publishClientSend", CONTROL_TOPIC),
        _acl("subscribeLiteral", RESPONSE_TOPIC),
        _acl("publishClientReceive", RESPONSE_TOPIC),
    ]}


def valid_share_group(group: str) -> str:
    if not group or any(c in group for c in "/+#\0") or len(group) > 64:
        raise ValueError(f"invalid shared-subscription group {group!r}")
    return group


# ---- the document -------------------------------------------------------------------------------

def empty_document() -> dict:
    return {"defaultACLAccess": dict(DEFAULT_ACCESS), "clients": [], "groups": [], "roles": []}


def read_document(path: Path) -> dict | None:
    """The plugin's file, or None when there is none yet. A file that is not the plugin's JSON is
    an error (it is never overwritten silently: it holds every device's credentials)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BrokerError(f"{path} is not valid JSON ({exc}); restore it from a backup or delete it "
                          "and enrol the devices again") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("clients", []), list):
        raise BrokerError(f"{path} is not a dynamic-security file")
    return doc


def write_document(path: Path, doc: dict) -> None:
    write_private(path, json.dumps(doc, indent=1) + "\n")


def client_names(doc: dict) -> list[str]:
    return [c["username"] for c in doc.get("clients", []) if isinstance(c, dict) and "username" in c]


def _replace(items: list, key: str, item: dict) -> None:
    """Replace the entry whose `key` matches in place, or append it."""
    for i, old in enumerate(items):
        if isinstance(old, dict) and old.get(key) == item[key]:
            items[i] = item
            return
    items.append(item)


def _put_role(doc: dict, role: dict) -> None:
    _replace(doc.setdefault("roles", []), "rolename", role)


def put_client(doc: dict, user: str, password: dict, role: dict) -> None:
    """Add or replace `user` with its hashed password and one role (added or replaced too)."""
    _put_role(doc, role)
    _replace(doc.setdefault("clients", []), "username",
             {"username": user, **password, "roles": [{"rolename": role["rolename"]}]})


def drop_client(doc: dict, user: str) -> bool:
    """Remove `user` and its device role; False if it was not there."""
    before = len(doc.get("clients", []))
    doc["clients"] = [c for c in doc.get("clients", []) if c.get("username") != user]
    doc["roles"] = [r for r in doc.get("roles", []) if r.get("rolename") != device_role_name(user)]
    return len(doc["clients"]) < before


def with_base(doc: dict, topics: Topics, share_group: str | None, admin_password: dict | None) -> dict:
    """`doc` with the default access, the hub and admin roles as this hub wants them, and the admin
    user (its password replaced when `admin_password` is given)."""
    doc = json.loads(json.dumps(doc))  # a copy
    doc["defaultACLAccess"] = dict(DEFAULT_ACCESS)
    doc.setdefault("groups", [])
    _put_role(doc, hub_role(topics, share_group))
    _put_role(doc, admin_role())
    if admin_password is not None:
        put_client(doc, ADMIN_USER, admin_password, admin_role())
    return doc


def base_matches(doc: dict, topics: Topics, share_group: str | None) -> bool:
    """Whether a running broker's file already has this hub's base (else it must be restarted:
    the plugin reads its file only at start)."""
    roles = {r.get("rolename"): _acl_set(r) for r in doc.get("roles", []) if isinstance(r, dict)}
    return (doc.get("defaultACLAccess") == DEFAULT_ACCESS and roles.get(HUB_ROLE) == _acl_set(hub_role(topics, share_group))
            and roles.get(ADMIN_ROLE) == _acl_set(admin_role()) and ADMIN_USER in client_names(doc))


def _acl_set(role: dict) -> set:
    # The plugin saves a role's ACLs grouped by type: compare them as a set.
    return {(a.get("acltype"), a.get("topic"), a.get("priority", 0), a.get("allow")) for a in role.get("acls", [])}


def from_password_file(text: str) -> dict[str, dict]:
    """Users of a Mosquitto password file (an older edgehub's broker) in the plugin's form: the same
    PBKDF2-SHA512 scheme (`user:$7$iterations$salt$hash`), so nobody has to be enrolled again."""
    found = {}
    for line in text.splitlines():
        user, _, rest = line.strip().partition(":")
        parts = rest.split("$")
        if len(parts) == 5 and parts[1] == "7" and parts[2].isdigit():
            found[user] = {"password": parts[4], "salt": parts[3], "iterations": int(parts[2])}
    return found


# ---- control commands (for a running broker) ----------------------------------------------------

def put_client_commands(user: str, password: str, role: dict) -> list[dict]:
    """Replace `user` (and its role) on a running broker. The deletes may answer "not found"."""
    return [
        {"command": "deleteClient", "username": user},
        *([{"command": "deleteRole", "rolename": role["rolename"]}] if role["rolename"].startswith(
            DEVICE_ROLE_PREFIX) else []),
        {"command": "createRole", "rolename": role["rolename"], "acls": role["acls"]},
        {"command": "createClient", "username": user, "password": password,
         "roles": [{"rolename": role["rolename"]}]},
    ]


def drop_client_commands(user: str) -> list[dict]:
    return [{"command": "deleteClient", "username": user},
            {"command": "deleteRole", "rolename": device_role_name(user)}]


# Answers that only say a delete had nothing to delete, or the shared hub role was there already.
HARMLESS_ERRORS = {"deleteClient": "Client not found", "deleteRole": "Role not found",
                   "createRole": "Role already exists"}


__all__ = [
    "ADMIN_ROLE", "ADMIN_SECRET_NAME", "ADMIN_USER", "CONTROL_TOPIC", "DYNSEC_NAME", "HARMLESS_ERRORS",
    "HUB_ROLE", "RESPONSE_TOPIC", "base_matches", "client_names", "device_role", "drop_client",
    "drop_client_commands", "empty_document", "find_plugin", "from_password_file", "hashed", "hub_role",
    "put_client", "put_client_commands", "read_document", "shared_events_filter", "valid_share_group",
    "with_base", "write_document",
]
