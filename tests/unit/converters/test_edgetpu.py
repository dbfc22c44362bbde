"""Edge TPU: the op compatibility report, the compiler path (with a stand-in compiler on PATH),
and the device runtime's clear refusal where libedgetpu is absent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from digits_models import shared_digits
from paths import FAKE_EDGETPU_COMPILER

from edgehub.agent.benchmark import run_benchmark
from edgehub.agent.runtimes import RuntimeUnavailable, runtime_for
from edgehub.agent.runtimes.edgetpu_rt import EdgeTpuRuntime, find_libedgetpu
from edgehub.converters.edgetpu import (
    compile_for_edgetpu,
    edgetpu_op_report,
    parse_compiler_log,
)
from edgehub.converters.errors import ConversionError
from edgehub.converters.passes.base import NotApplicable, PassContext, run_pass
from edgehub.converters.tflite_model import OpInfo, TensorInfo, TfliteGraph
from edgehub.protocol.messages import BenchmarkSettings

STAND_IN = FAKE_EDGETPU_COMPILER


@pytest.fixture(scope="module")
def tflites() -> dict:
    digits = shared_digits()
    return {"int8": digits["tflite"]["int8"], "fp32": digits["tflite"]["none"], "work": digits["work"]}


@pytest.fixture
def compiler_on_path(tmp_path, monkeypatch) -> Path:
    """`edgetpu_compiler` on PATH: a wrapper running the stand-in with this interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "edgetpu_compiler"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("EDGEHUB_EDGETPU_COMPILER", raising=False)
    return wrapper


# ---- the op report, on real models -----------------------------------------------------------------

def test_full_int8_cnn_maps_entirely(tflites):
    report = edgetpu_op_report(tflites["int8"].path)
    assert report.ops and report.tpu_ops == len(report.ops)
    assert report.first_cpu_op is None and report.summary()["fully_mapped"]


def test_float_model_runs_on_the_cpu_and_says_why(tflites):
    report = edgetpu_op_report(tflites["fp32"].path)
    assert report.tpu_ops == 0
    assert all("float32" in v.reason and "8-bit" in v.reason for v in report.ops if v.op in ("CONV_2D", "FULLY_CONNECTED"))


# ---- the rules, on hand-made graphs -------------------------------------------------------------

def _t(i: int, shape=(1, 8, 8, 4), dtype="int8", constant=False, signature=None) -> TensorInfo:
    return TensorInfo(index=i, name=f"t{i}", dtype=dtype, shape=tuple(shape),
                      shape_signature=tuple(signature or shape), constant=constant, scale=(0.1,), zero_point=(0,))


def _op(i: int, name: str, options=None, inputs=None, outputs=None) -> OpInfo:
    return OpInfo(index=i, name=name, inputs=tuple(inputs or [_t(10 * i)]), outputs=tuple(outputs or [_t(10 * i + 1)]),
                  options=options or {})


def test_one_segment_rule_and_reasons():
    graph = TfliteGraph(ops=(
        _op(0, "CONV_2D", {"dilationHFactor": 1, "dilationWFactor": 1},
            inputs=[_t(0), _t(1, (8, 3, 3, 4), constant=True), _t(2, (8,), "int32", constant=True)]),
        _op(1, "MAX_POOL_2D", {"fusedActivationFunction": 1}),  # fused ReLU: not allowed
        _op(2, "ADD"),
        _op(3, "CUSTOM:my_op"),
    ), inputs=(), outputs=(), subgraphs=1)
    report = edgetpu_op_report(graph)
    assert [v.on_tpu for v in report.ops] == [True, False, False, False]
    assert "fused activation" in report.ops[1].reason
    assert "follows #1 MAX_POOL_2D" in report.ops[2].reason
    assert "not an operation the Edge TPU supports" in report.ops[3].reason
    assert report.summary()["first_cpu_op"].startswith("#1 MAX_POOL_2D")


def test_leading_cpu_ops_do_not_end_the_segment():
    graph = TfliteGraph(ops=(_op(0, "DEQUANTIZE", outputs=[_t(1, dtype="float32")]), _op(1, "ADD"), _op(2, "MUL")),
                        inputs=(), outputs=(), subgraphs=1)
    assert [v.on_tpu for v in edgetpu_op_report(graph).ops] == [False, True, True]


@pytest.mark.parametrize("op, problem", [
    (_op(0, "ADD", inputs=[_t(0, signature=(-1, 8, 8, 4))]), "dynamic size"),
    (_op(0, "ADD", inputs=[_t(0, shape=(2, 8, 8, 4))]), "more than 3 dimensions"),
    (_op(0, "SOFTMAX", inputs=[_t(0, shape=(1, 20000))]), "at most 16000"),
    (_op(0, "CONV_2D", {"dilationHFactor": 2, "dilationWFactor": 1}), "dilation"),
    (_op(0, "FULLY_CONNECTED", {"weightsFormat": 1}), "weights format"),
    (_op(0, "ADD", inputs=[_t(0, dtype="float32")]), "float32"),
])
def test_documented_limits(op, problem):
    report = edgetpu_op_report(TfliteGraph(ops=(op,), inputs=(), outputs=(), subgraphs=1))
    assert not report.ops[0].on_tpu and problem in report.ops[0].reason


