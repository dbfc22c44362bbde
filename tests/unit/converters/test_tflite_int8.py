"""Full-int8 TFLite chosen by measurement (converters/int8/pt2e.py, pt2e_quantizer.py) on the small
depthwise + ReLU6 net trained on scikit-learn's digits: activations fused into their layers, the
weight-rounding bias correction, the observer trials and their notes, and the file LiteRT runs."""

from __future__ import annotations

import copy

import pytest
import torch
from depthwise_models import depthwise_module

from edgehub.converters.int8.pt2e import (
    Pt2eSettings,
    correct_biases,
    quantization_config,
    rounded_weights,
    search,
)
from edgehub.converters.int8.pt2e_quantizer import fused_pairs, fused_quantizer
from edgehub.converters.onnx_model import onnx_artifact
from edgehub.converters.passes.base import PassContext, run_pass
from edgehub.converters.tflite_model import read_tflite, run_tflite
from edgehub.converters.torch_export import export_onnx
from edgehub.converters.torch_passes.model_io import save_module
from edgehub.protocol.metrics import cosine


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
    result = search(exported, _call(x), 256, Pt2eSettings(), lambda message: None)
    notes = result.notes
    assert notes["held_back"] == 64 and notes["calibration_samples"] == 192
    assert set(notes["trials"]) == {"histogram", "minmax", f"{notes['observer']}+bias-correction"}
    chosen = notes["trials"][notes["observer"] + ("+bias-correction" if notes["bias_correction"]["kept"] else "")]
    assert notes["held_back_cosine"] == chosen["cosine"]
    assert notes["held_back_cosine"] == max(t["cosine"] for t in notes["trials"].values())
    assert notes["held_back_cosine"] > 0.99

    fixed = search(exported, _call(x), 256, Pt2eSettings(observer="minmax", bias_correction="off"), lambda m: None)
    assert set(fixed.notes["trials"]) == {"minmax"} and fixed.notes["bias_correction"] == {"kept": False}


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
    assert float((outputs.argmax(1) == reference.argmax(1)).mean()) >= 0.95
