"""The PT2E quantizer for full-int8 TFLite: litert-torch's, with layer + clipping activation fused.

litert-torch's quantizer fuses a convolution with a following ReLU only. After a ReLU6 (hardtanh:
MobileNet, EfficientNet-Lite) or after a Linear + ReLU it quantizes the layer's output *before*
the activation, on the range of the raw pre-activation values (on EfficientNet-Lite1 tens of units
wide), and the activation then shares that range: the [0, 6] that the next layer reads gets a
handful of int8 steps. Measured on EfficientNet-Lite1, 64 held-back photo crops, PT2E simulated:
cosine 0.918 with litert-torch's annotation (see bench/RESULTS.md for the fused figures).

Here the layer's output is left unquantized and the activation's output carries the int8 range,
which is what a TFLite kernel with a fused activation computes (CONV_2D / DEPTHWISE_CONV_2D /
FULLY_CONNECTED with fused_activation_function RELU or RELU6). litert-torch's own annotators do
everything else; ours runs first and marks what it annotated, so theirs skip those nodes.
"""

from __future__ import annotations

from typing import Any

LAYERS = ("conv1d.default", "conv2d.default", "convolution.default", "linear.default")
# Activations TFLite fuses into the layer (hardtanh only with ReLU6's bounds: see _fusable).
ACTIVATIONS = ("relu.default", "relu_.default", "relu6.default", "relu6_.default", "hardtanh.default",
               "hardtanh_.default")


def _target_name(node: Any) -> str:
    """'conv2d.default' for torch.ops.aten.conv2d.default."""
    return str(getattr(node.target, "__name__", node.target))


def _fusable(activation: Any) -> bool:
    name = _target_name(activation)
    if not name.startswith("hardtanh"):
        return True
    low = activation.args[1] if len(activation.args) > 1 else activation.kwargs.get("min_val", -1.0)
    high = activation.args[2] if len(activation.args) > 2 else activation.kwargs.get("max_val", 1.0)
    return (float(low), float(high)) in ((0.0, 6.0), (-1.0, 1.0))  # RELU6, RELU_N1_TO_1


def fused_pairs(graph: Any) -> list[tuple[Any, Any]]:
    """(layer, activation) node pairs where the activation is the layer's only reader and a TFLite
    kernel can fuse it."""
    pairs = []
    for node in graph.nodes:
        if node.op != "call_function" or _target_name(node) not in ACTIVATIONS or not node.args:
            continue
        layer = node.args[0]
        if getattr(layer, "op", None) != "call_function" or _target_name(layer) not in LAYERS:
            continue
        if len(layer.users) != 1 or not _fusable(node):
            continue
        pairs.append((layer, node))
    return pairs


def annotate_fused(model: Any, config: Any) -> int:
    """Annotate each fusable layer + activation pair of an exported graph module; returns how many."""
    from litert_torch.quantize.pt2e_quantizer_utils import (
        _is_annotated,
        _mark_nodes_as_annotated,
        get_bias_qspec,
        get_input_act_qspec,
        get_output_act_qspec,
        get_weight_qspec,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    count = 0
    for layer, activation in fused_pairs(model.graph):
        weight = layer.args[1] if len(layer.args) > 1 else None
        if weight is None:
            continue
        bias = layer.args[2] if len(layer.args) > 2 else None
        partition = [activation, layer, weight] + ([bias] if bias is not None else [])
        if _is_annotated(partition):
            continue
        qspecs = {layer.args[0]: get_input_act_qspec(config), weight: get_weight_qspec(config)}
        if bias is not None:
            qspecs[bias] = get_bias_qspec(config)
        layer.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=qspecs, _annotated=True)
        activation.meta["quantization_annotation"] = QuantizationAnnotation(
            output_qspec=get_output_act_qspec(config), _annotated=True)
        _mark_nodes_as_annotated(partition)
        count += 1
    return count


def fused_quantizer(config: Any) -> Any:
    """A litert-torch PT2EQuantizer for `config` whose static annotation fuses layer + activation."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer

    class FusedActivationQuantizer(PT2EQuantizer):
        fused = 0

        def _annotate_all_static_patterns(self, model, quantization_config, filter_fn=None):
            if quantization_config is not None and not quantization_config.is_qat:
                self.fused += annotate_fused(model, quantization_config)
            return super()._annotate_all_static_patterns(model, quantization_config, filter_fn)

    return FusedActivationQuantizer().set_global(config)
