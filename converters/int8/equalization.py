"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019) on an fp32 ONNX graph.

For two convolutions in a row, conv1 -> act -> conv2, with act positive-homogeneous (nothing,
ReLU) scaling output channel c of conv1 by 1/s_c and the matching input channel of conv2 by s_c
leaves the function unchanged. With s_c = sqrt(r1_c / r2_c) (r = the channel's largest |weight|)
both channels end with the same range, so int8 weights of a depthwise layer no longer spend
their grid on one wide channel, and the activation between them is more even per channel.

ReLU6 (Clip(0, 6)) is not homogeneous: clip(x/s, 0, 6) != clip(x, 0, 6)/s. It is rewritten exactly
as Relu followed by Min with a per-channel bound 6/s_c, so the function is unchanged (pairs
behind any other Clip are left alone). ONNX Runtime's quantizer, NNCF and ai-edge-quantizer
have no cross-layer equalization for ONNX graphs, so it is written here, in numpy.

Bias absorption moves the part of conv1's bias that its ReLU never cuts into conv2's bias (a
smaller range for the activation in between); it is exact only where conv2 is 1x1 without
padding, so only there, and it uses the smallest value the calibration data showed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Scales are kept in this band: a dead channel (all-zero weights) would otherwise ask for 0 or inf.
MIN_SCALE, MAX_SCALE = 1e-3, 1e3


@dataclass
class EqualizationReport:
    pairs: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # conv1 name -> why it was not equalized
    relu6_rewritten: int = 0
    absorbed: list[str] = field(default_factory=list)

    def notes(self) -> dict:
        return {"pairs": len(self.pairs), "relu6_rewritten": self.relu6_rewritten,
                "bias_absorbed": len(self.absorbed), "skipped": len(self.skipped)}


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _const(graph, name: str, inits: dict) -> np.ndarray | None:
    import onnx

    if name in inits:
        return onnx.numpy_helper.to_array(inits[name])
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return onnx.numpy_helper.to_array(_attr(node, "value"))
    return None


def _clip_bounds(graph, node, inits) -> tuple[float, float] | None:
    lo = _attr(node, "min")
    hi = _attr(node, "max")
    if len(node.input) > 1 and node.input[1]:
        v = _const(graph, node.input[1], inits)
        lo = None if v is None else float(v)
    if len(node.input) > 2 and node.input[2]:
        v = _const(graph, node.input[2], inits)
        hi = None if v is None else float(v)
    return (lo, hi) if lo is not None and hi is not None else None


def find_pairs(model) -> tuple[list[tuple], dict[str, str]]:
    """(conv1, activation or None, conv2) triples that can be equalized, and why others cannot."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    pairs, skipped = [], {}
    for conv1 in graph.node:
        if conv1.op_type != "Conv" or len(conv1.input) < 2 or conv1.input[1] not in inits:
            continue
        out = conv1.output[0]
        users = consumers.get(out, [])
        if out in outputs or len(users) != 1:
            skipped[conv1.name] = "its output has several consumers (a residual branch)"
            continue
        act, nxt = None, users[0]
        if nxt.op_type in ("Relu", "Clip"):
            if nxt.op_type == "Clip":
                bounds = _clip_bounds(graph, nxt, inits)
                if bounds is None or bounds[0] != 0.0:
                    skipped[conv1.name] = "followed by a Clip that is not ReLU/ReLU6-like"
                    continue
            act = nxt
            after = consumers.get(nxt.output[0], [])
            if nxt.output[0] in outputs or len(after) != 1:
                skipped[conv1.name] = "its activation has several consumers"
                continue
            nxt = after[0]
        if nxt.op_type != "Conv" or nxt.input[0] != (act.output[0] if act else out) or nxt.input[1] not in inits:
            skipped[conv1.name] = f"followed by {nxt.op_type}, not a convolution"
            continue
        pairs.append((conv1, act, nxt))
    return pairs, skipped


def _input_channel_ranges(w2: np.ndarray, groups: int, channels: int) -> np.ndarray:
    """max |w| of conv2 per input channel (of the `channels` conv1 produces)."""
    cout, per_group = w2.shape[0], w2.shape[1]
    per_out = cout // groups
    r = np.zeros(channels, dtype=np.float64)
    a = np.abs(w2).reshape(cout, per_group, -1).max(-1)  # [cout, per_group]
    for g in range(groups):
        r[g * per_group:(g + 1) * per_group] = a[g * per_out:(g + 1) * per_out].max(0)
    return r


def _scale_input_channels(w2: np.ndarray, groups: int, s: np.ndarray) -> np.ndarray:
    cout, per_group = w2.shape[0], w2.shape[1]
    per_out = cout // groups
    w2 = w2.copy()
    for g in range(groups):
        w2[g * per_out:(g + 1) * per_out] *= s[g * per_group:(g + 1) * per_group].reshape(1, per_group, *([1] * (w2.ndim - 2)))
    return w2.astype(np.float32)


def equalize(model, iterations: int = 2) -> EqualizationReport:
    """Equalize every matching pair in place (a few sweeps, since a layer may be in two pairs)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    report = EqualizationReport()
    pairs, report.skipped = find_pairs(model)
    inits = {i.name: i for i in graph.initializer}
    scales: dict[str, np.ndarray] = {}  # conv1 name -> total scale applied (for ReLU6 bounds)
    clip_of: dict[str, object] = {}
    for _ in range(iterations):
        for conv1, act, conv2 in pairs:
            w1 = numpy_helper.to_array(inits[conv1.input[1]]).astype(np.float64)
            w2 = numpy_helper.to_array(inits[conv2.input[1]]).astype(np.float64)
            c = w1.shape[0]
            groups2 = int(_attr(conv2, "group", 1))
            if w2.shape[1] * groups2 != c:
                report.skipped[conv1.name] = "channel counts of the pair do not match"
                continue
            r1 = np.abs(w1).reshape(c, -1).max(1)
            r2 = _input_channel_ranges(w2, groups2, c)
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.sqrt(r1 / r2)
            s = np.where(np.isfinite(s) & (s > 0), s, 1.0).clip(MIN_SCALE, MAX_SCALE)
            w1 /= s.reshape(c, *([1] * (w1.ndim - 1)))
            inits[conv1.input[1]].CopyFrom(numpy_helper.from_array(w1.astype(np.float32), conv1.input[1]))
            if len(conv1.input) > 2 and conv1.input[2] in inits:
                b1 = numpy_helper.to_array(inits[conv1.input[2]]).astype(np.float64) / s
                inits[conv1.input[2]].CopyFrom(numpy_helper.from_array(b1.astype(np.float32), conv1.input[2]))
            new_w2 = _scale_input_channels(w2, groups2, s)
            inits[conv2.input[1]].CopyFrom(numpy_helper.from_array(new_w2, conv2.input[1]))
            scales[conv1.name] = scales.get(conv1.name, np.ones(c)) * s
            if act is not None and act.op_type == "Clip":
                clip_of[conv1.name] = act
            if (conv1.name, conv2.name) not in report.pairs:
                report.pairs.append((conv1.name, conv2.name))
    # ReLU6 behind a rescaled conv: Relu, then Min with the per-channel bound hi / s_c.
    for name, clip in clip_of.items():
        lo, hi = _clip_bounds(graph, clip, inits)
        s = scales[name]
        bound_name = f"{name}_relu6_bound"
        bound = (hi / s).astype(np.float32).reshape(len(s), 1, 1)
        graph.initializer.append(numpy_helper.from_array(bound, bound_name))
        relu_out = f"{clip.output[0]}_relu"
        index = list(graph.node).index(clip)
        relu = helper.make_node("Relu", [clip.input[0]], [relu_out], name=f"{clip.name}_relu")
        low = helper.make_node("Min", [relu_out, bound_name], [clip.output[0]], name=f"{clip.name}_min")
        graph.node.remove(clip)
        graph.node.insert(index, low)
        graph.node.insert(index, relu)
        report.relu6_rewritten += 1
    onnx.checker.check_model(model)
    return report


def absorb_biases(model, minima: dict[str, np.ndarray], pairs: list[tuple]) -> list[str]:
    """Move h_c = max(0, min of conv1's output channel c) from conv1's bias into conv2's bias, for
    conv1 -> Relu -> 1x1 conv2 without padding (exact: relu(x - h) = relu(x) - h where x >= h).
    `minima` maps conv1's output name to the per-channel minimum seen on the calibration data."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done = []
    for conv1, act, conv2 in pairs:
        if act is None or act.op_type != "Relu" or conv1.output[0] not in minima:
            continue
        w2 = numpy_helper.to_array(inits[conv2.input[1]])
        if w2.shape[2:] != (1, 1) or any(_attr(conv2, "pads", [0]) or [0]) or int(_attr(conv2, "group", 1)) != 1:
            continue
        if len(conv1.input) < 3 or conv1.input[2] not in inits or len(conv2.input) < 3 or conv2.input[2] not in inits:
            continue
        h = np.maximum(0.0, minima[conv1.output[0]]).astype(np.float64)
        if not h.any():
            continue
        b1 = numpy_helper.to_array(inits[conv1.input[2]]).astype(np.float64) - h
        b2 = numpy_helper.to_array(inits[conv2.input[2]]).astype(np.float64) + w2[:, :, 0, 0].astype(np.float64) @ h
        inits[conv1.input[2]].CopyFrom(numpy_helper.from_array(b1.astype(np.float32), conv1.input[2]))
        inits[conv2.input[2]].CopyFrom(numpy_helper.from_array(b2.astype(np.float32), conv2.input[2]))
        done.append(conv1.name)
    return done
