"""run_benchmark: real measurements in a child process, and every way a child can fail."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgehub.agent import benchmark
from edgehub.agent.benchmark import BenchResult, effective_memory_limit_mb, run_benchmark, to_report
from edgehub.protocol.messages import BenchmarkSettings
from edgehub.protocol.wire import encode, parse_event

FAST = dict(time_budget_s=0.3, warmup_runs=3, min_runs=20)


def _export(model, example, path: Path, dynamic: bool) -> Path:
    import torch

    axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes=axes)
    return path


def _references(model_path: Path, x: np.ndarray, path: Path) -> Path:
    """Reference outputs computed with ONNX Runtime directly, one sample at a time."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_path))
    y = np.concatenate([session.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    np.savez(path, **{"input.x": x, "output.y": y})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    import torch
    from onnx import TensorProto, helper, numpy_helper, save

    out = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 10),
    ).eval()
    rng = np.random.default_rng(0)
    x_mlp = rng.standard_normal((40, 16)).astype(np.float32)
    x_cnn = rng.standard_normal((12, 1, 28, 28)).astype(np.float32)
    paths = {
        "mlp": _export(mlp, torch.randn(2, 16), out / "mlp.onnx", dynamic=True),
        "cnn_fixed1": _export(cnn, torch.randn(1, 1, 28, 28), out / "cnn.onnx", dynamic=False),
    }
    paths["mlp_refs"] = _references(paths["mlp"], x_mlp, out / "mlp-refs.npz")
    paths["cnn_refs"] = _references(paths["cnn_fixed1"], x_cnn, out / "cnn-refs.npz")

    # Wrong references: for every other sample the stored top-1 class is moved elsewhere.
    with np.load(paths["mlp_refs"]) as refs:
        y = refs["output.y"].copy()
    y[::2] = np.roll(y[::2], 3, axis=-1)
    np.savez(out / "wrong-refs.npz", **{"input.x": x_mlp, "output.y": y})
    paths["wrong_refs"] = out / "wrong-refs.npz"

    # Expand a [1, 1] input to [50000, 50000] float32 (10 GB) at run time; it depends on the
    # input, so constant folding cannot do it at load.
    shape = numpy_helper.from_array(np.array([50000, 50000], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["big"]),
         helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0)],
        "hog", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [shape],
    )
    hog = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    hog.ir_version = 8
    save(hog, out / "hog.onnx")
    paths["hog"] = out / "hog.onnx"

    # The same MLP seen as an embedding model (references stored under an embedding's name), and
    # references that a runtime computing wrongly would disagree with: the direction is off.
    with np.load(paths["mlp_refs"]) as refs:
        np.savez(out / "embed-refs.npz", **{"input.x": x_mlp, "output.embedding": refs["output.y"]})
        np.savez(out / "embed-wrong.npz", **{"input.x": x_mlp,
                                             "output.embedding": refs["output.y"] + rng.normal(0, 3, refs["output.y"].shape)})
    paths["embed_refs"], paths["embed_wrong"] = out / "embed-refs.npz", out / "embed-wrong.npz"

    (out / "corrupt.onnx").write_bytes(b"\x08\x07this is not a protobuf" * 50)
    paths["corrupt"] = out / "corrupt.onnx"
    return paths


def _check_measured(result: BenchResult, settings: BenchmarkSettings) -> None:
    assert result.ok, result.error
    lat = result.latency
    assert 0 < lat.p50_ms <= lat.p90_ms <= lat.p99_ms
    assert lat.mean_ms > 0 and lat.runs >= settings.min_runs
    assert result.load_ms > 0 and result.warmup_ms > 0 and result.throughput_per_s > 0
    assert result.peak_rss_mb > 0
    assert result.runtime == "onnxruntime" and result.runtime_version


def test_mlp_measures_and_agrees_with_references(models):
    settings = BenchmarkSettings(threads=1, **FAST)
    result = run_benchmark(models["mlp"], "onnx", models["mlp_refs"], settings)
    _check_measured(result, settings)
    assert result.threads == 1
    assert result.agreement == 1.0 and result.max_abs_diff < 1e-5
    report = to_report(result, "evt-00000001", "dev-1", 3, "mlp-fp32")
    assert parse_event(encode(report), device="dev-1") == report


def test_fixed_batch_cnn_is_checked_sample_by_sample(models):
    settings = BenchmarkSettings(**FAST)
    result = run_benchmark(models["cnn_fixed1"], "onnx", models["cnn_refs"], settings)
    _check_measured(result, settings)
    assert result.agreement == 1.0 and result.threads == 0


