"""Static int8 chosen by measurement, cheapest steps first (the int8_static pass's engine).

1. Calibration method (MinMax, Percentile, Entropy with 2048-bin histograms), then the kernel
   scheme, each a trial: calibrate once per method, re-quantize per trial, score on held-back
   calibration data (converters/int8/holdout.py).
2. Cross-layer equalization (with bias absorption): one more trial, kept when it scores better.
3. Bias correction (each layer's mean output shift from its weights' rounding): one trial.
4. Small layers kept float where their measured gain is worth the few bytes (converters/int8/
   small_layers.py): cheap, one unfused run per small layer, kept when better.
5. Rounding by optimisation, layer by layer against the int8 network (converters/int8/rounding.py):
   the slow step, only when the result so far misses the budget, time-bounded; its small layers
   chosen again, and kept when it beats step 4 (measured on EfficientNet-Lite1: bias correction +
   small layers float scored 0.99875 held-back cosine, rounding + small layers 0.99855).

Every trial and decision is recorded for the recipe's notes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgehub.converters.errors import ConversionError
from edgehub.converters.int8.bias_floor import uint8_weight_overrides
from edgehub.converters.int8.calibration import CalibrationMethodName, compute_ranges
from edgehub.converters.int8.holdout import HoldoutScorer, TrialScore
from edgehub.converters.int8.ort_log import OrtLog
from edgehub.converters.int8.ort_quantize import U8U8_MIN_GAIN, Scheme, quantize_from_ranges
from edgehub.converters.int8.qdq_network import Int8Network, probe_session
from edgehub.converters.int8.rounding import optimise_rounding

SYMMETRIC_WEIGHTS = ("u8s8", "reduce_range", "s8s8-symmetric")  # schemes whose weights rounding can place


def qmax_of(scheme: Scheme) -> int:
    """Largest int8 weight step of the scheme's symmetric weight grid (7 bits with reduce_range)."""
    return 64 if scheme == "reduce_range" else 127


@dataclass(frozen=True)
class Trial:
    graph: Path  # the fp32 graph that was quantized
    method: CalibrationMethodName
    scheme: Scheme
    ranges: Path
    qdq: Path  # the int8 network as the quantizer wrote it (not compacted)
    score: TrialScore
    steps: tuple[str, ...] = ()  # "equalized", "bias-corrected", "rounded"
    seconds: float = 0.0
    base: Path | None = None  # the float graph it came from before bias correction or rounding (else `graph`)

    @property
    def float_graph(self) -> Path:
        """The fp32 graph with float weights that computes what this trial approximates."""
        return self.base or self.graph

    def rank(self) -> float:
        return self.score.cosine - (U8U8_MIN_GAIN if self.scheme == "u8u8" else 0.0)

    def as_notes(self) -> dict:
        return {"method": self.method, "scheme": self.scheme, "steps": list(self.steps), **self.score.as_notes(),
                "seconds": round(self.seconds, 1)}


@dataclass
class Settings:
    methods: list[CalibrationMethodName]
    schemes: list[Scheme]
    equalize: str  # "auto" | "on" | "off"
    bias_correction: str
    rounding: str  # "auto" | "nearest" | "optimized"
    rounding_samples: int
    rounding_time_budget_s: float
    per_channel: bool
    nodes_to_exclude: list[str]
    op_types: list[str] | None
    num_bins: int
    percentile: float
    small_layers: str = "auto"  # "auto" | "off"
    small_layers_share: float = 0.02  # extra bytes allowed, as a share of the int8 weights


