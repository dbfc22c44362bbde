"""Full-int8 for TFLite (PT2E), chosen by measurement as the ONNX int8 search is.

Where the ideas of the ONNX search (converters/int8/search.py) apply to PyTorch's PT2E flow:
1. Layer + ReLU/ReLU6 fused in the quantizer (converters/int8/pt2e_quantizer.py): always on, it
   is what the TFLite kernel computes.
2. Calibration: the activation observer (HistogramObserver, which minimises the L2 error of the
   int8 grid, or MinMaxObserver) chosen by the cosine on held-back calibration samples.
3. Bias correction: each layer's mean output shift from rounding its (BatchNorm-folded) weights
   to the int8 grid, measured on calibration samples and taken off its bias; kept when it scores
   better. Correcting also the shift the int8 activations add (measured on the calibrated network
   against the float one) was tried and measured worse on EfficientNet-Lite1: held-back cosine
   0.9946 layer by layer (216 s), 0.978 all layers at once, against 0.9959 for the weights' alone.
4. Rounding by optimisation (converters/int8/pt2e_rounding.py): each weight of the folded layers
   rounded up or down to keep the layer's output over the calibration samples (AdaRound's
   objective, the ONNX path's solver), the remaining mean shift taken off the bias; tried after
   the cheap steps when they leave the held-back cosine under `rounding_below` (0.999), kept
   when it scores better. On EfficientNet-Lite1 it lifted the held-back
   cosine from 0.9958 (bias correction) to 0.9985, in about 2 minutes on 2 cores.
Candidates are scored in PyTorch (PT2E's simulated int8: the same grids the TFLite file gets), so
only the chosen one goes through the slow litert-torch conversion. Cross-layer equalization and
small layers in float are not applied here: PT2E folds BatchNorm inside `prepare_pt2e`, after the
point where the graph's weights could be rescaled, and the Edge TPU needs every layer in int8.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from typing import Any, Literal

import numpy as np

from edgehub.converters.int8.pt2e_quantizer import LAYERS, fused_quantizer
from edgehub.protocol.metrics import cosine

Observer = Literal["histogram", "minmax"]
MIN_HELD_BACK = 8  # fewer held-back samples than this cannot rank candidates


@dataclass
class Pt2eSettings:
    observer: Observer | Literal["auto"] = "auto"
    bias_correction: Literal["auto", "on", "off"] = "auto"
    rounding: Literal["auto", "optimized", "nearest"] = "auto"
    # "auto" rounds by optimisation only below this held-back cosine: the slow step runs where the
    # cheap ones leave a loss (EfficientNet-Lite1: 0.9958; a Fashion-MNIST CNN is above it).
    rounding_below: float = 0.999
    per_channel: bool = True
    held_back_share: float = 0.25
    bias_samples: int = 64


@dataclass
class Pt2eResult:
    converted: Any  # the PT2E module with int8 simulated (what litert-torch lowers)
    quantizer: Any
    notes: dict = field(default_factory=dict)


def quantization_config(observer: Observer, per_channel: bool) -> Any:
    """litert-torch's symmetric int8 config with the activation observer swapped."""
    from dataclasses import replace

    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e import MinMaxObserver

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False)
    if observer == "histogram":  # litert-torch's own choice
        return config
    spec = replace(config.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    return replace(config, input_activation=spec, output_activation=spec)


def rounded_weights(weight: Any, per_channel: bool) -> Any:
    """`weight` on PT2E's symmetric int8 grid (-127..127, per output channel), as float."""
    import torch

    w = weight.detach()
    dims = tuple(range(1, w.dim())) if per_channel and w.dim() > 1 else tuple(range(w.dim()))
    scale = torch.clamp(w.abs().amax(dim=dims, keepdim=True) / 127, min=2**-12)
    return torch.clamp(torch.round(w / scale), -127, 127) * scale


class _ShiftRecorder:
    """Called in the graph beside each layer with the layer's own arguments: accumulates the
    per-channel mean of layer(x, rounded W - W), the output shift that rounding the weights makes."""

    def __init__(self, per_channel: bool):
        self.per_channel = per_channel
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def record(self, key: str, kind: str, x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
               dilation: Any = 1, groups: int = 1) -> None:
        import torch
        import torch.nn.functional as F

        delta = rounded_weights(weight, self.per_channel) - weight.detach()
        with torch.no_grad():
            if kind == "linear.default":
                out = F.linear(x, delta)
                mean = out.reshape(-1, out.shape[-1]).mean(0)
            else:
                conv = F.conv1d if delta.dim() == 3 else F.conv2d
                out = conv(x, delta, None, stride, padding, dilation, groups)
                mean = out.transpose(0, 1).reshape(out.shape[1], -1).mean(1)
        self.sums[key] = self.sums.get(key, 0) + mean
        self.counts[key] = self.counts.get(key, 0) + 1


def correctable_layers(graph: Any) -> list[Any]:
    """Layers whose weight and bias are graph attributes (after prepare_pt2e folded BatchNorm)."""
    out = []
    for node in graph.nodes:
        name = str(getattr(node.target, "__name__", node.target))
        if node.op != "call_function" or name not in LAYERS or name == "convolution.default" or len(node.args) < 3:
            continue
        bias = node.args[2]
        if getattr(bias, "op", None) == "get_attr":
            out.append(node)
    return out


def probe_layers(module: Any, layers: list[str], record: Callable[..., None]) -> Any:
    """A copy of `module` that calls `record(name, kind, *layer args)` right after each of the
    named layers (kind: 'conv2d.default', ...), with the arguments the layer gets."""
    with warnings.catch_warnings():  # torch's pytree warns of its own deprecations on every deep copy
        warnings.simplefilter("ignore", FutureWarning)
        probe = copy.deepcopy(module)
    wanted = set(layers)
    for node in list(probe.graph.nodes):
        if node.op == "call_function" and node.name in wanted:
            with probe.graph.inserting_after(node):
                probe.graph.call_function(record, (node.name, str(node.target.__name__), *node.args))
    probe.recompile()
    return probe


def correct_biases(prepared: Any, feed: Callable[[Any], None], per_channel: bool) -> int:
    """Take each layer's weight-rounding shift off its bias in `prepared` (before calibration);
    `feed(module)` runs the calibration samples through a module. Returns the layers corrected."""
    import torch

    layers = correctable_layers(prepared.graph)
    if not layers:
        return 0
    recorder = _ShiftRecorder(per_channel)
    probe = probe_layers(prepared, [n.name for n in layers], recorder.record)
    with torch.no_grad():
        feed(probe)
    corrected = 0
    for layer in layers:
        if layer.name not in recorder.sums:
            continue
        bias = reduce(getattr, layer.args[2].target.split("."), prepared)
        shift = recorder.sums[layer.name] / recorder.counts[layer.name]
        if shift.shape != bias.shape:
            continue
        bias.data -= shift.to(bias.dtype)
        corrected += 1
    return corrected


def _flat(out: Any) -> np.ndarray:
    import torch

    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return np.concatenate([t.detach().float().reshape(len(t), -1).numpy() for t in leaves], axis=1)


def search(exported: Any, call: Callable[[int], tuple[tuple, dict]], count: int, settings: Pt2eSettings,
           on_progress: Callable[[str], None]) -> Pt2eResult:
    """The best PT2E int8 module for the exported float module `exported` (torch.export(...).module()).
    `call(i)` gives sample i's (args, kwargs); the first `count` samples are the calibration data."""
    with warnings.catch_warnings():  # torch's pytree warns of its own deprecations on every deep copy
        warnings.simplefilter("ignore", FutureWarning)
        return _search(exported, call, count, settings, on_progress)


def _search(exported: Any, call: Callable[[int], tuple[tuple, dict]], count: int, settings: Pt2eSettings,
            on_progress: Callable[[str], None]) -> Pt2eResult:
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    held = int(count * settings.held_back_share)
    if held < MIN_HELD_BACK:
        held = 0  # too few to rank candidates: litert-torch's observer, no trials
    calibrate_on = range(count - held)
    held_back = range(count - held, count)
    notes: dict = {"calibration_samples": len(calibrate_on), "held_back": held}
    if not held:
        notes["why"] = f"{count} calibration samples: too few to hold {MIN_HELD_BACK} back and measure candidates"

    def run(module: Any, indices: range) -> list:
        outs = []
        with torch.no_grad():
            for i in indices:
                args, kwargs = call(i)
                outs.append(module(*args, **kwargs))
        return outs

    reference = _flat_all(run(exported, held_back)) if held else None

    def build(observer: Observer, step: Literal["bias-correction", "rounding"] | None = None,
              ) -> tuple[Any, Any, float | None, dict]:
        from edgehub.converters.int8.pt2e_rounding import round_layers

        quantizer = fused_quantizer(quantization_config(observer, settings.per_channel))
        started = time.monotonic()
        prepared = prepare_pt2e(copy.deepcopy(exported), quantizer)
        trial: dict = {"fused_activations": quantizer.fused}
        if step == "bias-correction":
            on_progress(f"bias correction ({observer})")
            subset = range(min(settings.bias_samples, len(calibrate_on)))
            trial["biases_corrected"] = correct_biases(prepared, lambda m: run(m, subset), settings.per_channel)
        elif step == "rounding":
            trial["rounding"] = round_layers(prepared, correctable_layers(prepared.graph),
                                             lambda m, i: run(m, range(i, i + 1)), len(calibrate_on), on_progress)
        on_progress(f"calibrating ({observer}) on {len(calibrate_on)} samples")
        run(prepared, calibrate_on)
        converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
        score = cosine(_flat_all(run(converted, held_back)), reference) if held else None
        trial.update(cosine=None if score is None else round(score, 6), seconds=round(time.monotonic() - started, 1))
        return converted, quantizer, score, trial

    observers: list[Observer] = ["histogram", "minmax"] if settings.observer == "auto" and held else \
        ["histogram" if settings.observer == "auto" else settings.observer]
    trials: dict[str, dict] = {}
    best = None
    for observer in observers:
        converted, quantizer, score, trials[observer] = build(
            observer, "bias-correction" if settings.bias_correction == "on" else None)
        if best is None or (score or 0) > (best[2] or 0):
            best = (converted, quantizer, score, observer)
    assert best is not None
    notes["observer"] = best[3]
    for step, setting, forced in (("bias-correction", settings.bias_correction, "on"),
                                  ("rounding", settings.rounding, "optimized")):
        key = step.replace("-", "_")
        if step == "rounding" and setting != "nearest" and not settings.per_channel:
            notes[key] = {"kept": False, "why": "per-tensor weights: the rounding is chosen per output channel"}
        elif setting == "auto" and not held:
            notes[key] = {"kept": False, "why": "no held-back samples to measure it on"}
        elif step == "rounding" and setting == "auto" and (best[2] or 0) >= settings.rounding_below:
            notes[key] = {"kept": False, "why": f"held-back cosine {best[2]:.5f} already at or above "
                                                f"{settings.rounding_below}: not worth the slow step"}
        elif setting == "auto" or (step == "rounding" and setting == forced):
            converted, quantizer, score, trial = build(best[3], step)
            trials[f"{best[3]}+{step}"] = trial
            keep = setting == forced or (score or 0) > (best[2] or 0)
            detail = trial.get("rounding") or {"layers": trial.get("biases_corrected", 0)}
            notes[key] = {"kept": keep, **detail}
            if keep:
                best = (converted, quantizer, score, best[3])
        elif step == "bias-correction":
            notes[key] = {"kept": setting == forced}
    notes["trials"] = trials
    notes["held_back_cosine"] = None if best[2] is None else round(best[2], 6)
    return Pt2eResult(best[0], best[1], notes)


def _flat_all(outs: list) -> np.ndarray:
    return np.concatenate([_flat(o) for o in outs])
