"""The agent's LiteRT runtime: registry, sessions (quantized I/O as floats), and the reference check
that catches an interpreter computing a variant wrongly (what tflite-runtime 2.14 does to some
dynamic-range models)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from digits_models import shared_digits

from edgehub.agent.benchmark import run_benchmark
from edgehub.agent.runtimes import (
    RUNTIMES,
    RuntimeUnavailable,
    available_runtimes,
    runtime_for,
)
from edgehub.agent.runtimes.litert_rt import LiteRT, TfliteRuntimeFallback
from edgehub.hub.control.selection import CandidateFacts, Policy, select_variant
from edgehub.protocol.messages import BenchmarkReport, BenchmarkSettings, Latency

FAST = BenchmarkSettings(time_budget_s=0.2, warmup_runs=2, min_runs=10, threads=1)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    import torch

    from edgehub.converters.torch_passes.model_io import load_module

    work = tmp_path_factory.mktemp("litert")
    shared = shared_digits()
    x, y = shared["x"], shared["y"]
    with torch.no_grad():
        logits = load_module(shared["root"].torch_model)(torch.from_numpy(x[1400:])).numpy()
    refs = work / "refs.npz"
    np.savez(refs, **{"input.x": x[1400:1500], "output.logits": logits[:100]})
    return {"variants": shared["tflite"], "x": x[1400:], "y": y[1400:], "logits": logits, "refs": refs, "work": work}


def test_litert_is_listed_and_preferred_for_tflite():
    import importlib.metadata

    import ai_edge_litert  # noqa: F401  (installed here)

    assert available_runtimes()["litert"] == importlib.metadata.version("ai-edge-litert")
    assert runtime_for("tflite").name == "litert"
    names = list(RUNTIMES)
    assert names.index("litert") < names.index("tflite-runtime")  # the fallback only where LiteRT is absent


def test_fallback_runtime_reports_itself_absent():
    fallback = TfliteRuntimeFallback()
    if fallback.available():
        pytest.skip("tflite-runtime is installed here")
    with pytest.raises(RuntimeUnavailable, match="tflite-runtime is not installed"):
        fallback.version()
    assert "tflite-runtime" not in available_runtimes()


def test_runtimes_stay_unimported_until_used():
    code = ("import sys, edgehub.agent.runtimes as r\n"
            "assert 'litert' in r.available_runtimes()\n"
            "loaded = [m for m in ('ai_edge_litert', 'tflite_runtime', 'tensorrt', 'coremltools') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_session_presents_int8_io_as_float(digits):
    variant = digits["variants"]["int8"]
    session = LiteRT().load(variant.path, threads=1)
    # nn.Sequential's forward() names its input 'input', not 'x': the signature keeps the position.
    assert [(s.dtype, s.shape) for s in session.inputs] == [("float32", [1, 1, 8, 8])]
    assert session.inputs == variant.inputs and session.outputs == variant.outputs
    assert session.outputs[0].dtype == "float32"
    assert session.describe() == {"providers": ["XNNPACK"], "threads": 1}
    x = digits["x"][:1]
    name = session.inputs[0].name
    (from_float,) = session.run({name: x})
    # Feeding the already-quantized int8 tensor gives the same result (passed through untouched).
    quant = variant.notes["io_quantization"][session.inputs[0].name]
    q = np.clip(np.round(x / quant["scale"]) + quant["zero_point"], -128, 127).astype(np.int8)
    (from_int8,) = session.run({name: q})
    np.testing.assert_array_equal(from_float, from_int8)
    assert from_float.dtype == np.float32 and np.abs(from_float).max() > 0


def test_fixed_batch_model_rejects_nothing_the_benchmark_feeds(digits):
    # The reference check feeds one sample at a time to batch-1 models (its fixed_batch path).
    result = run_benchmark(digits["variants"]["none"].path, "tflite", digits["refs"], FAST)
    assert result.ok, result.error
    assert result.agreement == 1.0 and result.threads == 1


def _corrupt_weights(path, out):
    """Flip the sign of every int8 weight: what an interpreter with a broken dynamic-range kernel
    computes, in effect."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    graph = model.subgraphs[0]
    flipped = 0
    for tensor in graph.tensors:
        data = model.buffers[tensor.buffer].data if tensor.buffer else None
        if tensor.type == schema.TensorType.INT8 and data is not None and len(data) > 256:
            values = np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype=np.int8)
            model.buffers[tensor.buffer].data = (-values.astype(np.int16)).clip(-127, 127).astype(np.int8).view(np.uint8)
            flipped += 1
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out.write_bytes(builder.Output())
    assert flipped
    return out


def test_reference_check_flags_wrong_numbers_and_selection_rejects_them(digits):
    good = digits["variants"]["dynamic_int8"]
    bad = _corrupt_weights(good.path, digits["work"] / "wrong.tflite")
    reports = {}
    for variant_id, path in (("dyn", good.path), ("wrong", bad)):
        result = run_benchmark(path, "tflite", digits["refs"], FAST)
        assert result.ok, result.error  # it runs: only the numbers are wrong
        reports[variant_id] = BenchmarkReport(event_id=f"event-{variant_id}", device_id="pi-1", generation=1,
                                              variant_id=variant_id, **result.model_dump())
    assert reports["dyn"].agreement >= 0.97
    assert reports["wrong"].agreement < 0.5
    # Make the wrong one the fastest, so only the reference check can keep it out.
    reports["wrong"].latency = Latency(p50_ms=0.001, p90_ms=0.001, p99_ms=0.001, mean_ms=0.001, runs=10)
    selection = select_variant([CandidateFacts(variant_id="dyn", size_bytes=good.size_bytes),
                                CandidateFacts(variant_id="wrong", size_bytes=bad.stat().st_size)], reports, Policy())
    assert selection.winner == "dyn"
    wrong = next(v for v in selection.verdicts if v.variant_id == "wrong")
    assert not wrong.eligible and "computes this variant wrongly" in wrong.reason


def test_corrupt_file_fails_cleanly(digits):
    bad = digits["work"] / "garbage.tflite"
    bad.write_bytes(b"TFL3" * 100)
    result = run_benchmark(bad, "tflite", None, FAST)
    assert not result.ok and result.runtime == "litert" and "loading garbage.tflite failed" in result.error
