"""Weight rounding by optimisation (the layer-wise objective of AdaRound, Nagel et al. 2020) and
per-layer bias correction.

Rounding each weight to the nearest int8 step is not what keeps a layer's output: what matters is
the output error over real inputs. Per output channel o the target is the fp32 output w.x on the
fp32 input x; the int8 network computes w~.x~, with x~ the layer's input in the (nearest-rounded)
int8 network. With w~ = w + s e (s the channel's step, e the rounding error in steps) and
r = w.(x - x~) the error that arrives from upstream, E[(w.x - w~.x~)^2] / s^2 is
e^T C e - 2 e^T b + const, with C = E[x~ x~^T] and b = (E[x~ x^T] - C) u (u = w / s): the rounding
also compensates what the layers before it got wrong ("asymmetric reconstruction" in the
AdaRound paper). Without an int8 network to read x~ from, x~ = x and b = 0. The layer's bias then
takes the remaining mean shift, w.E[x] - w~.E[x~] (empirical bias correction, per layer, so
corrections do not add up along the network as they do when every layer is corrected at once:
measured on EfficientNet-Lite1, correcting all layers at once from one pass lowered top-1
agreement from 0.88 to 0.77). Each weight may round down or up:
- a depthwise channel has k*k weights (9 for 3x3): all 2^9 choices are tried, exactly (a 5x5
  kernel's 25: greedy descent, as below, with the channel's own C);
- a wider layer (1x1, kxk, Gemm): greedy descent, flipping the weight that lowers e^T C e most,
  per channel, until nothing improves (or the step bound).
The weight that sets a channel's scale (its largest |w|) is never moved, so ONNX Runtime's
quantizer, fed the rounded float weights, computes the same scale and reproduces the choice
exactly. Measured on EfficientNet-Lite1: nearest rounding of the first depthwise layer alone
cost 13 points of top-1 agreement.

ONNX Runtime's quantizer rounds to nearest; NNCF and ai-edge-quantizer have no AdaRound for ONNX
graphs; so it is written here (numpy), for symmetric int8 weights (QInt8 grids: the steps of
max|w| / 127, or / 64 with reduce_range).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgehub.converters.int8.qdq_network import Int8Network, bias_of, probe_session, set_bias

MAX_DIM = 2304  # largest input patch (Cin * k * k) whose second moment is formed
MAX_FLIPS = 400  # greedy steps per layer


@dataclass(frozen=True)
class LayerShape:
    node: str
    input: str  # the tensor the layer reads
    weight: str  # initializer name
    kind: str  # "depthwise" | "dense" (conv with group 1) | "gemm"
    kernel: tuple[int, ...] = (1, 1)
    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)
    channels: int = 0  # input channels
    trans_b: bool = False


@dataclass
class RoundingReport:
    layers: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    error_before: float = 0.0  # sum over layers of the objective, relative to u^T C u
    error_after: float = 0.0
    biases_corrected: int = 0
    from_int8_inputs: bool = False  # x~ read from the int8 network (else x~ = x)
    seconds: float = 0.0
    timed_out: bool = False

    def notes(self) -> dict:
        return {"layers": len(self.layers), "skipped": len(self.skipped), "seconds": round(self.seconds, 1),
                "objective_nearest": round(self.error_before, 6), "objective_optimized": round(self.error_after, 6),
                "biases_corrected": self.biases_corrected, "int8_inputs": self.from_int8_inputs,
                "timed_out": self.timed_out}


def _attr(node, name, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def layer_shapes(model) -> tuple[list[LayerShape], dict[str, str]]:
    """The layers whose rounding can be optimised, and why the others cannot."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    layers, skipped = [], {}
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if n.op_type == "Gemm":
            if _attr(n, "transA", 0):
                skipped[n.name] = "Gemm with transA"
                continue
            trans_b = bool(_attr(n, "transB", 0))
            dim = w.shape[1] if trans_b else w.shape[0]
            if dim > MAX_DIM:
                skipped[n.name] = f"input of {dim} features is over {MAX_DIM}"
                continue
            layers.append(LayerShape(n.name, n.input[0], n.input[1], "gemm", channels=dim, trans_b=trans_b))
            continue
        if w.ndim != 4:
            skipped[n.name] = "not a 2-D convolution"
            continue
        groups = int(_attr(n, "group", 1))
        cin = w.shape[1] * groups
        kernel = tuple(w.shape[2:])
        common = dict(kernel=kernel, strides=tuple(_attr(n, "strides", [1, 1])),
                      pads=tuple(_attr(n, "pads", [0, 0, 0, 0])), dilations=tuple(_attr(n, "dilations", [1, 1])),
                      channels=cin)
        if _attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            skipped[n.name] = "auto_pad convolution"
        elif groups == cin and w.shape[1] == 1:
            layers.append(LayerShape(n.name, n.input[0], n.input[1], "depthwise", **common))
        elif groups == 1 and cin * kernel[0] * kernel[1] <= MAX_DIM:
            layers.append(LayerShape(n.name, n.input[0], n.input[1], "dense", **common))
        else:
            skipped[n.name] = "grouped convolution" if groups != 1 else f"input patch over {MAX_DIM} values"
    return layers, skipped


