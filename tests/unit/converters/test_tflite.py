"""TFLite variants of a CNN trained on real Fashion-MNIST, run by the agent's benchmark harness."""

from __future__ import annotations

import numpy as np
import pytest

from edgehub.agent.benchmark import run_benchmark
from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.onnx_model import onnx_artifact
from edgehub.converters.passes.base import NotApplicable, PassContext, run_pass
from edgehub.converters.tflite_model import read_tflite, run_tflite
from edgehub.protocol.messages import BenchmarkSettings

FAST = BenchmarkSettings(time_budget_s=0.3, warmup_runs=2, min_runs=10, threads=1)
REFERENCE_SAMPLES = 64


@pytest.fixture(scope="module")
def cnn(fmnist_cnn, tmp_path_factory) -> dict:
    """The trained SmallCNN as an ONNX root artifact with its PyTorch module, its eval data and
    fp32 outputs."""
    import torch

    from edgehub.converters.torch_passes.model_io import save_module
    from edgehub.hub.examples.nets import small_cnn

    work = tmp_path_factory.mktemp("tflite")
    model = small_cnn()
    model.load_state_dict(torch.load(str(fmnist_cnn["weights"]), weights_only=True))
    model.eval()
    with np.load(fmnist_cnn["eval"]) as npz:
        x, y = npz["x"], npz["y"]
    root = onnx_artifact(fmnist_cnn["onnx"]).model_copy(update={"torch_model": save_module(model, work / "m.pt")})
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    ctx = PassContext(workdir=work / "passes", calibration={"x": x[:256]})
    built = {q: run_pass("tflite", root, {"quantization": q}, ctx) for q in ("none", "int8")}
    refs = work / "refs.npz"
    np.savez(refs, **{"input.x": x[:REFERENCE_SAMPLES], "output.logits": logits[:REFERENCE_SAMPLES]})
    return {"root": root, "x": x, "y": y, "logits": logits, "ctx": ctx, "built": built, "refs": refs}


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


def test_fp32_tflite_runs_in_the_agent_and_matches_pytorch(cnn):
    fp32 = cnn["built"]["none"]
    assert (fp32.format, fp32.precision) == ("tflite", "fp32")
    assert [(s.name, s.dtype, s.shape) for s in fp32.inputs] == [("x", "float32", [1, 1, 28, 28])]
    result = run_benchmark(fp32.path, "tflite", cnn["refs"], FAST)
    assert result.ok, result.error
    assert result.runtime == "litert" and result.runtime_version
    assert result.agreement == 1.0 and result.max_abs_diff < 1e-3
    assert result.latency.runs >= 10 and result.latency.p50_ms > 0


def test_full_int8_has_int8_io_and_keeps_accuracy(cnn):
    int8 = cnn["built"]["int8"]
    graph = read_tflite(int8.path)
    assert [t.dtype for t in graph.inputs] == ["int8"] and [t.dtype for t in graph.outputs] == ["int8"]
    assert int8.inputs[0].dtype == "float32"  # presented as float: quantized at the boundary
    assert int8.notes["io_quantization"]["x"]["dtype"] == "int8"
    assert int8.notes["calibration_samples"] == 192 and int8.notes["int8_search"]["held_back"] == 64
    assert int8.size_bytes < cnn["built"]["none"].size_bytes / 3

    outputs = run_tflite(int8.path, {"x": cnn["x"]})[0]
    accuracy = float((outputs.argmax(1) == cnn["y"]).mean())
    torch_accuracy = float((cnn["logits"].argmax(1) == cnn["y"]).mean())
    assert accuracy > torch_accuracy - 0.02, (accuracy, torch_accuracy)
    assert _agreement(outputs, cnn["logits"]) > 0.95

    result = run_benchmark(int8.path, "tflite", cnn["refs"], FAST)
    assert result.ok, result.error
    assert result.agreement >= 0.95, result.agreement


def test_full_int8_carries_the_edgetpu_op_report(cnn):
    report = cnn["built"]["int8"].notes["edgetpu"]
    assert report["fully_mapped"] and report["tpu_ops"] == report["ops"] > 0
    assert {row["op"] for row in report["by_op"]} >= {"CONV_2D", "FULLY_CONNECTED"}


def test_fp16_and_dynamic_range_variants(cnn):
    fp32_size = cnn["built"]["none"].size_bytes
    sample = {"x": cnn["x"][:300]}
    for quantization, ratio in (("fp16", 0.6), ("dynamic_int8", 0.35)):
        variant = run_pass("tflite", cnn["root"], {"quantization": quantization}, cnn["ctx"])
        assert variant.size_bytes < fp32_size * ratio, (quantization, variant.size_bytes)
        outputs = run_tflite(variant.path, sample)[0]
        assert _agreement(outputs, cnn["logits"][:300]) > 0.97, quantization
    assert variant.notes["runtime_note"].startswith("needs ai-edge-litert")


def test_channels_last_io(cnn):
    variant = run_pass("tflite", cnn["root"], {"quantization": "none", "channels_last_io": True}, cnn["ctx"])
    assert variant.inputs[0].shape == [1, 28, 28, 1]
    assert variant.notes["layout"] == {"x": [0, 2, 3, 1]}
    graph = read_tflite(variant.path)
    assert graph.ops[0].name != "TRANSPOSE"
    outputs = run_tflite(variant.path, {"x": cnn["x"][:100]}, layout=variant.notes["layout"])[0]
    np.testing.assert_allclose(outputs, cnn["logits"][:100], atol=1e-3)


def test_onnx_only_source_is_refused_with_the_reason(cnn, tmp_path):
    onnx_only: Artifact = cnn["root"].model_copy(update={"torch_model": None})
    with pytest.raises(NotApplicable, match="needs a PyTorch source.*onnx2tf"):
        run_pass("tflite", onnx_only, {"quantization": "int8"}, PassContext(workdir=tmp_path, calibration={"x": cnn["x"]}))


def test_missing_sample_data_and_bad_config(cnn, tmp_path):
    with pytest.raises(ConversionError, match="needs sample inputs"):
        run_pass("tflite", cnn["root"], {}, PassContext(workdir=tmp_path))
    with pytest.raises(ConversionError, match="quantization"):
        run_pass("tflite", cnn["root"], {"quantization": "int4"}, PassContext(workdir=tmp_path))


def test_a_file_that_is_not_tflite(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ConversionError, match="not a TFLite model"):
        read_tflite(bad)
