"""Several models on one device (protocol v2 slots), on the real broker with a real agent process:
per-slot activation, serving, independent rollback, a slot dropped, load-labelled benchmarks,
and an agent pinned to protocol 1 that ignores v2 bodies as an agent of the previous release does."""

from __future__ import annotations

import json

import pytest
from fault_harness import agent, agent_port, http_json, wait_until
from fault_models import good_mlp, segfault_tflite

ROW = json.dumps({"inputs": {"x": [[0.1] * 16]}}).encode()


@pytest.fixture
def mini(tmp_path):
    from fault_harness import MiniHub

    hub = MiniHub(tmp_path / "minihub")
    yield hub
    hub.stop()


def activations(mini, device_id: str, slot: str | None = None) -> list[dict]:
    return [e for e in mini.event_bodies(device_id, "activation") if slot is None or e.get("slot") == slot]


def test_three_slots_activate_serve_roll_back_and_drop_independently(mini, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    config, path = mini.add_device("cam-01", tmp_path / "agents" / "cam-01")
    files = {m: good_mlp(models / f"{m}.onnx", seed=i) for i, m in enumerate(("detector", "classifier", "embedder"))}
    good = {m: mini.candidate("cam-01", f"{m}-good", onnx, references=refs, model_name=m)
            for m, (onnx, refs) in files.items()}
    segv = mini.candidate("cam-01", "classifier-segv", segfault_tflite(models / "segv.tflite"), format="tflite",
                          model_name="classifier")
    device = agent(path, tmp_path / "cam-01.log").start()
    try:
        mini.desired_slots("cam-01", 1, {m: ([c], c.variant_id) for m, c in good.items()})
        wait_until(lambda: len([e for e in activations(mini, "cam-01") if e["ok"]]) == 3, 90,
                   "three slots to activate")
        assert {e["slot"] for e in activations(mini, "cam-01")} == {"detector", "classifier", "embedder"}
        assert all(e["schema_version"] == 2 for e in activations(mini, "cam-01"))
        port = agent_port(device)
        base = f"http://127.0.0.1:{port}"
        code, listed = http_json(f"{base}/models")
        assert code == 200 and [m["model"] for m in listed["models"]] == ["classifier", "detector", "embedder"]
        assert all(m["predict"] == f"/predict/{m['model']}" and m["inputs"][0]["name"] == "x" for m in listed["models"])
        for m in good:
            code, reply = http_json(f"{base}/predict/{m}", ROW)
            assert code == 200 and reply["model"] == m and reply["variant"] == f"{m}-good"
        # Several models: a bare /predict must say which ones there are; an unknown model is a 404.
        code, reply = http_json(f"{base}/predict", ROW)
        assert code == 400 and "classifier, detector, embedder" in reply["error"]
        code, reply = http_json(f"{base}/predict/segmenter", ROW)
        assert code == 404 and "segmenter" in reply["error"]
        for _ in range(20):  # load on the other slots while the classifier's next candidate is benchmarked
            assert http_json(f"{base}/predict/detector", ROW)[0] == 200

        # The classifier's new variant crashes its health check: that slot rolls back, the others stay.
        mini.desired_slots("cam-01", 2, {"detector": ([good["detector"]], "detector-good"),
                                         "classifier": ([good["classifier"], segv], "classifier-segv"),
                                         "embedder": ([good["embedder"]], "embedder-good")})
        wait_until(lambda: activations(mini, "cam-01", "classifier")[-1]["variant_id"] == "classifier-segv", 90,
                   "the classifier's second activation")
        failed = activations(mini, "cam-01", "classifier")[-1]
        assert not failed["ok"] and failed["rolled_back_to"] == "classifier-good"
        assert len(activations(mini, "cam-01", "detector")) == 1 and len(activations(mini, "cam-01", "embedder")) == 1
        bench = next(e for e in mini.event_bodies("cam-01", "benchmark") if e["variant_id"] == "classifier-segv")
        assert bench["slot"] == "classifier" and not bench["ok"]
        assert bench["load_rpm"] >= 20  # measured while the detector served: labelled as such
        for m in good:
            code, reply = http_json(f"{base}/predict/{m}", ROW)
            assert code == 200 and reply["variant"] == f"{m}-good"
        state = json.loads((config.data_dir / "state.json").read_text())
        assert state["slots"]["classifier"]["active"]["variant_id"] == "classifier-good"
        assert state["slots"]["classifier"]["previous"] is None

        # The embedder is no longer wanted: its slot goes, the other two keep serving.
        mini.desired_slots("cam-01", 3, {"detector": ([good["detector"]], "detector-good"),
                                         "classifier": ([good["classifier"]], "classifier-good")})
        wait_until(lambda: [m["model"] for m in http_json(f"{base}/models")[1]["models"]] == ["classifier", "detector"],
                   30, "the embedder's slot to go")
        assert http_json(f"{base}/predict/embedder", ROW)[0] == 404
        assert http_json(f"{base}/predict/detector", ROW)[0] == 200
        assert device.alive()
    finally:
        device.stop()


def test_an_agent_pinned_to_protocol_1_ignores_slots_and_serves_one_model(mini, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    onnx, refs = good_mlp(models / "m.onnx")
    config, path = mini.add_device("old-01", tmp_path / "agents" / "old-01", protocol=1)
    candidate = mini.candidate("old-01", "m-good", onnx, references=refs)
    device = agent(path, tmp_path / "old-01.log").start()
    try:
        mini.desired_slots("old-01", 1, {"m": ([candidate], "m-good")})
        wait_until(lambda: "speaks version 1" in device.log(), 30, "the v2 body to be refused")
        assert not mini.event_bodies("old-01")
        mini.desired("old-01", 2, [candidate], activate="m-good")
        wait_until(lambda: any(e["ok"] for e in activations(mini, "old-01")), 60, "the v1 activation")
        # What it sends is what a one-model agent sent: schema version 1, no slot, no load label.
        for event in mini.event_bodies("old-01"):
            assert event["schema_version"] == 1 and "slot" not in {k for k, v in event.items() if v is not None}
        code, reply = http_json(f"http://127.0.0.1:{agent_port(device)}/predict", ROW)
        assert code == 200 and reply["variant"] == "m-good"
    finally:
        device.stop()