def patches(x: np.ndarray, shape: LayerShape) -> np.ndarray:
    """Input patches of a conv: [B, C, Ho, Wo, kh, kw] (a strided view where possible)."""
    kh, kw = shape.kernel
    top, left, bottom, right = shape.pads[0], shape.pads[1], shape.pads[2], shape.pads[3]
    if any((top, left, bottom, right)):
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    dh, dw = shape.dilations
    win = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, :: shape.strides[0], :: shape.strides[1], ::dh, ::dw]
    return win


def input_rows(x: np.ndarray, shape: LayerShape) -> np.ndarray:
    """The layer's input as the vectors its weight rows meet: [N, D] (gemm, convolution: one row
    per output position, D = Cin*kh*kw in the weights' order) or [C, N, kh*kw] (depthwise)."""
    x = x.astype(np.float32)
    if shape.kind == "gemm":
        return x.reshape(len(x), -1)
    if shape.kind == "depthwise":
        p = patches(x, shape)  # [B, C, Ho, Wo, kh, kw]
        return np.moveaxis(p, 1, 0).reshape(p.shape[1], -1, shape.kernel[0] * shape.kernel[1])
    if shape.kernel == (1, 1) and shape.strides == (1, 1) and not any(shape.pads):
        return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    p = patches(x, shape)
    return np.moveaxis(p, 1, 3).reshape(-1, x.shape[1] * shape.kernel[0] * shape.kernel[1])


