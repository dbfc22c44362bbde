"""Runtime settings on the device, with the real runtimes: applied in the benchmark child, a setting
the runtime lacks reported as not applicable (not as a failure), where the graph ran as the
runtime reports it, and which pairs the agent measures."""

from __future__ import annotations

import os

import numpy as np
import pytest
from digits_models import shared_digits
from fault_models import good_mlp

from edgehub.agent.benchmark import run_benchmark
from edgehub.agent.runtimes import runtime_for
from edgehub.agent.runtimes.base import NotApplicable
from edgehub.agent.tuning import contenders, leaders, median_index, pair_key, pairs_to_measure, split_key
from edgehub.protocol.messages import BenchmarkSettings
from edgehub.protocol.runtime_settings import RuntimeSettings, TuningPlan

FAST = BenchmarkSettings(time_budget_s=0.2, warmup_runs=2, min_runs=10, timeout_s=120)


def test_only_the_leaders_are_tuned_and_nothing_twice():
    p50 = {"fp32": 2.0, "int8": 1.0, "fp16": 1.08, "broken": None}
    assert leaders(p50, 0.10) == ["int8", "fp16"] and leaders({"x": None}, 0.1) == []
    plan = TuningPlan(settings=[RuntimeSettings(), RuntimeSettings(threads=1), RuntimeSettings(threads=2)])
    pairs = pairs_to_measure(plan, p50, done={pair_key("int8", RuntimeSettings(threads=1))})
    assert [(v, s.key()) for v, s in pairs] == [("int8", "threads=2"), ("fp16", "threads=1"), ("fp16", "threads=2")]


def test_the_contending_pairs_are_measured_again():
    p50s = {"a@default": 1.00, "a@threads=1": 0.95, "b@default": 1.10, "b@threads=1": 1.30, "c@default": None}
    assert contenders(p50s) == ["a@threads=1", "a@default", "b@default"]  # within 20% of 0.95, best first
    assert contenders(p50s, most=2) == ["a@threads=1", "a@default"]
    assert contenders({"a@default": 1.0, "b@default": 2.0}) == []  # a clear winner: nothing to decide
    assert median_index([1.0, 3.0, 2.0]) == 2 and median_index([5.0, 1.0, 3.0]) == 2 and median_index([2.0]) == 0
    for settings in (RuntimeSettings(), RuntimeSettings(threads=2, optimization="basic"),
                     RuntimeSettings(provider="XnnpackExecutionProvider")):
        assert split_key(pair_key("m-v1-int8-static", settings)) == ("m-v1-int8-static", settings)


def test_onnxruntime_settings_are_applied_and_coverage_comes_from_its_profile(tmp_path):
    model, refs = good_mlp(tmp_path / "mlp.onnx")
    settings = RuntimeSettings(threads=1, optimization="basic")
    result = run_benchmark(model, "onnx", refs, FAST, runtime_settings=settings)
    assert result.ok and result.settings == settings and result.threads == 1 and result.agreement == 1.0
    assert result.coverage.source == "onnxruntime profile" and result.coverage.nodes == 3
    assert result.coverage.by == {"CPUExecutionProvider": 3} and result.coverage.accelerated == 0.0
    assert result.coverage.time_share == 0.0  # the profile timed every kernel, all on the CPU
    default = run_benchmark(model, "onnx", refs, FAST)
    assert default.ok and default.settings is None and default.coverage.nodes >= 1


def test_coverage_weighs_the_accelerated_nodes_by_their_kernel_time():
    from edgehub.agent.runtimes.onnxruntime_rt import coverage_of_profile

    def node(index, provider, dur, suffix="_kernel_time"):
        return {"cat": "Node", "name": f"n{index}{suffix}", "dur": dur,
                "args": {"node_index": str(index), "provider": provider, "op_name": "Conv"}}

    events = [node(0, "XnnpackExecutionProvider", 30), node(0, "XnnpackExecutionProvider", 1, "_fence_before"),
              node(1, "CPUExecutionProvider", 10), node(2, "CPUExecutionProvider", 0),
              {"cat": "Session", "name": "model_run", "dur": 99}]
    coverage = coverage_of_profile(events)
    assert coverage.nodes == 3 and coverage.by == {"XnnpackExecutionProvider": 1, "CPUExecutionProvider": 2}
    assert coverage.accelerated == pytest.approx(1 / 3) and coverage.time_share == pytest.approx(0.75)
    assert coverage_of_profile([node(0, "CPUExecutionProvider", 0)]).time_share is None  # nothing timed


@pytest.mark.parametrize("settings, why", [
    (RuntimeSettings(provider="TensorrtExecutionProvider"), "has no TensorrtExecutionProvider"),
    (RuntimeSettings(threads=(os.cpu_count() or 1) + 1), "threads on a device with"),
    (RuntimeSettings(delegate="none"), "LiteRT delegate setting does not apply"),
])
def test_a_setting_the_runtime_lacks_is_not_applicable_not_a_failure(tmp_path, settings, why):
    model, refs = good_mlp(tmp_path / "mlp.onnx")
    result = run_benchmark(model, "onnx", refs, FAST, runtime_settings=settings)
    assert not result.ok and result.not_applicable and why in result.error and result.error.startswith("not applicable")
    with pytest.raises(NotApplicable):
        runtime_for("onnx").load(model, settings=settings)


def test_litert_with_and_without_its_xnnpack_delegate():
    digits = shared_digits()
    variant = digits["tflite"]["none"]
    x = digits["x"][1400:1408]
    runtime = runtime_for("tflite")
    name = runtime.load(variant.path).inputs[0].name
    on = runtime.coverage(variant.path, None, {name: x[:1]})
    off = runtime.coverage(variant.path, RuntimeSettings(delegate="none"), {name: x[:1]})
    assert on.source == "litert delegate partition" and on.nodes == off.nodes >= 5
    assert on.accelerated > 0.5 and on.by["XNNPACK"] >= 5  # XNNPACK took the convolutions and matmuls
    assert off.accelerated == 0.0 and off.by == {"builtin": off.nodes}
    with_delegate = runtime.load(variant.path, settings=RuntimeSettings(threads=1))
    builtin = runtime.load(variant.path, settings=RuntimeSettings(threads=1, delegate="none"))
    a, b = with_delegate.run({name: x[:1]})[0], builtin.run({name: x[:1]})[0]
    assert np.allclose(a, b, atol=1e-3) and builtin.describe()["providers"] == ["builtin CPU kernels"]
    with pytest.raises(NotApplicable, match="do not apply to LiteRT"):
        runtime.load(variant.path, settings=RuntimeSettings(optimization="basic"))
