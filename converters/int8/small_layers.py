"""Small layers kept float where that costs almost nothing in size (a step of the int8 search).

Why: some layers hold a tiny share of the weights but carry much of the int8 error. The first
convolution reads the raw image, and quantizing that input to 8 bits on a grid that does not
line up with the pixels' own adds noise that every later layer carries. Measured on
EfficientNet-Lite1 after rounding by optimisation: the stem convolution (864 weights, 0.02% of
them) kept float raised top-1 agreement with fp32 from 0.960 to 0.967 on two separate crop sets
(300 and 600 crops), the file 0.264x fp32 both ways. Depthwise layers (4.5% of the weights, 21
layers) kept float moved agreement by noise (+1.7 and +0.7 points on the two sets, cosine lower)
for +0.03x size: the measured gain decides, not the layer type.

Each small layer alone is put back into float (float_layers.keep_float, no re-quantization), scored
on the held-back samples; those whose cosine gain clears the noise floor are kept, the best gain
per byte first, within a size budget. The combination is kept only when it scores better than the
all-int8 network. ONNX Runtime's `nodes_to_exclude` is not used: an excluded layer still reads a
quantized input (float_layers' docstring).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

FLOAT_EXTRA_BYTES = 3  # a float32 weight instead of an int8 one
MIN_COSINE_GAIN = 2e-5  # a smaller held-back gain is not worth a float layer (EfficientNet-Lite1 kept gains of 2e-5 to 2e-3)


@dataclass(frozen=True)
class SmallLayer:
    node: str
    weights: int  # weight elements


def layer_weights(qdq, fp32, op_types: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")) -> list[SmallLayer]:
    """The quantized layers of `qdq` (those whose weight input went through a DequantizeLinear)
    with their weight counts, read from the fp32 graph's initializers."""
    inits = {i.name: i for i in fp32.graph.initializer}
    float_nodes = {n.name: n for n in fp32.graph.node}
    producers = {o: n for n in qdq.graph.node for o in n.output}
    out = []
    for node in qdq.graph.node:
        if node.op_type not in op_types or node.name not in float_nodes or len(node.input) < 2:
            continue
        dq = producers.get(node.input[1])
        weight = float_nodes[node.name].input[1]
        if dq is None or dq.op_type != "DequantizeLinear" or weight not in inits:
            continue
        count = 1
        for d in inits[weight].dims:
            count *= d
        out.append(SmallLayer(node.name, count))
    return out


def candidates(layers: list[SmallLayer], budget_bytes: float) -> list[SmallLayer]:
    """The layers small enough that keeping one float fits the size budget alone."""
    return [layer for layer in layers if layer.weights * FLOAT_EXTRA_BYTES <= budget_bytes]


def choose(gains: dict[str, float], layers: list[SmallLayer], budget_bytes: float,
           min_gain: float = MIN_COSINE_GAIN) -> list[str]:
    """Layers to keep float: gain over `min_gain`, best gain per extra byte first, while the extra
    bytes fit `budget_bytes`. Pure."""
    size = {layer.node: layer.weights * FLOAT_EXTRA_BYTES for layer in layers}
    ranked = sorted((n for n, g in gains.items() if g > min_gain and n in size), key=lambda n: -gains[n] / max(size[n], 1))
    chosen, spent = [], 0.0
    for name in ranked:
        if spent + size[name] <= budget_bytes:
            chosen.append(name)
            spent += size[name]
    return chosen


def scan(qdq, fp32, layers: list[SmallLayer], score: Callable[[object], float],
         on_progress: Callable[[str], None]) -> dict[str, float]:
    """Each layer alone kept float: its held-back cosine minus the all-int8 network's."""
    from edgehub.converters.int8.float_layers import keep_float

    base = score(qdq)
    gains = {}
    for i, layer in enumerate(layers, 1):
        on_progress(f"small layers float {i}/{len(layers)}: {layer.node}")
        gains[layer.node] = round(score(keep_float(qdq, fp32, {layer.node})) - base, 8)
    return gains
