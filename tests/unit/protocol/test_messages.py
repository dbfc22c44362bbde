"""Wire protocol: bodies, topics, and rejection of everything that must be rejected."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgehub.protocol.base import MessageError
from edgehub.protocol.manifest import Manifest, SignedManifest, TensorSpec
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
from edgehub.protocol.wire import MAX_BODY_BYTES, encode, parse_body, parse_event

DEV = "dev-1"
T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def candidate(variant_id: str = "mnist-1-x86-int8") -> Candidate:
    sha = hashlib.sha256(variant_id.encode()).hexdigest()
    manifest = Manifest(variant_id=variant_id, model="mnist", version=1, format="onnx", precision="int8",
                        sha256=sha, size_bytes=1234, inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", 784])],
                        outputs=[TensorSpec(name="y", dtype="float32", shape=["batch", 10])],
                        references_sha256=sha, recipe=[{"pass": "quantize", "mode": "qdq"}],
                        created_at="2025-03-01T12:00:00Z")
    return Candidate(variant_id=variant_id, url=f"https://hub:8443/artifacts/{sha}?exp=1&sig=abc",
                     references_url=f"https://hub:8443/artifacts/{sha}.refs", sha256=sha, size_bytes=1234,
                     format="onnx", precision="int8",
                     manifest=SignedManifest(manifest=manifest, signature="c2lnbmF0dXJl", key_id="0123456789abcdef"))


def bodies() -> list:
    return [
        DeviceState(device_id=DEV, online=True, profile="x86-cpu", agent_version="0.1.0",
                    runtimes={"onnxruntime": "1.20.1"}, hardware=Hardware(arch="x86_64", cores=8, ram_mb=16000,
                                                                          accelerators=["avx2"]),
                    active_variant="mnist-1-x86-int8", previous_variant="mnist-1-x86-fp32",
                    cached_variants=["mnist-1-x86-int8", "mnist-1-x86-fp32"], generation_seen=3, at=T0),
        DeviceState(device_id=DEV, online=False),
        DesiredState(device_id=DEV, generation=4, model="mnist", version=1, candidates=[candidate(), candidate("b")],
                     activate="b", benchmark=BenchmarkSettings(time_budget_s=1.5, threads=2, memory_limit_mb=512),
                     at=T0),
        DesiredState(device_id=DEV, generation=0),
        BenchmarkReport(event_id="evt-00000001", device_id=DEV, generation=4, variant_id="b", ok=True,
                        runtime="onnxruntime", runtime_version="1.20.1", threads=2, load_ms=12.5, warmup_ms=3.0,
                        latency=Latency(p50_ms=1.25, p90_ms=1.5, p99_ms=2.75, mean_ms=1.3, runs=1000),
                        throughput_per_s=800.0, peak_rss_mb=120.5, agreement=1.0, max_abs_diff=1e-6, at=T0),
        BenchmarkReport(event_id="evt-00000002", device_id=DEV, generation=4, variant_id="c", ok=False,
                        error="child process killed: memory limit"),
        ActivationResult(event_id="evt-00000003", device_id=DEV, generation=5, variant_id="b", ok=False,
                         rolled_back_to="a", error="health check failed", at=T0),
        AgentError(event_id="evt-00000004", device_id=DEV, generation=5, error="download failed: sha256 mismatch"),
        HubState(online=True, version="0.1.0", public_key="AAAA"),
    ]


EVENTS = (BenchmarkReport, ActivationResult, AgentError)


def as_json(body) -> dict:
    return json.loads(encode(body))


def dumps(data) -> bytes:
    return json.dumps(data).encode()


# ---- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("body", bodies(), ids=lambda b: type(b).__name__)
def test_every_body_round_trips(body):
    payload = encode(body)
    assert isinstance(payload, bytes) and len(payload) < MAX_BODY_BYTES
    assert parse_body(payload, type(body)) == body
    if hasattr(body, "device_id"):
        assert parse_body(payload, type(body), device=DEV) == body
    if isinstance(body, EVENTS):
        parsed = parse_event(payload, device=DEV)
        assert type(parsed) is type(body) and parsed == body
    assert as_json(body)["schema_version"] == 1


def test_times_are_aware_utc():
    naive = parse_body(dumps({"device_id": DEV, "online": True, "at": "2025-03-01T12:00:00"}), DeviceState)
    assert naive.at == datetime(2025, 3, 1, 12, tzinfo=timezone.utc)
    shifted = parse_event(dumps({**as_json(bodies()[4]), "at": "2025-03-01T14:00:00+02:00"}), device=DEV)
    assert shifted.at == datetime(2025, 3, 1, 12, tzinfo=timezone.utc) and shifted.at.utcoffset() == timedelta(0)


def test_time_not_representable_in_utc_rejected():
    with pytest.raises(MessageError, match="at"):
        parse_event(dumps({**as_json(bodies()[4]), "at": "0001-01-01T00:00:00+05:00"}), device=DEV)


# ---- rejections -----------------------------------------------------------------------------------

@pytest.mark.parametrize("body", bodies(), ids=lambda b: type(b).__name__)
def test_unknown_fields_rejected(body):
    data = as_json(body)
    data["surprise"] = 1
    with pytest.raises(MessageError, match="surprise"):
        parse_body(dumps(data), type(body))


def test_unknown_nested_fields_rejected():
    state = as_json(bodies()[0])
    state["hardware"]["gpu_mhz"] = 1
    with pytest.raises(MessageError):
        parse_body(dumps(state), DeviceState)
    report = as_json(bodies()[4])
    report["latency"]["p999_ms"] = 1
    with pytest.raises(MessageError):
        parse_event(dumps(report), device=DEV)
    desired = as_json(bodies()[2])
    desired["candidates"][0]["mirror"] = "x"
    with pytest.raises(MessageError):
        parse_body(dumps(desired), DesiredState)
    desired = as_json(bodies()[2])
    desired["benchmark"]["turbo"] = True
    with pytest.raises(MessageError):
        parse_body(dumps(desired), DesiredState)


@pytest.mark.parametrize("version", [0, 3, "1", None, "v1"])
@pytest.mark.parametrize("body", bodies(), ids=lambda b: type(b).__name__)
def test_wrong_schema_version_rejected(body, version):
    data = as_json(body)
    data["schema_version"] = version
    with pytest.raises(MessageError, match="schema_version"):
        parse_body(dumps(data), type(body))
    if isinstance(body, EVENTS):
        with pytest.raises(MessageError):
            parse_event(dumps(data), device=DEV)


def test_missing_schema_version_defaults_to_current():
    data = as_json(bodies()[1])
    del data["schema_version"]
    assert parse_body(dumps(data), DeviceState).schema_version == 1


def test_oversized_body_rejected():
    data = as_json(bodies()[7])
    data["error"] = "x" * 1000
    payload = dumps(data)
    padded = payload[:-1] + b" " * (MAX_BODY_BYTES - len(payload)) + b"}"
    assert len(padded) == MAX_BODY_BYTES
    assert parse_event(padded, device=DEV).error == "x" * 1000  # at the limit: fine
    with pytest.raises(MessageError, match="limit"):
        parse_event(payload[:-1] + b" " * (MAX_BODY_BYTES - len(payload) + 1) + b"}", device=DEV)
    with pytest.raises(MessageError, match="limit"):
        parse_body(b"{" + b" " * MAX_BODY_BYTES + b"}", DeviceState)


@pytest.mark.parametrize("payload", [
    b"", b"not json", b"{", b"{'single': 'quotes'}", b"\xff\xfe\x00", b'{"device_id": "\xc3\x28"}',
    '{"device_id":"dev-1","online":true}'.encode("utf-16"),  # not UTF-8
    b"\xef\xbb\xbf{}",  # a byte-order mark
])
def test_not_json_rejected(payload):
    with pytest.raises(MessageError):
        parse_body(payload, DeviceState)
    with pytest.raises(MessageError):
        parse_event(payload, device=DEV)


@pytest.mark.parametrize("payload", [b"[]", b"[1, 2]", b'"state"', b"42", b"null", b"true", b"1.5"])
def test_non_object_json_rejected(payload):
    with pytest.raises(MessageError):
        parse_body(payload, DeviceState)
    with pytest.raises(MessageError):
        parse_event(payload, device=DEV)


@pytest.mark.parametrize("payload", [
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON decoder recurses
    b'{"a":' * 30_000 + b"1" + b"}" * 30_000,
    b'{"device_id": "dev-1", "online": true, "generation_seen": ' + b"9" * 5000 + b"}",  # int over 4300 digits
])
def test_hostile_json_is_a_message_error(payload):
    assert len(payload) <= MAX_BODY_BYTES
    with pytest.raises(MessageError):
        parse_body(payload, DeviceState)
    with pytest.raises(MessageError):
        parse_event(payload, device=DEV)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"])
def test_non_finite_numbers_rejected(number):
    # They are not JSON, re-encode as null, and PostgreSQL's json type refuses them.
    payload = encode(bodies()[4]).replace(b'"p50_ms":1.25', b'"p50_ms":' + number)
    assert number in payload
    with pytest.raises(MessageError):
        parse_event(payload, device=DEV)


def test_nul_characters_rejected():
    # PostgreSQL text columns cannot store NUL: the hub's INSERT of the batch would fail.
    for field in ("event_id", "variant_id", "error"):
        data = as_json(bodies()[5])
        data[field] = "evt-0000\u00000"
        with pytest.raises(MessageError, match="NUL"):
            parse_event(dumps(data), device=DEV)
    state = as_json(bodies()[0])
    state["runtimes"] = {"onnx\u0000runtime": "1"}
    with pytest.raises(MessageError, match="NUL"):
        parse_body(dumps(state), DeviceState)


def test_generation_must_fit_the_database():
    data = as_json(bodies()[4])
    data["generation"] = 2**31 - 1
    assert parse_event(dumps(data), device=DEV).generation == 2**31 - 1
    for bad in (2**31, 2**70, -1):
        data["generation"] = bad
        with pytest.raises(MessageError, match="generation"):
            parse_event(dumps(data), device=DEV)
    desired = as_json(bodies()[3])
    desired["generation"] = 2**40
    with pytest.raises(MessageError):
        parse_body(dumps(desired), DesiredState)


def test_field_limits():
    report = as_json(bodies()[4])
    for field, value in [("agreement", 1.5), ("agreement", -0.1), ("event_id", "short"), ("event_id", "e" * 65),
                         ("error", "x" * 2001), ("kind", "telemetry")]:
        with pytest.raises(MessageError):
            parse_event(dumps({**report, field: value}), device=DEV)
    report["latency"]["p50_ms"] = -1
    with pytest.raises(MessageError):
        parse_event(dumps(report), device=DEV)
    state = as_json(bodies()[0])
    with pytest.raises(MessageError):
        parse_body(dumps({**state, "cached_variants": ["v"] * 257}), DeviceState)
    with pytest.raises(MessageError):
        parse_body(dumps({**state, "hardware": {"arch": "x", "cores": 0, "ram_mb": 1}}), DeviceState)


def test_event_without_kind_rejected():
    data = as_json(bodies()[4])
    del data["kind"]
    with pytest.raises(MessageError):
        parse_event(dumps(data), device=DEV)


def test_event_kinds_dispatch():
    kinds = [type(parse_event(encode(b), device=DEV)) for b in bodies() if isinstance(b, EVENTS)]
    assert kinds == [BenchmarkReport, BenchmarkReport, ActivationResult, AgentError]
    with pytest.raises(MessageError):
        parse_event(encode(bodies()[0]), device=DEV)  # a state is no event


def test_error_message_is_one_safe_line():
    with pytest.raises(MessageError) as info:
        parse_body(dumps({"device_id": "Bad/Device", "online": True}), DeviceState)
    assert "\n" not in str(info.value) and "device_id" in str(info.value)


# ---- device identity -----------------------------------------------------------------------------

def test_state_naming_another_device_rejected():
    payload = encode(DeviceState(device_id="dev-2", online=True))
    with pytest.raises(MessageError, match="dev-2"):
        parse_body(payload, DeviceState, device=DEV)
    assert parse_body(payload, DeviceState, device="dev-2").device_id == "dev-2"


@pytest.mark.parametrize("body", [b for b in bodies() if isinstance(b, EVENTS)], ids=lambda b: type(b).__name__)
def test_event_naming_another_device_rejected(body):
    with pytest.raises(MessageError, match="another device|names device"):
        parse_event(encode(body), device="dev-2")


def test_desired_for_another_device_rejected():
    with pytest.raises(MessageError):
        parse_body(encode(bodies()[2]), DesiredState, device="dev-2")


def test_body_without_device_on_device_topic_rejected():
    with pytest.raises(MessageError):
        parse_body(encode(bodies()[-1]), HubState, device=DEV)


# ---- ids and topics ------------------------------------------------------------------------------

BAD_IDS = ["", "Dev-1", "DEV", "dev/1", "dev#", "dev+", "+", "#", "a" * 65, "-dev", ".dev", "_dev", "dev 1",
           "dev\n", "dev-1\n", "d\u00e9v", "dev\u0000", "dev$", "dev*"]
GOOD_IDS = ["d", "dev-1", "0", "a" * 64, "rpi4.kitchen_01", "jetson-orin-7"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_device_ids_rejected(bad):
    with pytest.raises(ValidationError):
        DeviceState(device_id=bad, online=True)
    with pytest.raises(MessageError):
        parse_body(dumps({"device_id": bad, "online": True}), DeviceState)
    with pytest.raises(MessageError):
        Topics("fleet").device_of(f"edgehub/v1/fleet/devices/{bad}/state")
    with pytest.raises(ValueError):
        Topics(bad)


@pytest.mark.parametrize("good", GOOD_IDS)
def test_valid_device_ids_accepted(good):
    assert DeviceState(device_id=good, online=True).device_id == good
    t = Topics("fleet")
    for kind in ("state", "desired", "events"):
        assert t.device_of(getattr(t, kind)(good)) == (good, kind)
    assert Topics(good).root == f"edgehub/v1/{good}"


def test_topic_names():
    t = Topics("home")
    assert t.root == "edgehub/v1/home"
    assert t.state(DEV) == "edgehub/v1/home/devices/dev-1/state"
    assert t.desired(DEV) == "edgehub/v1/home/devices/dev-1/desired"
    assert t.events(DEV) == "edgehub/v1/home/devices/dev-1/events"
    assert t.hub_state == "edgehub/v1/home/hub/state"


@pytest.mark.parametrize("topic", [
    "edgehub/v1/other/devices/dev-1/state",      # another fleet
    "edgehub/v2/home/devices/dev-1/state",       # another protocol version
    "edgehub/v1/home/devices/+/state",           # wildcards
    "edgehub/v1/home/devices/#",
    "edgehub/v1/home/devices/dev-1/#",
    "edgehub/v1/home/devices/dev-1/+",
    "edgehub/v1/home/devices/dev-1/state/extra",  # extra level
    "edgehub/v1/home/devices/dev-1",              # missing level
    "edgehub/v1/home/devices/dev-1/telemetry",    # unknown kind
    "edgehub/v1/home/hub/state",
    "edgehub/v1/home/gadgets/dev-1/state",
    "$share/edgehub/edgehub/v1/home/devices/dev-1/state",
    "/edgehub/v1/home/devices/dev-1/state",
    "edgehub/v1/home/devices//state",
    "edgehub/v1/home/devices/Dev-1/state",
    "edgehub/v1/home/devices/dev-1/state\n",
    "",
])
def test_device_of_rejects(topic):
    with pytest.raises(MessageError):
        Topics("home").device_of(topic)


def test_device_of_truncates_long_topics_in_errors():
    with pytest.raises(MessageError) as info:
        Topics("home").device_of("x" * 10_000)
    assert len(str(info.value)) < 300


# ---- property: nothing but MessageError -----------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
FIELD_NAMES = sorted({*DeviceState.model_fields, *DesiredState.model_fields, *BenchmarkReport.model_fields,
                      *ActivationResult.model_fields, *AgentError.model_fields})
KNOWN = [as_json(b) for b in bodies()]


@st.composite
def json_objects(draw) -> dict:
    if draw(st.booleans()):
        base = dict(draw(st.sampled_from(KNOWN)))  # a real body, mutated
    else:
        base = {}
    for key in draw(st.lists(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), max_size=5)):
        base[key] = draw(json_values | st.sampled_from([DEV, "dev-2", "benchmark", "activation", "error", 1]))
    if base:
        for key in draw(st.lists(st.sampled_from(sorted(base)), max_size=2)):
            base.pop(key, None)
    return base


def _only_message_errors(payload: bytes) -> None:
    for call in (lambda: parse_body(payload, DeviceState, device=DEV), lambda: parse_body(payload, DesiredState),
                 lambda: parse_body(payload, DesiredState, device=DEV), lambda: parse_event(payload, device=DEV)):
        try:
            body = call()
        except MessageError:
            continue
        # Whatever is accepted re-encodes and parses back to itself.
        assert parse_body(encode(body), type(body)) == body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_property_arbitrary_bytes(payload):
    _only_message_errors(payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_objects())
def test_property_arbitrary_json_objects(data):
    _only_message_errors(json.dumps(data).encode())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_property_arbitrary_json_values(data):
    _only_message_errors(json.dumps(data).encode())


def test_deep_nesting_rejected_shallow_recipe_accepted():
    from edgehub.protocol.wire import MAX_DEPTH

    def with_recipe(levels: int) -> bytes:
        nested: object = 1
        for _ in range(levels):
            nested = {"k": nested}
        data = as_json(bodies()[2])
        data["candidates"][0]["manifest"]["manifest"]["recipe"] = [nested]
        return dumps(data)

    ok = parse_body(with_recipe(5), DesiredState)
    assert parse_body(encode(ok), DesiredState) == ok
    with pytest.raises(MessageError, match="nests deeper"):
        parse_body(with_recipe(MAX_DEPTH + 5), DesiredState)  # would parse, but not re-encode
