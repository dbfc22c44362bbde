"""Weight rounding by optimisation for the PT2E (TFLite) int8 path.

The same layer objective as the ONNX path (converters/int8/rounding.py, AdaRound's): each weight
of a BatchNorm-folded layer rounded up or down so that the layer's output over the calibration
samples moves least, and the mean shift that remains taken off its bias. The rounded weights are
written back on PT2E's own grid (symmetric, per output channel, max|w| / 127 with the observer's
floor, the largest weight of each channel unmoved), so the weight observer computes the same scale and the int8 file
carries exactly the chosen rounding.

Each layer's inputs are the fp32 network's, all layers' statistics from one pass over the
calibration samples. Reading them from the int8 network instead (AdaRound's "asymmetric
reconstruction", what the ONNX path does layer by layer) needs a re-converted network after each
layer to be right; done in one pass, from the nearest-rounded network, it measured far worse on
EfficientNet-Lite1 (held-back cosine 0.949 against 0.9958 with bias correction alone), since every
layer then compensates upstream errors that the rounding of the layers before it has changed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from typing import Any

from edgehub.converters.int8.rounding import MAX_DIM, LayerShape, Moments, round_weights

QMAX = 127  # PT2E's symmetric int8 weights: -127..127
# litert-torch's weight observer floors each channel's step here (its eps): 7% of EfficientNet-
# Lite1's folded channels sit on that floor, and rounded on their own finer grid they would be
# rounded again, to nearest, by the quantizer.
MIN_STEP = 2**-12


def weight_attr(layer: Any) -> Any:
    """The get_attr node holding `layer`'s weight (through the observers prepare_pt2e inserts)."""
    node = layer.args[1] if len(layer.args) > 1 else None
    while node is not None and node.op == "call_module" and node.args:
        node = node.args[0]
    return node if getattr(node, "op", None) == "get_attr" else None


def layer_shape(key: str, kind: str, weight: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                groups: int = 1) -> LayerShape | str:
    """The rounding module's description of a PT2E layer, or why it cannot be rounded."""
    def pair(v: Any) -> tuple[int, int]:
        return (int(v[0]), int(v[-1])) if isinstance(v, (list, tuple)) else (int(v), int(v))

    if kind == "linear.default":
        if weight.shape[1] > MAX_DIM:
            return f"input of {weight.shape[1]} features is over {MAX_DIM}"
        return LayerShape(key, key, key, "gemm", channels=int(weight.shape[1]), trans_b=True)
    if weight.dim() != 4:
        return "not a 2-D convolution"
    if isinstance(padding, str):
        return f"padding={padding!r}"
    cin = int(weight.shape[1]) * int(groups)
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    ph, pw = pair(padding)
    common = dict(kernel=kernel, strides=pair(stride), pads=(ph, pw, ph, pw), dilations=pair(dilation), channels=cin)
    if groups == cin and weight.shape[1] == 1:
        return LayerShape(key, key, key, "depthwise", **common)
    if groups == 1 and cin * kernel[0] * kernel[1] <= MAX_DIM:
        return LayerShape(key, key, key, "dense", **common)
    return "grouped convolution" if groups != 1 else f"input patch over {MAX_DIM} values"


def moments_of(shape: LayerShape, x: Any) -> tuple[Any, Any, int]:
    """(sum x x^T, sum x, rows) of one batch of a layer's input `x` (a torch tensor), in the
    layout of converters/int8/rounding.py: [D, D] and [D] (dense, gemm; D in the weights' order)
    or [C, k*k, k*k] and [C, k*k] (depthwise). torch's float32 matmuls, not numpy's float64:
    13x faster on EfficientNet-Lite1, where numpy took 40 s for 32 samples."""
    import torch.nn.functional as F

    x = x.detach().float()
    if shape.kind == "gemm":
        r = x.reshape(-1, x.shape[-1])
        return r.T @ r, r.sum(0), len(r)
    batch, channels = x.shape[:2]
    if shape.kind == "dense" and shape.kernel == (1, 1) and shape.strides == (1, 1) and not any(shape.pads):
        r = x.transpose(0, 1).reshape(channels, -1)
        return r @ r.T, r.sum(1), r.shape[1]
    cols = F.unfold(x, shape.kernel, dilation=shape.dilations, padding=shape.pads[:2], stride=shape.strides)
    taps, positions = shape.kernel[0] * shape.kernel[1], cols.shape[-1]
    if shape.kind == "depthwise":
        r = cols.reshape(batch, channels, taps, positions).permute(1, 2, 0, 3).reshape(channels, taps, -1)
        return r @ r.transpose(1, 2), r.sum(2), r.shape[2]
    r = cols.transpose(0, 1).reshape(channels * taps, -1)
    return r @ r.T, r.sum(1), r.shape[1]


class _InputRecorder:
    """Called in the graph beside each layer with the layer's own arguments: adds the layer's input
    to the layer's moments."""

    def __init__(self) -> None:
        self.shapes: dict[str, LayerShape | str] = {}
        self.moments: dict[str, Moments] = {}

    def record(self, key: str, kind: str, x: Any, weight: Any, bias: Any = None, *rest: Any) -> None:
        if key not in self.shapes:
            self.shapes[key] = layer_shape(key, kind, weight, *rest)
        shape = self.shapes[key]
        if isinstance(shape, str):
            return
        second, total, rows = moments_of(shape, x)
        second, total = second.double().numpy(), total.double().numpy()
        old = self.moments.get(key)
        if old is None:  # x~ = x: sum_q is the same array as sum_x, and stays so (in-place sums)
            self.moments[key] = Moments(second, None, total, total, rows)
        else:
            old.second += second
            old.sum_x += total
            old.rows += rows


def round_layers(prepared: Any, layers: list[Any], feed: Callable[[Any, int], None], samples: int,
                 on_progress: Callable[[str], None]) -> dict:
    """Round the weights of `layers` (nodes of `prepared`, before calibration) by optimisation and
    shift their biases; `feed(module, i)` runs sample i. Returns what it did (for the notes)."""
    import torch

    from edgehub.converters.int8.pt2e import probe_layers

    recorder = _InputRecorder()
    probe = probe_layers(prepared, [n.name for n in layers], recorder.record)
    with torch.no_grad():
        for i in range(samples):
            on_progress(f"rounding: input statistics {i + 1}/{samples}")
            feed(probe, i)
    done, skipped, before, after = [], {}, 0.0, 0.0
    for k, layer in enumerate(layers, 1):
        shape = recorder.shapes.get(layer.name, "not reached by the samples")
        attr = weight_attr(layer)
        if isinstance(shape, str) or attr is None or layer.name not in recorder.moments:
            skipped[layer.name] = shape if isinstance(shape, str) else "weight is not a constant"
            continue
        on_progress(f"rounding {k}/{len(layers)}: {layer.name}")
        weight = reduce(getattr, attr.target.split("."), prepared)
        bias = reduce(getattr, layer.args[2].target.split("."), prepared)
        rounded = round_weights(weight.detach().numpy(), shape, recorder.moments.pop(layer.name), QMAX,
                                min_step=MIN_STEP)
        weight.data.copy_(torch.from_numpy(rounded.weights).to(weight.dtype))
        if rounded.bias_shift.shape == tuple(bias.shape):
            bias.data += torch.from_numpy(rounded.bias_shift).to(bias.dtype)
        done.append(layer.name)
        before += rounded.before
        after += rounded.after
    return {"layers": len(done), "skipped": skipped, "objective_nearest": round(float(before), 6),
            "objective_optimized": round(float(after), 6)}
