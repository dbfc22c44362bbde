"""Full-int8 TFLite chosen by measurement (converters/int8/pt2e.py, pt2e_quantizer.py) on the small
depthwise + ReLU6 net trained on scikit-learn's digits: activations fused into their layers, the
weight-rounding bias correction, rounding by optimisation, the trials and their notes, and the file
LiteRT runs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from depthwise_models import depthwise_module

from edgehub.converters.int8.pt2e import (
    Pt2eSettings,
    correct_biases,
    correctable_layers,
    quantization_config,
    rounded_weights,
    search,
)
from edgehub.converters.int8.pt2e_quantizer import fused_pairs, fused_quantizer
from edgehub.converters.int8.pt2e_rounding import (
    MIN_STEP,
    layer_shape,
    moments_of,
    round_layers,
    weight_attr,
)
from edgehub.converters.int8.rounding import LayerShape, Moments, accumulate, round_weights
from edgehub.converters.onnx_model import onnx_artifact
from edgehub.converters.passes.base import PassContext, run_pass
from edgehub.converters.tflite_model import read_tflite, run_tflite
from edgehub.converters.torch_export import export_onnx
from edgehub.converters.torch_passes.model_io import save_module
from edgehub.protocol.metrics import NEAR_TIE, agreement, cosine


@pytest.fixture(scope="module")
def net():
    model, x, _ = depthwise_module()
    xt = torch.from_numpy(x)
    exported = torch.export.export(model, (xt[:1],)).module()
    return model, exported, x


def _call(x):
    return lambda i: ((torch.from_numpy(x[i:i + 1]),), {})


def _prepared(exported, observer="histogram"):
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    quantizer = fused_quantizer(quantization_config(observer, per_channel=True))
    return prepare_pt2e(copy.deepcopy(exported), quantizer), quantizer


def test_relu6_and_relu_are_fused_into_their_layers(net):
    _, exported, _ = net
    prepared, quantizer = _prepared(exported)
    # BatchNorm is folded inside prepare_pt2e, so conv -> ReLU6 pairs appear there: the stem,
    # the depthwise conv (both ReLU6) and the two 1x1 convs (ReLU).
    assert quantizer.fused == 4
    pairs = fused_pairs(prepared.graph)
    activations = {str(act.target.__name__) for _, act in pairs}
    assert "hardtanh.default" in activations or "relu6.default" in activations
    # No observer sits between a fused layer and its activation: the layer's raw output is never
    # quantized on its own (the loss this fixes).
    for layer, activation in pairs:
        assert list(layer.users) == [activation]


def test_hardtanh_with_other_bounds_is_not_fused(net):
    import torch.nn.functional as F

    class Clipped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return F.hardtanh(self.conv(x), 0.0, 3.0)  # no TFLite kernel fuses a clip at 3

    graph = torch.export.export(Clipped().eval(), (torch.zeros(1, 3, 8, 8),)).module().graph
    assert fused_pairs(graph) == []


def test_rounded_weights_sit_on_a_per_channel_int8_grid():
    weight = torch.tensor([[0.5, -1.0, 0.26], [0.05, 0.1, -0.013]])
    rounded = rounded_weights(weight, per_channel=True)
    for row, out in zip(weight, rounded):
        scale = max(float(row.abs().max()) / 127, 2**-12)  # PT2E's observers floor the step at 2^-12
        steps = out / scale
        assert torch.allclose(steps, steps.round(), atol=1e-4)  # on the grid
        assert float((out - row).abs().max()) <= scale / 2 + 1e-7  # nearest step
    # Per tensor, the small row shares the big row's coarser step: a larger rounding error.
    per_tensor = rounded_weights(weight, per_channel=False)
    assert float((per_tensor[1] - weight[1]).abs().max()) > float((rounded[1] - weight[1]).abs().max())


def test_bias_correction_takes_the_rounding_shift_off_each_bias(net):
    model, exported, x = net
    prepared, _ = _prepared(exported)
    before = {name: p.detach().clone() for name, p in prepared.named_parameters() if "bias" in name}
    feed = lambda m: [m(torch.from_numpy(x[i:i + 1])) for i in range(32)]  # noqa: E731
    corrected = correct_biases(prepared, feed, per_channel=True)
    after = dict(prepared.named_parameters())
    changed = [name for name in before if not torch.equal(before[name], after[name].detach())]
    assert corrected == 5 and len(changed) == corrected  # 4 convolutions and the classifier
    # The float network now computes something else, by a small amount: the correction is of the
    # order of one weight step times the inputs, not a new network.
    with torch.no_grad():
        xt = torch.from_numpy(x[:64])
        corrected_out = torch.cat([prepared(xt[i:i + 1]) for i in range(64)])  # exported at batch 1
        drift = float((corrected_out - model(xt)).abs().mean() / model(xt).abs().mean())
    assert 0 < drift < 0.05, drift


def test_search_measures_observers_and_bias_correction(net):
    _, exported, x = net
    result = search(exported, _call(x), 256, Pt2eSettings(rounding_below=1.0), lambda message: None)
    notes = result.notes
    assert notes["held_back"] == 64 and notes["calibration_samples"] == 192
    observer = notes["observer"]
    assert set(notes["trials"]) == {"histogram", "minmax", f"{observer}+bias-correction", f"{observer}+rounding"}
    kept = "+rounding" if notes["rounding"]["kept"] else "+bias-correction" if notes["bias_correction"]["kept"] else ""
    assert notes["held_back_cosine"] == notes["trials"][observer + kept]["cosine"]
    assert notes["held_back_cosine"] == max(t["cosine"] for t in notes["trials"].values())
    assert notes["held_back_cosine"] > 0.99
    assert notes["rounding"]["layers"] == 5 and notes["rounding"]["skipped"] == {}

    # Fixed settings; and where the cheap steps already reach `rounding_below`, the slow step is not
    # run, and the notes say so.
    fixed = search(exported, _call(x), 256, Pt2eSettings(observer="minmax", bias_correction="off", rounding_below=0.5),
                   lambda m: None)
    assert set(fixed.notes["trials"]) == {"minmax"} and fixed.notes["bias_correction"] == {"kept": False}
    assert fixed.notes["rounding"]["kept"] is False and "not worth" in fixed.notes["rounding"]["why"]
    forced = search(exported, _call(x), 256, Pt2eSettings(observer="minmax", bias_correction="off", rounding="optimized"),
                    lambda m: None)
    assert forced.notes["rounding"]["kept"] is True
    assert forced.notes["held_back_cosine"] == forced.notes["trials"]["minmax+rounding"]["cosine"]


@pytest.mark.parametrize("kind, weight, kwargs, x_shape", [
    ("conv2d.default", (8, 4, 3, 3), dict(stride=[2, 2], padding=[1, 1]), (2, 4, 9, 9)),
    ("conv2d.default", (8, 4, 1, 1), {}, (2, 4, 5, 5)),
    ("conv2d.default", (6, 1, 5, 5), dict(stride=[1, 1], padding=[2, 2], dilation=[1, 1], groups=6), (2, 6, 7, 7)),
    ("linear.default", (5, 12), {}, (3, 12)),
])
def test_torch_moments_equal_the_rounding_modules(kind, weight, kwargs, x_shape):
    # The PT2E path forms each layer's input moments with torch; the ONNX path's numpy code is the
    # reference for layouts (weights' order, per-channel blocks for depthwise).
    w = torch.randn(weight)
    shape = layer_shape("n", kind, w, *kwargs.values())
    x = torch.randn(x_shape)
    second, total, rows = moments_of(shape, x)
    expected: dict[str, Moments] = {}
    accumulate(expected, shape, x.numpy())
    np.testing.assert_allclose(second.double().numpy(), expected["n"].second, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(total.double().numpy(), expected["n"].sum_x, rtol=1e-4, atol=1e-3)
    assert rows == expected["n"].rows


def test_layer_shape_says_why_a_layer_cannot_be_rounded():
    assert "grouped" in layer_shape("n", "conv2d.default", torch.zeros(8, 2, 3, 3), 1, 1, 1, 2)
    assert "padding" in layer_shape("n", "conv2d.default", torch.zeros(8, 4, 3, 3), 1, "same")
    assert "2-D" in layer_shape("n", "conv1d.default", torch.zeros(8, 4, 3))


def test_round_layers_puts_weights_on_pt2es_grid_and_lowers_each_layers_error(net):
    _, exported, x = net
    prepared, _ = _prepared(exported)
    layers = correctable_layers(prepared.graph)
    weights = {n.name: reduce_attr(prepared, weight_attr(n)).detach().clone() for n in layers}
    done = round_layers(prepared, layers, lambda m, i: m(torch.from_numpy(x[i:i + 1])), 64, lambda m: None)
    assert done["layers"] == 5 and done["objective_optimized"] < done["objective_nearest"]
    moved = 0
    for node in layers:
        before, after = weights[node.name], reduce_attr(prepared, weight_attr(node)).detach()
        rows_b, rows_a = before.reshape(len(before), -1), after.reshape(len(after), -1)
        scale = rows_b.abs().amax(1, keepdim=True) / 127
        assert torch.allclose(rows_a.abs().amax(1, keepdim=True), scale * 127)  # the observer's scale is unchanged
        steps = rows_a / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3)  # on PT2E's grid: the file carries this rounding
        assert float((steps - rows_b / scale).abs().max()) <= 1 + 1e-4  # up or down, never further
        moved += int((steps.round() != (rows_b / scale).round()).sum())
    assert moved > 0  # not nearest rounding


def test_channels_on_the_observers_floor_are_rounded_on_its_grid():
    # A near-dead channel (max|w| / 127 under litert-torch's 2^-12 floor) is quantized on the
    # floor's grid: rounded on its own finer grid, the quantizer would round it again, to nearest.
    rng = np.random.default_rng(0)
    shape = LayerShape("n", "x", "w", "dense", kernel=(1, 1), channels=8)
    x = (rng.normal(size=(256, 8)) @ rng.normal(size=(8, 8))).astype(np.float32)
    moments: dict[str, Moments] = {}
    accumulate(moments, shape, x.reshape(256, 8, 1, 1))
    w = np.stack([rng.normal(size=8), rng.normal(size=8) * 0.003]).astype(np.float32).reshape(2, 8, 1, 1)
    assert np.abs(w[1]).max() / 127 < MIN_STEP < np.abs(w[0]).max() / 127
    rounded = round_weights(w, shape, moments["n"], 127, min_step=MIN_STEP).weights.reshape(2, -1)
    steps = rounded[1] / MIN_STEP
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # the floor's grid
    back = rounded_weights(torch.from_numpy(rounded), per_channel=True).numpy()  # what PT2E stores
    np.testing.assert_allclose(back, rounded, atol=1e-7)  # exactly the chosen rounding, both channels


def reduce_attr(module, node):
    from functools import reduce

    return reduce(getattr, node.target.split("."), module)


def test_too_few_calibration_samples_skip_the_trials_and_say_so(net):
    _, exported, x = net
    result = search(exported, _call(x), 20, Pt2eSettings(), lambda message: None)
    notes = result.notes
    assert notes["held_back"] == 0 and notes["calibration_samples"] == 20
    assert "too few" in notes["why"] and list(notes["trials"]) == ["histogram"]
    assert notes["bias_correction"]["kept"] is False and "held-back" in notes["bias_correction"]["why"]


def test_tflite_pass_writes_the_chosen_network_with_fused_relu6(net, tmp_path):
    model, _, x = net
    root = export_onnx(model, {"x": x[:2]}, tmp_path / "dw.onnx")
    root = onnx_artifact(root.path).model_copy(update={"torch_model": save_module(model, tmp_path / "dw.pt")})
    ctx = PassContext(workdir=tmp_path / "passes", calibration={"x": x[:256]})
    made = run_pass("tflite", root, {"quantization": "int8"}, ctx)
    search_notes = made.notes["int8_search"]
    assert made.notes["calibration_samples"] == 192 and search_notes["observer"] in ("histogram", "minmax")

    graph = read_tflite(made.path)
    convs = [op for op in graph.ops if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    relu6 = 3  # schema ActivationFunctionType.RELU6
    assert sum(op.options.get("fusedActivationFunction") == relu6 for op in convs) == 2
    assert not any(op.name in ("RELU6", "RELU", "HARD_SWISH") for op in graph.ops)  # all fused

    with torch.no_grad():
        reference = model(torch.from_numpy(x[256:512])).numpy()
    outputs = run_tflite(made.path, {"x": x[256:512]})[0]
    assert cosine(outputs, reference) > 0.99
    # The gate's metric: this briefly trained toy has many near-ties (exact agreement 0.93-0.95
    # for every candidate, on any 256 of its samples), which near_tie_agreement counts as agreeing.
    assert agreement(outputs, reference, tie=NEAR_TIE) >= 0.97
