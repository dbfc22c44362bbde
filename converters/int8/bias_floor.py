"""A floor on uint8 weight ranges, so that int32 biases fit.

A quantized bias is stored as int32 with scale s_input * s_weight. A channel whose weights are
all tiny (a channel the network barely uses, common in depthwise layers) gets a tiny weight scale,
and a bias that is not tiny then needs more than 31 bits: ONNX Runtime clips it and logs "Quantized
bias ... exceeds the range of a int32" (69 layers of EfficientNet-Lite1 under U8U8). For signed
symmetric weights ONNX Runtime raises such a channel's weight scale itself; for uint8 weights
(the U8U8 scheme) it does not. `uint8_weight_overrides` widens those channels' weight ranges
just enough (TensorQuantOverrides rmin/rmax per channel): the channel's weights then use fewer of
the 256 steps, and its bias is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INT32_RANGE = float(np.iinfo(np.int32).max) - float(np.iinfo(np.int32).min + 1)
MARGIN = 1.0001  # as ONNX Runtime's own adjustment for int8 weights


def _input_scale(lo: float, hi: float) -> float:
    """uint8 activation scale of a tensor with calibrated range [lo, hi]."""
    return (max(hi, 0.0) - min(lo, 0.0)) / 255.0


def weight_floor(weights_by_channel: np.ndarray, bias: np.ndarray, input_scale: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(rmin, rmax) per channel for uint8 weights, widened where the bias would not fit in int32;
    and how many channels were widened. `weights_by_channel` is [channels, -1]."""
    rmin = np.minimum(weights_by_channel.min(1), 0.0).astype(np.float64)
    rmax = np.maximum(weights_by_channel.max(1), 0.0).astype(np.float64)
    if input_scale <= 0:
        return rmin, rmax, 0
    needed = MARGIN * 2.0 * np.abs(bias.astype(np.float64)) / INT32_RANGE / input_scale * 255.0  # rmax - rmin
    short = (rmax - rmin) < needed
    rmax = np.where(short, rmin + needed, rmax)
    return rmin, rmax, int(short.sum())


def uint8_weight_overrides(model_path: Path, ranges_path: Path) -> tuple[dict, dict[str, int]]:
    """TensorQuantOverrides for the Conv/Gemm weights whose int32 bias would overflow under uint8
    weights, and {layer: channels widened}."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.calibrate import load_tensors_data

    graph = onnx.load(str(model_path)).graph
    inits = {i.name: i for i in graph.initializer}
    ranges = load_tensors_data(ranges_path)
    overrides: dict = {}
    widened: dict[str, int] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[1] not in inits \
                or node.input[2] not in inits or node.input[0] not in ranges:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        b = numpy_helper.to_array(inits[node.input[2]]).reshape(-1)
        axis = 0
        if node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            axis = 0 if trans_b else 1
        by_channel = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        if len(b) != len(by_channel):
            continue
        data = ranges[node.input[0]]
        lo, hi = float(np.asarray(data.range_value[0]).min()), float(np.asarray(data.range_value[1]).max())
        rmin, rmax, count = weight_floor(by_channel, b, _input_scale(lo, hi))
        if count:
            widened[node.name or node.input[1]] = count
            overrides[node.input[1]] = [{"axis": axis, "rmin": float(rmin[0]), "rmax": float(rmax[0])}] + [
                {"rmin": float(a), "rmax": float(z)} for a, z in zip(rmin[1:], rmax[1:], strict=True)]
    return overrides, widened
