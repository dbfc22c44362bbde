"""The agent checks a candidate's signed requirements against its own runtimes before any
download: a variant its runtime cannot load is reported as such, and nothing is fetched."""

from __future__ import annotations

from edgehub.agent.config import AgentConfig
from edgehub.agent.local_state import StateFile
from edgehub.agent.reconciler import Reconciler
from edgehub.protocol.compatibility import Requirements
from edgehub.protocol.manifest import Manifest, TensorSpec
from edgehub.protocol.messages import BenchmarkReport, Candidate, DesiredState
from edgehub.zoo.signing import HubKey


def test_a_candidate_the_runtime_cannot_load_is_reported_without_a_download(tmp_path):
    key = HubKey.load_or_create(tmp_path / "keys")
    manifest = Manifest(variant_id="m-v1-new", model="m", version=1, format="onnx", precision="fp32", sha256="a" * 64,
                        size_bytes=100, inputs=[TensorSpec(name="x", dtype="float32", shape=[1, 4])],
                        outputs=[TensorSpec(name="y", dtype="float32", shape=[1, 2])], created_at="2026-01-01",
                        requires=Requirements(runtimes=["onnxruntime"], onnx_ir=10, onnx_opset=21))
    # Nothing listens on port 9: a download attempt would surface as a download error, not a report.
    candidate = Candidate(variant_id="m-v1-new", url="http://127.0.0.1:9/a", sha256="a" * 64, size_bytes=100,
                          format="onnx", precision="fp32", manifest=key.sign(manifest))
    config = AgentConfig(device_id="pi-01", profile="rpi5", broker_url="mqtt://127.0.0.1:9", username="pi-01",
                         password="p", hub_public_key=key.public_b64, data_dir=tmp_path / "agent")
    events: list = []
    reconciler = Reconciler(config, StateFile(tmp_path / "agent" / "state.json"), events.append,
                            runtimes={"onnxruntime": "1.16.3"})
    desired = DesiredState(device_id="pi-01", generation=1, model="m", version=1, candidates=[candidate])
    assert reconciler.reconcile(desired)
    [report] = events
    assert isinstance(report, BenchmarkReport) and not report.ok
    assert report.error.startswith("cannot run here: onnxruntime 1.16.3 runs ONNX opset <= 19"), report.error
    assert not list((tmp_path / "agent").rglob("*.onnx"))

    # The same candidate on a runtime that can: it goes on to the download (which fails here).
    events.clear()
    reconciler.runtimes = {"onnxruntime": "1.18.0"}
    reconciler.state.benchmarked.clear()
    assert not reconciler.reconcile(desired.model_copy(update={"generation": 2}))
    assert events and "download failed" in events[0].error
