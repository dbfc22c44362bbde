"""The agent's model slots, the pure parts: a one-model state file read as a slot, per-slot
activation and rollback, the request-rate meter, per-slot telemetry intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgehub.agent.activation import activate
from edgehub.agent.load import RequestRates
from edgehub.agent.local_state import InstalledVariant, LocalState, StateFile
from edgehub.agent.serving import BadRequest, ModelShelf, NoSuchModel
from edgehub.agent.telemetry import FieldRecorder
from edgehub.protocol.manifest import Manifest, SignedManifest, TensorSpec


def installed(tmp_path, variant_id: str, model: str) -> InstalledVariant:
    manifest = Manifest(variant_id=variant_id, model=model, version=1, format="onnx", precision="fp32",
                        sha256="0" * 64, size_bytes=1, inputs=[TensorSpec(name="x", dtype="float32", shape=[1, 4])],
                        outputs=[TensorSpec(name="y", dtype="float32", shape=[1, 2])], created_at="2026-01-01")
    return InstalledVariant(variant_id=variant_id, sha256="0" * 64, format="onnx", path=tmp_path / f"{variant_id}.onnx",
                            manifest=SignedManifest(manifest=manifest, signature="c2ln", key_id="0" * 16))


def test_a_one_model_state_file_becomes_that_models_slot(tmp_path):
    old = {"active": installed(tmp_path, "cls-int8", "cls").model_dump(mode="json"),
           "previous": installed(tmp_path, "cls-fp32", "cls").model_dump(mode="json"),
           "installed": {}, "benchmarked": {"cls-int8": "0" * 64}, "generation_seen": 7}
    (tmp_path / "state.json").write_text(json.dumps(old))
    store = StateFile(tmp_path / "state.json")
    state = store.load()
    assert set(state.slots) == {"cls"} and state.slots["cls"].active.variant_id == "cls-int8"
    assert state.slots["cls"].previous.variant_id == "cls-fp32" and state.generation_seen == 7
    assert state.protected() == {"cls-int8", "cls-fp32"}
    store.save(state)
    assert "active" not in json.loads((tmp_path / "state.json").read_text())  # written in the slot layout
    assert store.load() == state


def test_activation_and_rollback_touch_only_their_slot(tmp_path):
    store = StateFile(tmp_path / "state.json")
    state = LocalState()
    for v, m in (("a1", "a"), ("b1", "b")):
        assert activate(state, store, installed(tmp_path, v, m), check=lambda _: None).ok
    outcome = activate(state, store, installed(tmp_path, "b2", "b"), check=lambda _: "outputs disagree")
    assert not outcome.ok and outcome.rolled_back_to == "b1"
    assert {m: s.active.variant_id for m, s in store.load().slots.items()} == {"a": "a1", "b": "b1"}
    assert activate(state, store, installed(tmp_path, "a2", "a"), check=lambda _: None).ok
    loaded = store.load()
    assert loaded.slots["a"].previous.variant_id == "a1" and loaded.slots["b"].previous is None
    assert list(loaded.active_variants()) == ["a", "b"]


def test_request_rates_count_a_minute_per_slot():
    now = [1000.0]
    rates = RequestRates(clock=lambda: now[0])
    for _ in range(30):
        rates.count("a")
    now[0] += 30
    for _ in range(10):
        rates.count("b")
    assert rates.per_minute("a") == 30 and rates.others_per_minute("a") == 10 and rates.others_per_minute(None) == 40
    now[0] += 40  # a's requests are 70 s old now
    assert rates.per_minute("a") == 0 and rates.others_per_minute("b") == 0 and rates.per_minute("b") == 10
    now[0] += 3600  # a bucket reused an hour later starts from zero
    rates.count("b")
    assert rates.per_minute("b") == 1 and rates.per_minute("never") == 0


def test_the_shelf_names_the_slot_to_use(tmp_path):
    active = {"a": installed(tmp_path, "a1", "a")}
    shelf = ModelShelf(lambda: dict(active))
    assert shelf.holder(None)[0] == "a" and shelf.holder("a")[0] == "a"
    with pytest.raises(NoSuchModel, match="no active model 'z'.*serves a"):
        shelf.holder("z")
    active["b"] = installed(tmp_path, "b1", "b")
    with pytest.raises(BadRequest, match="serves 2 models.*a, b"):
        shelf.holder(None)
    active.clear()
    with pytest.raises(LookupError, match="no active model on this device"):
        shelf.holder(None)


def test_telemetry_intervals_are_per_slot_with_their_own_reference():
    from edgehub.protocol.telemetry import FieldReference, Reference

    recorder = FieldRecorder()
    recorder.configure(None, slots={"a": FieldReference(inputs={"x": Reference(edges=[0.5], proportions=[0.5, 0.5])})})
    recorder.record("a1", {"x": np.full((1, 4), 0.9, np.float32)}, {}, 1.0, slot="a")
    recorder.record("b1", {"x": np.zeros((1, 4), np.float32)}, {}, 2.0, slot="b")
    recorder.error("b1", "inference", slot="b")
    recorder.flush()
    events = {e.slot: e for e in recorder.take("cam-01", 3)}
    assert set(events) == {"a", "b"} and events["a"].variant_id == "a1"
    assert events["a"].stats.inputs[0].hist == [0, 1]  # binned with a's reference
    assert events["b"].stats.inputs[0].hist == [] and events["b"].stats.errors == {"inference": 1}
