"""Property-based fuzzing of every protocol body, against the code that receives it.

Bodies are valid messages mutated by hypothesis (a field replaced by any JSON value or a hostile
string or number, a field dropped, an unknown one added, the device changed), plus arbitrary
bytes. Each goes to the real receiver: the hub's batch handler over a real SQLite fleet store,
the agent's MQTT link, and, through a real broker, a running hub fed by a rogue device. The
properties: no exception escapes, a rejected body changes nothing, the receiver still works.
"""

from __future__ import annotations

import copy
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgehub.agent.config import AgentConfig
from edgehub.agent.mqtt_link import MqttLink
from edgehub.agent.outbox import Outbox
from edgehub.protocol.base import MessageError
from edgehub.protocol.manifest import Manifest, TensorSpec
from edgehub.protocol.messages import (
    ActivationResult,
    AgentError,
    BenchmarkReport,
    BenchmarkSettings,
    Candidate,
    DesiredState,
    DeviceState,
    Hardware,
    HubState,
    Latency,
)
from edgehub.protocol.topics import Topics
from edgehub.protocol.wire import encode, parse_body, parse_event
from edgehub.zoo.signing import HubKey

T = Topics("default")
DEVICE = "dev-a"
KEY = HubKey.generate()


def _manifest() -> dict:
    manifest = Manifest(variant_id="m-v1-fp32", model="m", version=1, format="onnx", precision="fp32", sha256="a" * 64,
                        size_bytes=1000, inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", 16])],
                        outputs=[TensorSpec(name="y", dtype="float32", shape=["batch", 8])],
                        recipe=[{"pass": "slim", "config": {}}], created_at="2026-01-01T00:00:00+00:00")
    return json.loads(KEY.sign(manifest).model_dump_json())


def valid_bodies() -> dict[str, dict]:
    latency = Latency(p50_ms=1.0, p90_ms=1.5, p99_ms=2.0, mean_ms=1.1, runs=100)
    candidate = Candidate.model_validate(dict(variant_id="m-v1-fp32", url="http://127.0.0.1:9/artifacts/x?sig=1",
                                              sha256="a" * 64, size_bytes=1000, format="onnx", precision="fp32",
                                              manifest=_manifest()))
    bodies = {
        "state": DeviceState(device_id=DEVICE, online=True, profile="x86-cpu", agent_version="1",
                             runtimes={"onnxruntime": "1.32"}, hardware=Hardware(arch="x86_64", cores=2, ram_mb=100),
                             active_variant="m-v1-fp32", cached_variants=["m-v1-fp32"], generation_seen=3),
        "benchmark": BenchmarkReport(event_id="e" * 16, device_id=DEVICE, generation=3, variant_id="m-v1-fp32", ok=True,
                                     runtime="onnxruntime", latency=latency, agreement=1.0, peak_rss_mb=50.0),
        "activation": ActivationResult(event_id="f" * 16, device_id=DEVICE, generation=3, variant_id="m-v1-fp32",
                                       ok=False, rolled_back_to="m-v1-int8", error="health check failed"),
        "error": AgentError(event_id="g" * 16, device_id=DEVICE, generation=3, error="download failed"),
        "desired": DesiredState(device_id=DEVICE, generation=4, model="m", version=1, candidates=[candidate],
                                activate="m-v1-fp32", benchmark=BenchmarkSettings()),
        "hub": HubState(online=True, version="1", public_key=KEY.public_b64),
    }
    return {k: json.loads(encode(v)) for k, v in bodies.items()}


BODIES = valid_bodies()
HOSTILE_TEXT = ["", "\x00", "dev-b", "../../etc/passwd", "#", "+", "%u", "a" * 5000, "é" * 300, "\ud7ff",
                "1e999", "NaN", "<script>", "edgehub/v1/default/devices/dev-b/events"]
HOSTILE_NUMBERS = [0, -1, 2**31, 2**63, -(2**63) - 1, 10**40, 1e308, -0.0, 0.5]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(HOSTILE_NUMBERS)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30) | st.sampled_from(HOSTILE_TEXT),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _same_type(value) -> st.SearchStrategy:
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers() | st.sampled_from([n for n in HOSTILE_NUMBERS if isinstance(n, int)])
    if isinstance(value, float):
        return st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(HOSTILE_NUMBERS)
    if isinstance(value, str):
        return st.text(max_size=80) | st.sampled_from(HOSTILE_TEXT) | st.just(value + "x")
    return json_values


