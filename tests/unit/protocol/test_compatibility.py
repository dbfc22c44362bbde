"""Variant requirements against a device's runtimes (pure), read off real files, kept in the signed
manifest without breaking manifests signed before requirements existed, and applied by the hub's
candidate filter."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from edgehub.hub.control.candidates import loadable
from edgehub.protocol.compatibility import Requirements, unmet, version_tuple
from edgehub.protocol.manifest import Manifest, TensorSpec, verify_manifest
from edgehub.zoo.records import VariantRecord
from edgehub.zoo.signing import HubKey

OPSET21 = Requirements(runtimes=["onnxruntime"], onnx_ir=10, onnx_opset=21)


def test_version_tuples():
    assert version_tuple("1.17.3") == (1, 17, 3)
    assert version_tuple("v2.14.0rc1") == (2, 14, 0)
    assert version_tuple("1.20.1+cu121") == (1, 20, 1)
    assert version_tuple("dev") == ()


@pytest.mark.parametrize("version, refused", [
    ("1.16.3", True),   # opset 19, IR 9
    ("1.17.0", True),   # opset 20
    ("1.18.1", False),  # opset 21, IR 10
    ("1.32.0", False),  # newer than the table: not refused
    ("1.9.0", True),    # older than any known release
])
def test_onnx_opset_and_ir_against_the_runtime_version(version, refused):
    why = unmet(OPSET21, {"onnxruntime": version})
    assert (why is not None) == refused
    if refused:
        assert version in why


def test_tflite_min_runtime_against_tflite_runtime_and_litert():
    req = Requirements(runtimes=["litert", "tflite-runtime"], tflite_min_runtime="2.16.0")
    assert "tflite-runtime 2.14.0" in unmet(req, {"tflite-runtime": "2.14.0"})
    assert unmet(req, {"tflite-runtime": "2.16.1"}) is None
    # One runtime that can is enough; LiteRT runs at least TF 2.18's kernels.
    assert unmet(req, {"tflite-runtime": "2.14.0", "litert": "2.3.0"}) is None
    assert unmet(Requirements(runtimes=["litert"], tflite_min_runtime="2.99.0"), {"litert": "2.3.0"}) is not None


@pytest.mark.parametrize("version, refused", [
    ("8.6.1", True),    # opset <= 17
    ("10.0.1", False),  # opset <= 20
    ("10.3.0", False),  # between rows: judged by 10.0's
    ("12.0.0", False),  # newer than the table
    ("7.1.3", True),    # before Q/DQ int8
])
def test_tensorrt_parser_opset_against_the_tensorrt_version(version, refused):
    req = Requirements(runtimes=["tensorrt"], onnx_ir=9, onnx_opset=19)
    why = unmet(req, {"tensorrt": version})
    assert (why is not None) == refused
    if refused:
        assert f"TensorRT {version}" in why


def test_edgetpu_runtime_version_against_the_compilers_target():
    req = Requirements(runtimes=["edgetpu"], edgetpu_min_runtime=14)
    old = "BuildLabel(COMPILER=6.2.1 20200217,DATE=redacted,TIME=redacted), RuntimeVersion(13)"
    assert "version 13" in unmet(req, {"edgetpu": old})
    assert unmet(req, {"edgetpu": old.replace("(13)", "(14)")}) is None
    assert unmet(req, {"edgetpu": "libedgetpu.so.1.0"}) is None  # unreadable: the device's load decides
    assert unmet(Requirements(runtimes=["edgetpu"]), {"edgetpu": old}) is None


def test_edgetpu_requirement_comes_from_the_compiler_target(tmp_path):
    from edgehub.converters.requirements import requirements_of

    path = tmp_path / "m_edgetpu.tflite"
    path.write_bytes(b"")
    assert requirements_of(path, "edgetpu", {"min_runtime_version": 13}).edgetpu_min_runtime == 13
    assert requirements_of(path, "edgetpu", {"min_runtime_version": None}).edgetpu_min_runtime is None


def test_absent_runtimes_and_no_requirements_are_left_to_the_profile():
    assert unmet(OPSET21, {"simulated": "0.1.0"}) is None
    assert unmet(None, {"onnxruntime": "1.10.0"}) is None


def test_requirements_read_off_real_files(tiny_mlp, tmp_path):
    from edgehub.converters.requirements import requirements_of

    onnx_req = requirements_of(Path(tiny_mlp["onnx"]), "onnx")
    assert onnx_req.runtimes == ["onnxruntime"] and onnx_req.onnx_opset >= 17 and onnx_req.onnx_ir >= 7
    trt = requirements_of(Path(tiny_mlp["onnx"]), "tensorrt")
    assert trt.runtimes == ["tensorrt"] and trt.onnx_opset == onnx_req.onnx_opset


def test_tflite_min_runtime_read_off_a_converted_file(tmp_path):
    litert_torch = pytest.importorskip("litert_torch")
    import torch

    from edgehub.converters.requirements import requirements_of

    net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
    path = tmp_path / "m.tflite"
    litert_torch.convert(net.eval(), (torch.zeros(1, 8),)).export(str(path))
    req = requirements_of(path, "tflite")
    assert req.runtimes == ["litert", "tflite-runtime"]
    assert req.tflite_min_runtime and version_tuple(req.tflite_min_runtime) >= (1, 5)


def _manifest(**extra) -> Manifest:
    return Manifest(variant_id="m-v1-fp32", model="m", version=1, format="onnx", precision="fp32", sha256="0" * 64,
                    size_bytes=10, inputs=[TensorSpec(name="x", dtype="float32", shape=[1, 8])],
                    outputs=[TensorSpec(name="y", dtype="float32", shape=[1, 4])],
                    created_at=datetime(2026, 1, 1, tzinfo=timezone.utc).isoformat(), **extra)


def test_manifests_signed_before_requirements_still_verify(tmp_path):
    key = HubKey.load_or_create(tmp_path / "keys")
    old = key.sign(_manifest())
    assert b"requires" not in old.manifest.canonical_bytes()
    # As stored and sent: through JSON, where the unset field appears as null.
    again = type(old).model_validate_json(old.model_dump_json())
    assert verify_manifest(again, key.public_raw).requires is None
    new = key.sign(_manifest(requires=OPSET21))
    assert verify_manifest(type(new).model_validate_json(new.model_dump_json()), key.public_raw).requires == OPSET21
    # The requirement is signed: changing it breaks the signature.
    forged = new.model_copy(update={"manifest": new.manifest.model_copy(update={"requires": None})})
    with pytest.raises(Exception, match="signature"):
        verify_manifest(forged, key.public_raw)


def test_the_hub_sends_only_what_the_device_can_load(tmp_path):
    key = HubKey.load_or_create(tmp_path / "keys")

    def variant(label: str, requires: Requirements | None) -> VariantRecord:
        m = _manifest(requires=requires).model_copy(update={"variant_id": f"m-v1-{label}"})
        return VariantRecord(id=m.variant_id, model="m", version=1, parent=None, label=label, profiles=["x86-cpu"],
                             recipe=[], format="onnx", precision="fp32", size_bytes=10, sha256="0" * 64,
                             inputs=m.inputs, outputs=m.outputs, metrics={}, references_sha256=None,
                             signed_manifest=key.sign(m), created_at=datetime.now(timezone.utc), notes={})

    variants = [variant("fp32", Requirements(runtimes=["onnxruntime"], onnx_ir=8, onnx_opset=17)),
                variant("new-ops", OPSET21), variant("old", None)]
    ok, refused = loadable(variants, {"onnxruntime": "1.16.3"})
    assert [v.id for v in ok] == ["m-v1-fp32", "m-v1-old"]
    assert list(refused) == ["m-v1-new-ops"] and "opset 21" in refused["m-v1-new-ops"]
    ok, refused = loadable(variants, {"onnxruntime": "1.20.0"})
    assert len(ok) == 3 and refused == {}
    assert np.all([v.signed_manifest is not None for v in ok])
