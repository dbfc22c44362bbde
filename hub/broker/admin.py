"""Changing a running managed broker's accounts through the dynamic-security control topic.

The plugin applies a change at once (a revoked device is disconnected, a new one may connect) and
saves its file; no reload, no other client notices. One short MQTT 5 connection per call, as the
admin user; calls from several processes (the hub, `edgehub fleet enroll`) take the broker
directory's lock first, because the broker forces the client id to the user name and two admin
connections at once would disconnect each other.
"""

from __future__ import annotations

import json
import secrets
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgehub.hub.broker.dynsec import ADMIN_USER, CONTROL_TOPIC, HARMLESS_ERRORS, RESPONSE_TOPIC
from edgehub.hub.broker.tools import BrokerError


def run_commands(host: str, port: int, password: str, commands: list[dict], timeout: float = 10.0) -> list[dict]:
    """Send `commands` in one control message and return the plugin's answers, in order.

    An answer with an error other than "not found"/"already exists" raises BrokerError naming the
    command; so does a broker that refuses the admin or does not answer within `timeout`.
    """
    if not commands:
        return []
    tagged = [{**c, "correlationData": f"{i}-{secrets.token_hex(4)}"} for i, c in enumerate(commands)]
    answers: dict[str, dict] = {}
    state = {"connect": None, "subscribed": threading.Event(), "done": threading.Event()}

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=ADMIN_USER, protocol=mqtt.MQTTv5)
    client.username_pw_set(ADMIN_USER, password)

    def on_connect(c, userdata, flags, reason_code, properties):
        state["connect"] = reason_code
        if reason_code.is_failure:
            state["done"].set()
            return
        c.subscribe([(RESPONSE_TOPIC, SubscribeOptions(qos=1))])

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            state["connect"] = reason_codes[0]
            state["done"].set()
            return
        c.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)

    def on_message(c, userdata, message):
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        for answer in body.get("responses", []):
            if isinstance(answer, dict) and answer.get("correlationData") is not None:
                answers[answer["correlationData"]] = answer
        if len(answers) >= len(tagged):
            state["done"].set()

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect(host, port, keepalive=30, clean_start=True)
    except OSError as exc:
        raise BrokerError(f"cannot reach the managed broker at {host}:{port} to change its accounts: {exc}") from None
    client.loop_start()
    try:
        finished = state["done"].wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    rc = state["connect"]
    if rc is not None and rc.is_failure:
        raise BrokerError(f"the managed broker refused its admin user {ADMIN_USER} ({rc}); restart "
                          "`edgehub hub serve` so the broker reloads its accounts")
    if not finished:
        raise BrokerError(f"the managed broker at {host}:{port} did not answer on {CONTROL_TOPIC} within "
                          f"{timeout:.0f} s (a broker started by an older edgehub? restart `edgehub hub serve`)")
    ordered = [answers[c["correlationData"]] for c in tagged]
    for command, answer in zip(commands, ordered):
        error = answer.get("error")
        if error and error != HARMLESS_ERRORS.get(command["command"]):
            what = command.get("username") or command.get("rolename") or ""
            raise BrokerError(f"the broker refused {command['command']} {what}: {error}")
    return ordered


__all__ = ["run_commands"]