@dataclass
class Search:
    """One static int8 search over a pre-processed fp32 graph."""

    pre: Path
    calibrate: dict[str, np.ndarray]
    scorer: HoldoutScorer
    settings: Settings
    new_path: Callable[[str, str], Path]
    on_progress: Callable[[str], None]
    log: OrtLog = field(default_factory=OrtLog)
    trials: list[Trial] = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    _ranges: dict = field(default_factory=dict)

    # -- single trials ------------------------------------------------------------------------

    def ranges(self, graph: Path, method: CalibrationMethodName, scheme: Scheme) -> Path:
        key = (graph, method, scheme == "s8s8-symmetric")
        if key not in self._ranges:
            self.on_progress(f"calibrating ({method})")
            s = self.settings
            with self.log:
                self._ranges[key] = compute_ranges(graph, self.calibrate, method, self.new_path("calibration", ".json"),
                                                   symmetric=key[2], num_bins=s.num_bins, percentile=s.percentile,
                                                   op_types=s.op_types)
        return self._ranges[key]

    def quantize(self, graph: Path, method: CalibrationMethodName, scheme: Scheme, steps: tuple[str, ...],
                 ranges: Path | None = None, base: Path | None = None) -> Trial:
        started = time.monotonic()
        ranges = ranges or self.ranges(graph, method, scheme)
        label = ", ".join((scheme, method, *steps))
        self.on_progress(f"quantizing ({label})")
        out = self.write(graph, method, scheme, ranges, label=label)
        self.on_progress(f"measuring ({label})")
        trial = Trial(graph, method, scheme, ranges, out, self.scorer(out), steps, time.monotonic() - started, base)
        self.trials.append(trial)
        return trial

    def write(self, graph: Path, method: CalibrationMethodName, scheme: Scheme, ranges: Path, *,
              label: str = "", float_layers: list[str] = ()) -> Path:
        """One int8 network of `graph` from `ranges`; `float_layers` excluded (kept float)."""
        overrides = None
        if scheme == "u8u8":  # ONNX Runtime floors int8 weight scales for int32 biases, not uint8 ones
            overrides, widened = uint8_weight_overrides(graph, ranges)
            if widened:
                self.notes.setdefault("uint8_weight_floor", {})[label or "final"] = sum(widened.values())
        out = self.new_path(f"int8-{scheme}", ".onnx")
        s = self.settings
        with self.log:
            quantize_from_ranges(graph, out, ranges, scheme, method, per_channel=s.per_channel,
                                 nodes_to_exclude=[*s.nodes_to_exclude, *float_layers], op_types=s.op_types,
                                 weight_overrides=overrides)
        return out

    # -- the stages ------------------------------------------------------------------------------

    def choose_calibration(self) -> Trial:
        s = self.settings
        by_method = []
        for method in s.methods:
            try:
                by_method.append(self.quantize(self.pre, method, s.schemes[0], ()))
            except ConversionError as exc:  # e.g. too few samples for a histogram: the next method
                self.notes.setdefault("calibration_failed", {})[method] = str(exc)
        if not by_method:
            raise ConversionError("int8_static: no calibration method worked on this data: "
                                  + "; ".join(f"{m}: {why}" for m, why in self.notes["calibration_failed"].items()))
        best = max(by_method, key=Trial.rank)
        by_scheme = [best] + [self.quantize(self.pre, best.method, scheme, ()) for scheme in s.schemes[1:]]
        if len(s.schemes) > 1:
            self.notes["scheme_scores"] = {t.scheme: round(t.score.cosine, 6) for t in by_scheme}
        return max(by_scheme, key=Trial.rank)

    def try_equalization(self, best: Trial) -> Trial:
        import onnx

        from edgehub.converters.int8.equalization import absorb_biases, equalize, find_pairs

        if self.settings.equalize == "off":
            return best
        model = onnx.load(str(best.graph))
        pairs, _ = find_pairs(model)
        if not pairs:
            self.notes["equalization"] = {"kept": False, "why": "no consecutive convolution pairs to equalize"}
            return best
        self.on_progress("equalizing")
        report = equalize(model)
        pairs, _ = find_pairs(model)  # again: equalize replaced the ReLU6 nodes the first pairs hold
        report.absorbed = absorb_biases(model, _output_minima(model, pairs, self.calibrate), pairs)
        path = self.new_path("equalized", ".onnx")
        onnx.save(model, str(path))
        trial = self.quantize(path, best.method, best.scheme, (*best.steps, "equalized"))
        keep = self.settings.equalize == "on" or trial.rank() > best.rank()
        self.notes["equalization"] = {**report.notes(), "kept": keep, **trial.score.as_notes()}
        return trial if keep else best

    def try_bias_correction(self, best: Trial) -> Trial:
        if self.settings.bias_correction == "off":
            return best
        if best.scheme not in SYMMETRIC_WEIGHTS:
            self.notes["bias_correction"] = {"kept": False, "why": f"{best.scheme} weights are not on a symmetric grid"}
            return best
        import onnx

        model = onnx.load(str(best.graph))
        report = optimise_rounding(model, self.calibrate, qmax=qmax_of(best.scheme), optimise=False,
                                   on_progress=self.on_progress)
        path = self.new_path("bias-corrected", ".onnx")
        onnx.save(model, str(path))
        trial = self.quantize(path, best.method, best.scheme, (*best.steps, "bias-corrected"), ranges=best.ranges,
                              base=best.graph)
        keep = self.settings.bias_correction == "on" or trial.rank() > best.rank()
        self.notes["bias_correction"] = {"layers": report.biases_corrected, "kept": keep, **trial.score.as_notes()}
        return trial if keep else best

    def try_rounding(self, best: Trial, nearest: Trial, misses_budget: bool) -> Trial:
        """Rounding by optimisation of `nearest`'s graph (the best trial before bias correction,
        which the rounding includes), against `best` so far."""
        s = self.settings
        wanted = s.rounding == "optimized" or (s.rounding == "auto" and misses_budget)
        if not wanted:
            why = "nearest asked for" if s.rounding == "nearest" else "the result so far is within the budget"
            self.notes["rounding"] = {"chosen": "nearest", "why": why}
            return best
        if best.scheme not in SYMMETRIC_WEIGHTS:
            self.notes["rounding"] = {"chosen": "nearest", "why": f"{best.scheme} weights are not on a symmetric grid"}
            return best
        import onnx

        model = onnx.load(str(nearest.graph))
        network = Int8Network(onnx.load(str(nearest.qdq)))
        sample = {k: v[: s.rounding_samples] for k, v in self.calibrate.items()}
        report = optimise_rounding(model, sample, qmax=qmax_of(nearest.scheme), int8=network,
                                   time_budget_s=s.rounding_time_budget_s, on_progress=self.on_progress)
        path = self.new_path("rounded", ".onnx")
        onnx.save(model, str(path))
        # The ranges the statistics were taken under: the network the rounding compensated.
        trial = self.quantize(path, nearest.method, nearest.scheme, (*nearest.steps, "rounded"), ranges=nearest.ranges,
                              base=nearest.graph)
        rounding_notes = {**report.notes(), **trial.score.as_notes()}
        small: dict = {}
        trial = self.try_small_float_layers(trial, small)  # `best` may have had its own: compare like with like
        keep = s.rounding == "optimized" or trial.rank() > best.rank()
        self.notes["rounding"] = {**rounding_notes, "chosen": "optimized" if keep else "nearest",
                                  **({"small_layers_float": small} if small else {})}
        if report.timed_out:
            self.notes["rounding"]["why"] = (f"time budget of {s.rounding_time_budget_s:.0f} s spent: "
                                             f"{len(report.skipped)} layer(s) kept nearest rounding")
        return trial if keep else best

    def try_small_float_layers(self, best: Trial, notes: dict) -> Trial:
        """Small layers whose float computation recovers measurably more than their bytes cost;
        what was scanned and chosen goes into `notes`."""
        import onnx

        from edgehub.converters.int8 import small_layers
        from edgehub.converters.int8.float_layers import keep_float

        if self.settings.small_layers == "off":
            notes.update(kept=False, why="small_layers off")
            return best
        started = time.monotonic()
        qdq, fp32 = onnx.load(str(best.qdq)), onnx.load(str(best.float_graph))
        layers = small_layers.layer_weights(qdq, fp32)
        budget = self.settings.small_layers_share * sum(layer.weights for layer in layers)
        small = small_layers.candidates(layers, budget)
        if not small:
            notes.update(kept=False, why="no layer small enough")
            return best

        def unfused(model) -> float:
            path = self.new_path("small-float", ".onnx")
            onnx.save(model, str(path))
            try:
                return self.scorer(path, unfused=True).cosine
            finally:
                path.unlink()

        with self.log:
            gains = small_layers.scan(qdq, fp32, small, unfused, self.on_progress)
        chosen = small_layers.choose(gains, small, budget)
        notes.update(scanned=len(small), budget_bytes=int(budget), gains={n: gains[n] for n in chosen})
        if not chosen:
            notes.update(kept=False, why="no small layer gains measurably")
            return best
        path = self.new_path(f"int8-{best.scheme}", ".onnx")
        onnx.save(keep_float(qdq, fp32, set(chosen)), str(path))
        self.on_progress(f"measuring with {len(chosen)} small layer(s) float")
        trial = Trial(best.graph, best.method, best.scheme, best.ranges, path, self.scorer(path),
                      (*best.steps, "small layers float"), time.monotonic() - started, best.base)
        self.trials.append(trial)
        keep = trial.rank() > best.rank()
        notes.update(kept=keep, layers=chosen, **trial.score.as_notes())
        return trial if keep else best

    def summary(self, chosen: Trial) -> dict:
        notes = {"scheme": chosen.scheme, "calibrate_method": chosen.method, "steps": list(chosen.steps),
                 "held_back": chosen.score.as_notes(), "trials": [t.as_notes() for t in self.trials], **self.notes}
        if self.log.summary():
            notes["quantizer_log"] = self.log.summary()
        return notes


def _output_minima(model, pairs, data: dict[str, np.ndarray], batch: int = 16) -> dict[str, np.ndarray]:
    """Per-channel minimum of each pair's first convolution output over `data` (for bias absorption)."""
    wanted = [conv1.output[0] for conv1, act, _ in pairs if act is not None and act.op_type == "Relu"]
    if not wanted:
        return {}
    session, names = probe_session(model, wanted)
    n = len(next(iter(data.values())))
    minima: dict[str, np.ndarray] = {}
    for i in range(0, n, batch):
        got = dict(zip(names, session.run(None, {k: v[i:i + batch] for k, v in data.items()}), strict=True))
        for name in wanted:
            low = got[name].min(axis=tuple(a for a in range(got[name].ndim) if a != 1))
            minima[name] = low if name not in minima else np.minimum(minima[name], low)
    return minima


def copy_chosen(chosen: Trial, out: Path) -> Path:
    shutil.copyfile(chosen.qdq, out)
    return out