def test_without_references_runs_a_random_input(models):
    result = run_benchmark(models["mlp"], "onnx", None, BenchmarkSettings(**FAST))
    assert result.ok and result.agreement is None and result.max_abs_diff is None


def test_wrong_references_lower_agreement(models):
    result = run_benchmark(models["mlp"], "onnx", models["wrong_refs"], BenchmarkSettings(**FAST))
    assert result.ok
    assert result.agreement == pytest.approx(0.5) and result.max_abs_diff > 0.1


def test_embedding_outputs_are_checked_by_cosine_not_top1(models, tmp_path):
    from edgehub.agent.activation import health_check
    from edgehub.agent.local_state import InstalledVariant

    result = run_benchmark(models["mlp"], "onnx", models["embed_refs"], BenchmarkSettings(**FAST))
    assert result.ok and result.agreement is None and result.cosine == pytest.approx(1.0, abs=1e-6)
    wrong = run_benchmark(models["mlp"], "onnx", models["embed_wrong"], BenchmarkSettings(**FAST))
    assert wrong.agreement is None and wrong.cosine < 0.9
    classifier = run_benchmark(models["mlp"], "onnx", models["mlp_refs"], BenchmarkSettings(**FAST))
    assert classifier.agreement == 1.0 and classifier.cosine == pytest.approx(1.0, abs=1e-6)

    def installed(refs):  # what the health check reads of an installed variant
        return InstalledVariant.model_construct(variant_id="mlp-v1-int8", path=models["mlp"], format="onnx",
                                                references_path=refs)

    assert health_check(installed(models["embed_refs"])) is None
    assert "cosine" in health_check(installed(models["embed_wrong"]))


def test_corrupt_model_is_a_clear_failure(models):
    result = run_benchmark(models["corrupt"], "onnx", None, BenchmarkSettings(**FAST))
    assert not result.ok
    assert result.error.startswith("loading corrupt.onnx failed:") and "Protobuf" in result.error


def test_missing_model_file(models, tmp_path):
    result = run_benchmark(tmp_path / "absent.onnx", "onnx", None, BenchmarkSettings(**FAST))
    assert not result.ok and "no model file at" in result.error


def test_format_without_runtime(models):
    result = run_benchmark(models["mlp"], "tensorrt", None, BenchmarkSettings(**FAST))
    assert not result.ok and "no runtime on this device runs tensorrt models" in result.error


def test_model_past_the_memory_limit(models):
    result = run_benchmark(models["hog"], "onnx", None, BenchmarkSettings(memory_limit_mb=600, **FAST))
    assert not result.ok
    assert result.error.startswith("exceeded the memory limit of 600 MB")


def test_normal_model_fits_the_memory_limit(models):
    settings = BenchmarkSettings(memory_limit_mb=600, threads=2, **FAST)
    result = run_benchmark(models["cnn_fixed1"], "onnx", models["cnn_refs"], settings)
    assert result.ok, result.error
    assert result.peak_rss_mb < 600


def test_tiny_memory_limits_are_raised_to_the_runtimes_floor():
    assert effective_memory_limit_mb(BenchmarkSettings(memory_limit_mb=10, threads=2)) == 352
    assert effective_memory_limit_mb(BenchmarkSettings(memory_limit_mb=4000, threads=2)) == 4000
    assert effective_memory_limit_mb(BenchmarkSettings()) is None


def test_timeout_kills_the_child(models):
    settings = BenchmarkSettings(time_budget_s=60, timeout_s=1.5)
    started = time.monotonic()
    result = run_benchmark(models["mlp"], "onnx", None, settings)
    assert not result.ok and result.error == "timed out after 1.5s"
    assert time.monotonic() - started < 5


def _fake_child(monkeypatch, code: str) -> None:
    monkeypatch.setattr(benchmark, "CHILD_COMMAND", [sys.executable, "-c", code])


@pytest.mark.parametrize(
    ("code", "limit", "expected"),
    [
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", None, "crashed with SIGSEGV"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 800,
         "exceeded the memory limit of 800 MB (killed by SIGKILL)"),
        ("import os, sys; sys.stderr.write(\"terminate called after throwing an instance of "
         "'std::bad_alloc'\\n\"); sys.stderr.flush(); os.abort()", 800, "exceeded the memory limit of 800 MB"),
        ("print('hello')", None, "benchmark child wrote an unparsable result"),
        ("import sys; sys.exit(3)", None, "benchmark child exited with status 3"),
    ],
)
def test_child_failures_become_results(monkeypatch, models, code, limit, expected):
    _fake_child(monkeypatch, code)
    result = run_benchmark(models["mlp"], "onnx", None, BenchmarkSettings(memory_limit_mb=limit, **FAST))
    assert not result.ok and result.error.startswith(expected), result.error
