"""Each ONNX pass on a small real model (an MLP trained on scikit-learn's digits)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgehub.converters.errors import ConversionError
from edgehub.converters.onnx_model import load_onnx, onnx_artifact
from edgehub.converters.passes.base import PassContext, available_passes, parse_config, run_pass
from edgehub.hub.publish.evaluate import run_onnx, score_outputs


@pytest.fixture
def base(tiny_mlp):
    return onnx_artifact(tiny_mlp["onnx"])


@pytest.fixture
def ctx(tmp_path, tiny_mlp, base):
    reference = run_onnx(base.path, {"x": tiny_mlp["x"]})

    def score(candidate):
        return score_outputs(run_onnx(candidate.path, {"x": tiny_mlp["x"]}), reference, tiny_mlp["y"])["accuracy"]

    return PassContext(workdir=tmp_path / "work", calibration={"x": tiny_mlp["x"][:256]}, score=score)


def _accuracy(artifact, tiny_mlp):
    out = run_onnx(artifact.path, {"x": tiny_mlp["x"]})[0]
    return float((out.argmax(1) == tiny_mlp["y"]).mean())


def test_registry_lists_builtin_passes():
    assert {"slim", "fp16", "int8_static", "int8_dynamic"} <= set(available_passes())


def test_slim_keeps_outputs(base, ctx, tiny_mlp):
    slim = run_pass("slim", base, {}, ctx)
    assert slim.path != base.path and slim.precision == "fp32"
    np.testing.assert_allclose(run_onnx(slim.path, {"x": tiny_mlp["x"]})[0],
                               run_onnx(base.path, {"x": tiny_mlp["x"]})[0], atol=1e-5)
    assert slim.notes["nodes_after"] <= slim.notes["nodes_before"]


def test_fp16_halves_weights_and_keeps_float32_io(base, ctx, tiny_mlp):
    half = run_pass("fp16", base, {}, ctx)
    assert half.precision == "fp16"
    assert half.size_bytes < 0.6 * base.size_bytes
    assert half.inputs[0].dtype == "float32" and half.outputs[0].dtype == "float32"
    initializer_types = {init.data_type for init in load_onnx(half.path).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in initializer_types
    assert abs(_accuracy(half, tiny_mlp) - _accuracy(base, tiny_mlp)) < 0.01


def test_int8_static_auto_measures_schemes(base, ctx, tiny_mlp):
    q = run_pass("int8_static", base, {"scheme": "auto"}, ctx)
    assert q.precision == "int8"
    assert q.notes["scheme"] in ("u8s8", "reduce_range", "u8u8")
    assert set(q.notes["scheme_scores"]) == {"u8s8", "reduce_range", "u8u8"}
    ops = {n.op_type for n in load_onnx(q.path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert q.size_bytes < 0.5 * base.size_bytes  # a tiny model: scales and QDQ nodes weigh in
    assert _accuracy(q, tiny_mlp) >= _accuracy(base, tiny_mlp) - 0.02


def test_int8_static_without_an_eval_score_measures_on_held_back_calibration_data(base, tmp_path, tiny_mlp):
    ctx = PassContext(workdir=tmp_path, calibration={"x": tiny_mlp["x"][:64]})
    q = run_pass("int8_static", base, {}, ctx)
    assert q.notes["held_back_samples"] == 16 and q.notes["calibration_samples"] == 48
    assert len(q.notes["trials"]) >= 5 and "eval_before_rounding" not in q.notes


def test_entropy_calibration_differs_from_minmax(base, tmp_path, tiny_mlp):
    """With proper bin counts, entropy ranges are not the min/max ranges (ORT's default bins make them equal)."""
    from edgehub.converters.int8.calibration import compute_ranges
    from edgehub.converters.int8.ort_quantize import pre_process

    pre = pre_process(base.path, tmp_path / "pre.onnx")
    data = {"x": tiny_mlp["x"][:256]}
    minmax = json.loads(compute_ranges(pre, data, "minmax", tmp_path / "mm.json").read_text())
    entropy = json.loads(compute_ranges(pre, data, "entropy", tmp_path / "en.json").read_text())
    assert minmax != entropy


def test_s8s8_symmetric_has_zero_zero_points(base, ctx):
    q = run_pass("int8_static", base, {"scheme": "s8s8-symmetric"}, ctx)
    model = load_onnx(q.path)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(zp.dtype == np.int8 and not zp.any() for zp in zero_points)


def test_int8_dynamic(base, ctx, tiny_mlp):
    q = run_pass("int8_dynamic", base, {}, ctx)
    assert q.precision == "int8" and q.size_bytes < 0.5 * base.size_bytes
    assert _accuracy(q, tiny_mlp) >= _accuracy(base, tiny_mlp) - 0.03


def test_int8_needs_calibration(base, tmp_path):
    with pytest.raises(ConversionError, match="calibration data"):
        run_pass("int8_static", base, {}, PassContext(workdir=tmp_path))


def test_bad_config_and_unknown_pass_are_clear():
    with pytest.raises(ConversionError, match="unknown pass 'nope'"):
        parse_config("nope", {})
    with pytest.raises(ConversionError, match="int8_static.*schem"):
        parse_config("int8_static", {"schem": "u8u8"})
    with pytest.raises(ConversionError, match="calibrate_method"):
        parse_config("int8_static", {"calibrate_method": "magic"})


def test_quantizing_twice_is_refused(base, ctx):
    q = run_pass("int8_dynamic", base, {}, ctx)
    with pytest.raises(ConversionError, match="needs an fp32 model"):
        run_pass("fp16", q, {}, ctx)


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all", b"\x08\x07garbage\xff\xff"])
def test_corrupt_files_raise_conversion_error(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ConversionError, match="bad.onnx"):
        onnx_artifact(path)