@dataclass
class Moments:
    """Sums over the calibration data of one layer's input statistics (x~ = x without an int8 network)."""

    second: np.ndarray  # sum x~ x~^T: [D, D], or [C, k*k, k*k] for depthwise
    cross: np.ndarray | None  # sum x~ x^T, same shape (None: x~ = x)
    sum_x: np.ndarray  # [D] or [C, k*k]
    sum_q: np.ndarray
    rows: int

    def normalised(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        n = max(self.rows, 1)
        return (self.second / n, None if self.cross is None else self.cross / n, self.sum_x / n, self.sum_q / n)


def accumulate(moments: dict[str, Moments], shape: LayerShape, x: np.ndarray, xq: np.ndarray | None = None,
               *, means_only: bool = False) -> None:
    """Add one batch of the layer's fp32 input `x` (and its input `xq` in the int8 network) to
    `moments`; `means_only`: sums for the bias shift, no second moments (nearest rounding)."""
    rx = input_rows(x, shape)
    rq = rx if xq is None else input_rows(xq, shape)
    if means_only:
        axis = 1 if shape.kind == "depthwise" else 0
        second = cross = np.zeros(1)
        sums = rx.sum(axis, dtype=np.float64), rq.sum(axis, dtype=np.float64)
        rows = rx.shape[axis]
    elif shape.kind == "depthwise":
        second = np.einsum("cni,cnj->cij", rq, rq, dtype=np.float64, optimize=True)
        cross = None if xq is None else np.einsum("cni,cnj->cij", rq, rx, dtype=np.float64, optimize=True)
        sums = rx.sum(1, dtype=np.float64), rq.sum(1, dtype=np.float64)
        rows = rx.shape[1]
    else:
        second = rq.T.astype(np.float64) @ rq
        cross = None if xq is None else rq.T.astype(np.float64) @ rx
        sums = rx.sum(0, dtype=np.float64), rq.sum(0, dtype=np.float64)
        rows = rx.shape[0]
    old = moments.get(shape.node)
    if old is None:
        moments[shape.node] = Moments(second, cross, sums[0], sums[1], rows)
    else:
        old.second = old.second + second
        if cross is not None:
            old.cross += cross
        old.sum_x += sums[0]
        old.sum_q += sums[1]
        old.rows += rows


def _quad(e: np.ndarray, c: np.ndarray) -> float:
    """sum over rows of e C e (C per row when 3-D); matmuls, not a 3-operand einsum (which numpy
    runs as one loop: 15 s for EfficientNet-Lite1's layers against well under 1)."""
    ec = np.matmul(e[:, None, :], c)[:, 0, :] if c.ndim == 3 else e @ c
    return float(np.sum(ec * e))


def _objective(e: np.ndarray, c: np.ndarray, b: np.ndarray) -> float:
    """sum over rows of e C e - 2 e.b (C per row when 3-D)."""
    return _quad(e, c) - 2 * float(np.sum(e * b))


def _exhaustive(e0: np.ndarray, d: np.ndarray, movable: np.ndarray, c: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Best rounding of each row of `e0` (rounding errors in steps) by trying every subset of
    flips; d = the change a flip makes (+1 or -1 step), c = per-row matrices [R, D, D], b [R, D]."""
    rows, dim = e0.shape
    combos = np.array(list(itertools.product((0, 1), repeat=dim)), dtype=np.float64)  # [K, D]
    best = e0.copy()
    for start in range(0, rows, 256):
        sl = slice(start, start + 256)
        flips = combos[None] * (d[sl] * movable[sl])[:, None, :]  # [r, K, D]
        cand = e0[sl][:, None, :] + flips
        obj = np.einsum("rki,rij,rkj->rk", cand, c[sl], cand, optimize=True) - 2 * np.einsum("rki,ri->rk", cand, b[sl])
        best[sl] = cand[np.arange(len(cand)), obj.argmin(1)]
    return best


def _greedy(e: np.ndarray, d: np.ndarray, movable: np.ndarray, c: np.ndarray, b: np.ndarray,
            max_flips: int) -> np.ndarray:
    """Greedy descent on e^T C e - 2 e^T b for every row at once (one shared C [D, D], or one
    per row [R, D, D]: a depthwise layer's channels)."""
    e = e.copy()
    d = d * movable
    per_row = c.ndim == 3
    g = (np.matmul(e[:, None, :], c)[:, 0, :] if per_row else e @ c) - b  # half the gradient
    diag = np.diagonal(c, axis1=-2, axis2=-1)
    rows = np.arange(len(e))
    for _ in range(max_flips):
        gain = 2 * d * g + d * d * diag  # change of the objective when flipping each weight
        gain[d == 0] = np.inf
        i = gain.argmin(1)
        better = gain[rows, i] < -1e-12 * (diag.max() or 1.0)
        if not better.any():
            break
        r, col = rows[better], i[better]
        step = d[r, col]
        e[r, col] += step
        g[r] += step[:, None] * (c[r, col] if per_row else c[col])
        d[r, col] = -step  # flipping again goes back
    return e


@dataclass
class Rounded:
    weights: np.ndarray  # on the int8 grid, the layer's weight layout
    bias_shift: np.ndarray  # add to the layer's bias: w.E[x] - w~.E[x~] per output channel
    before: float  # objective of nearest rounding, relative to u^T C u
    after: float


def round_weights(w: np.ndarray, shape: LayerShape, moments: Moments, qmax: int, optimise: bool = True,
                  min_step: float = 0.0) -> Rounded:
    """Float weights on the int8 grid, rounded to minimise the layer's output error (`optimise`)
    or to the nearest step; with the bias shift that leaves the mean output unchanged. `min_step`:
    the quantizer's floor on a channel's step (PT2E's observers use 2^-12), so the grid is its."""
    second, cross, mean_x, mean_q = moments.normalised()
    if shape.kind == "gemm":
        rows = w if shape.trans_b else w.T  # [out, in]
    else:
        rows = w.reshape(w.shape[0], -1)
    rows = rows.astype(np.float64)
    absmax = np.abs(rows).max(1)
    scale = np.maximum(np.where(absmax > 0, absmax / qmax, 1.0), min_step)
    u = rows / scale[:, None]
    q = np.round(u)
    e0 = q - u
    d = np.where(e0 > 0, -1.0, np.where(e0 < 0, 1.0, 0.0))
    movable = np.ones_like(u)
    movable[np.arange(len(u)), np.abs(u).argmax(1)] = 0.0  # keeps the scale
    movable[np.abs(q + d) > qmax] = 0.0
    if not optimise:
        new = q * scale[:, None]
        per = len(u) // len(mean_x) if shape.kind == "depthwise" else None
        mx = np.repeat(mean_x, per, 0) if per else mean_x[None, :]
        mq = np.repeat(mean_q, per, 0) if per else mean_q[None, :]
        shift = np.sum(rows * mx, 1) - np.sum(new * mq, 1)
        out = (new if shape.trans_b else new.T) if shape.kind == "gemm" else new.reshape(w.shape)
        return Rounded(out.astype(np.float32), shift, 0.0, 0.0)
    if shape.kind == "depthwise":
        per_channel = len(u) // len(second)  # output channel o reads input channel o // multiplier
        c = np.repeat(second, per_channel, axis=0)
        b = np.zeros_like(u) if cross is None else np.einsum("rij,rj->ri", np.repeat(cross - second, per_channel, 0), u)
        e = _exhaustive(e0, d, movable, c, b) if u.shape[1] <= 12 else _greedy(e0, d, movable, c, b, MAX_FLIPS)
        mx, mq = np.repeat(mean_x, per_channel, 0), np.repeat(mean_q, per_channel, 0)
        energy = _quad(u, c)
    else:
        c = second
        b = np.zeros_like(u) if cross is None else u @ (cross - second).T
        e = _greedy(e0, d, movable, c, b, MAX_FLIPS)
        mx, mq = mean_x[None, :], mean_q[None, :]
        energy = _quad(u, c)
    new = (u + e) * scale[:, None]  # = (q + flips) * scale: exactly on the grid
    shift = np.sum(rows * mx, 1) - np.sum(new * mq, 1)
    out = (new if shape.trans_b else new.T) if shape.kind == "gemm" else new.reshape(w.shape)
    energy = energy or 1.0
    return Rounded(out.astype(np.float32), shift, _objective(e0, c, b) / energy, _objective(e, c, b) / energy)


def optimise_rounding(model, data: dict[str, np.ndarray], *, qmax: int, int8: Int8Network | None = None,
                      correct_bias: bool = True, optimise: bool = True, time_budget_s: float = 300.0,
                      batch: int = 8, on_progress: Callable[[str], None] = lambda m: None) -> RoundingReport:
    """Replace the weights of `model` (fp32, in place) by int8-grid values rounded by optimisation
    (or, without `optimise`, to the nearest step: bias correction alone), and (with `correct_bias`)
    shift each layer's bias by the mean error that remains.

    With `int8`, layers are taken one at a time in graph order: the fp32 network and the int8
    network (updated after each layer) run over `data` for each layer, so x~ includes what the
    rounded layers before it do. Without, x~ = x and one run collects every layer's statistics.
    Layers left when the time budget runs out keep nearest rounding (the quantizer does that).
    """
    from onnx import numpy_helper

    start = time.monotonic()
    report = RoundingReport(from_int8_inputs=int8 is not None)
    layers, report.skipped = layer_shapes(model)
    if not layers:
        return report
    reference = type(model)()
    reference.CopyFrom(model)  # the target: the fp32 network as it was
    session, names = probe_session(reference, [s.input for s in layers])
    n = len(next(iter(data.values())))

    def statistics(todo: list[LayerShape], label: str) -> dict[str, Moments]:
        q_session = None
        if int8 is not None:
            q_session, q_names = probe_session(int8.model, [int8.input_of(s.node) for s in todo])
        moments: dict[str, Moments] = {}
        for i in range(0, n, batch):
            on_progress(f"rounding{label}: input statistics {min(i + batch, n)}/{n}")
            feed = {k: v[i:i + batch] for k, v in data.items()}
            got = dict(zip(names, session.run(None, feed), strict=True))
            got_q = dict(zip(q_names, q_session.run(None, feed), strict=True)) if q_session is not None else {}
            for shape in todo:
                accumulate(moments, shape, got[shape.input], got_q.get(int8.input_of(shape.node)) if got_q else None,
                           means_only=not optimise)
        return moments

    inits = {i.name: i for i in model.graph.initializer}
    moments = statistics(layers, "") if int8 is None else {}
    for k, shape in enumerate(layers, 1):
        if time.monotonic() - start > time_budget_s:
            report.timed_out = True
            report.skipped.update({s.node: "time budget spent" for s in layers[k - 1:]})
            break
        label = f" {k}/{len(layers)}"
        stats = moments.pop(shape.node) if int8 is None else statistics([shape], label)[shape.node]
        on_progress(f"{'rounding' if optimise else 'bias correction'}{label}: {shape.node}")
        w = numpy_helper.to_array(inits[shape.weight])
        rounded = round_weights(w, shape, stats, qmax, optimise)
        if optimise:  # nearest rounding is the quantizer's own: the float weights stay as they were
            inits[shape.weight].CopyFrom(numpy_helper.from_array(rounded.weights, shape.weight))
        if correct_bias and np.any(rounded.bias_shift) and set_bias(model, shape.node, rounded.bias_shift):
            report.biases_corrected += 1
        if int8 is not None:
            int8.write(shape.node, rounded.weights, bias_of(model, shape.node))
        report.layers.append(shape.node)
        report.error_before += rounded.before
        report.error_after += rounded.after
    report.seconds = time.monotonic() - start
    return report