def _paths(value, prefix=()):
    """Every (path, value) inside a JSON document."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated(draw, kind: str) -> bytes:
    body = copy.deepcopy(BODIES[kind])
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p, _ in _paths(body) if p]
        path = draw(st.sampled_from(paths))
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["same-type", "same-type", "replace", "drop", "add"]))
        if action == "same-type":  # still well-typed: what the validators' limits must catch
            parent[path[-1]] = draw(_same_type(parent[path[-1]]))
        elif action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "drop" and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
    return json.dumps(body).encode()


def payloads(kind: str) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(kind), mutated(kind), mutated(kind), st.binary(max_size=300),
                     json_values.map(lambda v: json.dumps(v).encode()))


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


# ---- the parsers: a MessageError or a valid body, nothing else -------------------------------

@FUZZ
@given(data=st.data())
def test_every_body_type_parses_or_is_rejected_cleanly(data):
    for kind, model in (("state", DeviceState), ("desired", DesiredState), ("hub", HubState)):
        payload = data.draw(payloads(kind), label=kind)
        try:
            body = parse_body(payload, model, device=None if kind == "hub" else DEVICE)
        except MessageError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 1000
        else:
            assert isinstance(body, model) and encode(body)  # what validated re-encodes
    for kind in ("benchmark", "activation", "error"):
        payload = data.draw(payloads(kind), label=kind)
        try:
            event = parse_event(payload, device=DEVICE)
        except MessageError:
            continue
        assert event.device_id == DEVICE and encode(event)


# ---- the hub: its batch handler over a real fleet store -----------------------------------------

@pytest.fixture(scope="module")
def hub_loop(tmp_path_factory):
    from edgehub.hub.control.selection import Policy
    from edgehub.hub.control.settings import FleetSettings
    from edgehub.hub.control.worker import FleetService
    from edgehub.hub.fleet.store import FleetStore
    from edgehub.zoo.profiles import load_profiles
    from edgehub.zoo.registry import Registry

    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz-hub')}/registry.db"
    registry, fleet = Registry(url), FleetStore(url)
    fleet.enroll(DEVICE, "x86-cpu", "pbkdf2_sha256$1$AA==$AA==")
    settings_ = FleetSettings(fleet="default", broker_url="mqtt://127.0.0.1:9", username="edgehub-hub", password="x",
                              artifact_base_url="http://127.0.0.1:9", url_secret=b"s" * 32, policy=Policy(),
                              benchmark=BenchmarkSettings(), share_group="g")
    service = FleetService(settings_, registry, fleet, load_profiles())  # not started: no broker needed
    yield service, fleet
    fleet.close()
    registry.close()


def _snapshot(fleet) -> tuple:
    device = fleet.get_device(DEVICE)
    return fleet.count_events(), device.model_dump_json(exclude={"last_seen"})


@FUZZ
@given(data=st.data())
def test_the_hub_stores_valid_bodies_and_rejects_the_rest_without_change(hub_loop, data):
    service, fleet = hub_loop
    kind = data.draw(st.sampled_from(["benchmark", "activation", "error", "state"]))
    topic = T.state(DEVICE) if kind == "state" else T.events(DEVICE)
    payload = data.draw(payloads(kind))
    before = _snapshot(fleet)
    try:
        valid = parse_body(payload, DeviceState, device=DEVICE) if kind == "state" else parse_event(payload, device=DEVICE)
    except MessageError:
        valid = None
    service.handle_batch([(topic, payload)])  # must not raise, whatever the body
    after = _snapshot(fleet)
    if valid is None:
        assert after == before
    elif kind != "state":
        assert after[0] in (before[0], before[0] + 1)  # stored once (or already there)
    # The hub still takes a good event afterwards.
    good = encode(AgentError(event_id=f"ok-{time.monotonic_ns()}", device_id=DEVICE, generation=1, error="ok"))
    service.handle_batch([(T.events(DEVICE), good)])
    assert fleet.count_events() == after[0] + 1


# ---- the agent: its MQTT link's desired-state handler -----------------------------------------

@pytest.fixture(scope="module")
def agent_link(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-agent")
    config = AgentConfig(device_id=DEVICE, profile="x86-cpu", broker_url="mqtt://127.0.0.1:9", username=DEVICE,
                         password="pw", hub_public_key=KEY.public_b64, data_dir=root)
    got: list[DesiredState] = []
    link = MqttLink(config, Outbox(root / "outbox.db"), got.append)  # not started: no broker needed
    yield link, got


class _Message:
    def __init__(self, topic: str, payload: bytes):
        self.topic, self.payload = topic, payload


@FUZZ
@given(payload=payloads("desired"))
def test_the_agent_acts_only_on_valid_desired_states_for_itself(agent_link, payload):
    link, got = agent_link
    got.clear()
    link._on_message(None, None, _Message(T.desired(DEVICE), payload))
    try:
        expected = parse_body(payload, DesiredState, device=DEVICE)
    except MessageError:
        assert got == []
    else:
        assert len(got) == 1 and got[0].device_id == DEVICE
        # (`at` defaults to the time of parsing when a body leaves it out)
        assert got[0].model_dump(exclude={"at"}) == expected.model_dump(exclude={"at"})


# ---- a running hub and broker, fed by a rogue device ------------------------------------------

@pytest.fixture(scope="module")
def running_hub(tmp_path_factory):
    from mqtt_helpers import close, connect

    from edgehub.hub.home import HubPaths
    from edgehub.hub.serve.enrollment import enroll_device
    from edgehub.hub.serve.service import HubOptions, HubService

    root = tmp_path_factory.mktemp("fuzz-running-hub")
    hub = HubService(HubPaths.from_home(root / "home"), options=HubOptions(tick_s=0.3)).start()
    password = enroll_device(hub.paths, DEVICE, "x86-cpu", data_dir=root / "a").password.get_secret_value()
    client = connect(hub.broker.url, DEVICE, password)
    assert client.connect_rc == 0
    yield hub, client
    close(client)
    hub.stop()


KINDS = ["benchmark", "activation", "error", "state"]
ROGUE = settings(max_examples=3, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])


@ROGUE
@given(messages=st.lists(st.sampled_from(KINDS).flatmap(lambda k: st.tuples(st.just(k), payloads(k))),
                         min_size=100, max_size=100))
def test_a_rogue_device_cannot_hurt_a_running_hub(running_hub, messages):
    """100 hostile bodies per example through the real broker into the running hub: the hub
    stores exactly the valid events, rejects the rest, and still stores the next good one."""
    from mqtt_helpers import wait_for

    hub, client = running_hub
    before = {e["event_id"] for e in hub.fleet.events(DEVICE)}
    rejected = hub.service.stats["rejected"]
    valid, invalid = set(), 0
    for kind, payload in messages:
        topic = T.state(DEVICE) if kind == "state" else T.events(DEVICE)
        client.publish(topic, payload, qos=1).wait_for_publish(5)
        try:
            body = (parse_body(payload, DeviceState, device=DEVICE) if kind == "state"
                    else parse_event(payload, device=DEVICE))
        except MessageError:
            invalid += 1
            continue
        if kind != "state":
            valid.add(body.event_id)
    sentinel = AgentError(event_id=f"sentinel-{time.monotonic_ns()}", device_id=DEVICE, generation=1, error="x")
    client.publish(T.events(DEVICE), encode(sentinel), qos=1).wait_for_publish(5)
    assert wait_for(lambda: sentinel.event_id in {e["event_id"] for e in hub.fleet.events(DEVICE)}, timeout=30)
    after = {e["event_id"] for e in hub.fleet.events(DEVICE)}
    assert valid | {sentinel.event_id} <= after
    assert after - before <= valid | {sentinel.event_id}
    # An empty body is not a rejection: on a state topic it clears a retained state, on an events
    # topic it is the hub's own clearing of a retained event coming back; both are ignored.
    assert hub.service.stats["rejected"] - rejected == invalid - sum(1 for k, p in messages if not p)
