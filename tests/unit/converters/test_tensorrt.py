"""TensorRT: the hub's TensorRT-ready ONNX pass, the engine settings and cache keys, and the device
runtime's clear refusal where TensorRT is not installed (it cannot be installed here)."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from paths import REPO_ROOT

from edgehub.agent.benchmark import run_benchmark
from edgehub.agent.runtimes import RuntimeUnavailable, runtime_for
from edgehub.agent.runtimes.tensorrt_rt import (
    EngineCache,
    TensorRTRuntime,
    cache_dir_for,
    engine_cache_key,
    engine_settings,
    onnx_metadata,
)
from edgehub.converters.errors import ConversionError
from edgehub.converters.onnx_model import onnx_artifact
from edgehub.converters.passes.base import PassContext, run_pass
from edgehub.protocol.messages import BenchmarkSettings
from edgehub.protocol.tensorrt_settings import METADATA_KEY, EngineSettings, ProfileShapes

NO_TENSORRT = importlib.util.find_spec("tensorrt") is None


@pytest.fixture(scope="module")
def mlp(tiny_mlp, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("trt")
    ctx = PassContext(workdir=work, calibration={"x": tiny_mlp["x"][:128]})
    root = onnx_artifact(tiny_mlp["onnx"])
    return {"root": root, "ctx": ctx, "x": tiny_mlp["x"],
            "int8_sym": run_pass("int8_static", root, {"scheme": "s8s8-symmetric"}, ctx),
            "int8_u8": run_pass("int8_static", root, {"scheme": "reduce_range"}, ctx)}


def _run(path, x) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def test_static_fp32_variant_keeps_the_function_and_carries_its_settings(mlp):
    variant = run_pass("tensorrt_ready", mlp["root"], {}, mlp["ctx"])
    assert (variant.format, variant.precision) == ("tensorrt", "fp32")
    assert variant.inputs[0].shape == [1, 64] and variant.outputs[0].shape == [1, 10]
    np.testing.assert_allclose(_run(variant.path, mlp["x"][:20]), _run(mlp["root"].path, mlp["x"][:20]), rtol=1e-5)
    data = variant.path.read_bytes()
    # The device reads the settings without the onnx package; both readings agree.
    ours = onnx_metadata(data)
    theirs = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    assert ours == theirs and METADATA_KEY in ours
    assert engine_settings(data) == EngineSettings(precision="fp32") and variant.notes["builder_flags"] == []


def test_fp16_is_a_builder_flag_on_fp32_weights(mlp):
    variant = run_pass("tensorrt_ready", mlp["root"], {"precision": "fp16", "workspace_mb": 256}, mlp["ctx"])
    settings = engine_settings(variant.path.read_bytes())
    assert variant.precision == "fp16" and settings.builder_flags == ["FP16"] and settings.workspace_mb == 256
    assert {i.data_type for i in onnx.load(str(variant.path)).graph.initializer} == {onnx.TensorProto.FLOAT}


def test_optimization_profile_keeps_the_batch_dynamic(mlp):
    variant = run_pass("tensorrt_ready", mlp["root"], {"shapes": "profile", "batch": 4, "max_batch": 32}, mlp["ctx"])
    assert variant.inputs[0].shape == ["batch", 64]
    assert engine_settings(variant.path.read_bytes()).profiles == {
        "x": ProfileShapes(min=[1, 64], opt=[4, 64], max=[32, 64])}


def test_int8_needs_explicit_symmetric_qdq(mlp):
    variant = run_pass("tensorrt_ready", mlp["int8_sym"], {}, mlp["ctx"])
    assert variant.precision == "int8" and variant.notes["qdq_nodes"] > 0 and variant.notes["per_channel_qdq"] > 0
    assert variant.notes["bias_dequantize_folded"] > 0  # int32 bias Q/DQ folded to float
    # Still the same function (ONNX Runtime runs the rewritten graph).
    np.testing.assert_allclose(_run(variant.path, mlp["x"][:20]), _run(mlp["int8_sym"].path, mlp["x"][:20]),
                               atol=1e-4)
    settings = engine_settings(variant.path.read_bytes())
    assert settings.explicit_quantization and settings.builder_flags == ["INT8", "FP16"]
    with pytest.raises(ConversionError, match="s8s8-symmetric"):
        run_pass("tensorrt_ready", mlp["int8_u8"], {}, mlp["ctx"])


def test_qoperator_and_implicit_int8_are_refused(mlp):
    dynamic = run_pass("int8_dynamic", mlp["root"], {}, mlp["ctx"])
    with pytest.raises(ConversionError, match="QOperator|explicit"):
        run_pass("tensorrt_ready", dynamic, {}, mlp["ctx"])
    with pytest.raises(ConversionError, match="needs an int8 QDQ parent"):
        run_pass("tensorrt_ready", mlp["root"], {"precision": "int8"}, mlp["ctx"])


def test_dynamic_dims_without_sample_data(tiny_mlp, tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ConversionError, match="dynamic dimension 1 \\('seq'\\)"):
        run_pass("tensorrt_ready", onnx_artifact(path), {}, PassContext(workdir=tmp_path))
    sized = run_pass("tensorrt_ready", onnx_artifact(path), {},
                     PassContext(workdir=tmp_path, calibration={"x": np.zeros((3, 12), np.float32)}))
    assert sized.inputs[0].shape == [1, 12] and sized.outputs[0].shape == [1, 12]


def test_cache_key_changes_with_every_component():
    base = dict(model_sha256="a" * 64, tensorrt_version="10.3.0", gpu="Orin", settings=EngineSettings())
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**base) and len(key) == 64
    for change in ({"model_sha256": "b" * 64}, {"tensorrt_version": "10.4.0"}, {"gpu": "Xavier"},
                   {"settings": EngineSettings(precision="fp16")}):
        assert engine_cache_key(**{**base, **change}) != key, change


def test_engine_cache_roundtrip_and_damage(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    assert cache.get("k") is None
    cache.put("k", b"engine-bytes", {"build_ms": 1234.5})
    assert cache.get("k") == (b"engine-bytes", {"build_ms": 1234.5})
    (tmp_path / "engines" / "k.json").write_text("{broken")
    assert cache.get("k") is None  # rebuilt rather than trusted


def test_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEHUB_TENSORRT_CACHE", raising=False)
    assert cache_dir_for(tmp_path / "abc.bin") == tmp_path / "tensorrt-engines"
    monkeypatch.setenv("EDGEHUB_TENSORRT_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir_for(tmp_path / "abc.bin") == tmp_path / "elsewhere"


def test_metadata_reader_errors():
    with pytest.raises(ValueError, match="not a readable ONNX"):
        engine_settings(b"\x0a\xff\xff")  # a length-delimited field running past the end
    assert engine_settings(b"") == EngineSettings()  # a plain model: defaults
    bad = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    bad.metadata_props.add(key=METADATA_KEY, value='{"precision": "int4"}')
    with pytest.raises(ValueError, match="bad edgehub.tensorrt settings"):
        engine_settings(bad.SerializeToString())


@pytest.mark.skipif(not NO_TENSORRT, reason="TensorRT is installed here")
def test_runtime_without_tensorrt_is_a_clear_refusal(mlp):
    runtime = TensorRTRuntime()
    assert not runtime.available()
    with pytest.raises(RuntimeUnavailable, match="TensorRT is not installed"):
        runtime.version()
    with pytest.raises(RuntimeUnavailable, match="TensorRT is not installed"):
        runtime.load(mlp["root"].path)
    with pytest.raises(RuntimeUnavailable, match="runs tensorrt models"):
        runtime_for("tensorrt")
    variant = run_pass("tensorrt_ready", mlp["root"], {}, mlp["ctx"])
    result = run_benchmark(variant.path, "tensorrt", None, BenchmarkSettings(time_budget_s=0.2, min_runs=5))
    assert not result.ok and "no runtime on this device runs tensorrt models" in result.error


def test_the_engine_module_is_the_only_tensorrt_import():
    import ast

    agent = REPO_ROOT / "agent"
    importers = sorted(p.name for p in agent.rglob("*.py")
                       if any(isinstance(n, ast.Import) and any(a.name == "tensorrt" for a in n.names)
                              for n in ast.walk(ast.parse(p.read_text()))))
    assert importers == ["tensorrt_engine.py"]


def test_builtin_profiles_describe_the_device_families():
    from edgehub.zoo.profiles import BUILTIN_PROFILES as P

    for name in ("jetson-orin-nano", "jetson-xavier-nx", "jetson-nano"):
        assert "tensorrt" in P[name].formats and P[name].runtimes[0] == "tensorrt" and P[name].tensorrt_workspace_mb
    assert P["jetson-xavier-nx"].dla_cores == 2 and P["jetson-orin-nano"].dla_cores == 0
    assert P["coral-edgetpu"].runtimes == ["edgetpu", "litert"]
    assert P["apple-coreml"].coreml_target == "macOS13" and P["apple-coreml"].runtimes[0] == "coreml"
    assert all("litert" in P[n].runtimes for n in ("rpi4", "rpi5", "arm64-cpu"))