# ---- the compiler path -------------------------------------------------------------------------

def test_compiled_variant_with_the_stand_in_compiler(tflites, compiler_on_path, tmp_path):
    parent = tflites["int8"]
    variant = run_pass("edgetpu_compile", parent, {}, PassContext(workdir=tmp_path))
    assert (variant.format, variant.precision) == ("edgetpu", "int8")
    assert variant.path.name == f"{parent.path.stem}_edgetpu.tflite" and variant.path.is_file()
    notes = variant.notes
    assert notes["compiler_version"] == "16.0.384591198"
    assert "Operator" in notes["compiler_log"] and notes["compiler_log_file"].endswith("_edgetpu.log")
    # The stand-in's own mapping and edgehub's op report agree on this model.
    assert notes["tpu_ops"] == notes["op_report"]["tpu_ops"] == notes["op_report"]["ops"]
    assert notes["cpu_ops"] == 0
    assert sum(row["count"] for row in notes["compiler_operations"]) == notes["op_report"]["ops"]
    assert variant.inputs == parent.inputs and notes["io_quantization"] == parent.notes["io_quantization"]


def test_compiler_refuses_a_float_model(tflites, compiler_on_path, tmp_path):
    with pytest.raises(ConversionError, match="exit 1.*Model not quantized"):
        compile_for_edgetpu(tflites["fp32"].path, tmp_path / "out")


def test_compiler_failure_is_one_clear_error(tflites, compiler_on_path, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_EDGETPU_FAIL", "1")
    with pytest.raises(ConversionError, match="edgetpu_compiler failed \\(exit 1\\)"):
        run_pass("edgetpu_compile", tflites["int8"], {}, PassContext(workdir=tmp_path))


def test_without_a_compiler_the_variant_is_skipped_with_the_op_report(tflites, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no edgetpu_compiler anywhere
    monkeypatch.delenv("EDGEHUB_EDGETPU_COMPILER", raising=False)
    with pytest.raises(NotApplicable, match=r"not installed.*op report: (\d+) of \1 operations"):
        run_pass("edgetpu_compile", tflites["int8"], {}, PassContext(workdir=tmp_path))


def test_compile_needs_full_int8(tflites, tmp_path):
    with pytest.raises(ConversionError, match="full-int8"):
        run_pass("edgetpu_compile", tflites["fp32"], {}, PassContext(workdir=tmp_path))


def test_log_table_parser():
    log = "Edge TPU Compiler version 16.0\nInput: a.tflite\n\nOperator                       Count      Status\n\n" \
          "CONV_2D                        3          Mapped to Edge TPU\n" \
          "RESIZE_NEAREST_NEIGHBOR        1          Operation version not supported\n"
    assert parse_compiler_log(log) == [
        {"op": "CONV_2D", "count": 3, "status": "Mapped to Edge TPU"},
        {"op": "RESIZE_NEAREST_NEIGHBOR", "count": 1, "status": "Operation version not supported"},
    ]


# ---- the device side ---------------------------------------------------------------------------

def test_edgetpu_variant_is_reported_not_runnable_here(tflites, compiler_on_path, tmp_path):
    if find_libedgetpu() is not None:
        pytest.skip("this machine has libedgetpu")
    variant = run_pass("edgetpu_compile", tflites["int8"], {}, PassContext(workdir=tmp_path))
    with pytest.raises(RuntimeUnavailable, match="runs edgetpu models"):
        runtime_for("edgetpu")
    with pytest.raises(RuntimeUnavailable, match="libedgetpu1-std"):
        EdgeTpuRuntime().version()
    result = run_benchmark(variant.path, "edgetpu", None, BenchmarkSettings(time_budget_s=0.2, min_runs=5))
    assert not result.ok and "no runtime on this device runs edgetpu models" in result.error


def test_library_lookup_and_a_broken_library(tmp_path, monkeypatch):
    fake = tmp_path / "libedgetpu.so.1"
    fake.write_bytes(b"not a shared library")
    assert find_libedgetpu({"LD_LIBRARY_PATH": str(tmp_path)}, search_dirs=()) == fake
    assert find_libedgetpu({}, search_dirs=()) is None
    assert find_libedgetpu({"EDGEHUB_LIBEDGETPU": str(tmp_path / "missing.so")}) is None
    monkeypatch.setenv("EDGEHUB_LIBEDGETPU", str(fake))
    runtime = EdgeTpuRuntime()
    assert runtime.available()
    assert runtime.version() == "libedgetpu.so.1"  # unreadable version: the file name
    with pytest.raises(RuntimeUnavailable, match="cannot load the Edge TPU delegate"):
        runtime.load(tmp_path / "model_edgetpu.tflite")
