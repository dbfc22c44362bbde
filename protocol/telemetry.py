"""Field telemetry: what an agent measures of real inference and reports per interval, and the
reference it is compared with. No raw input or output ever leaves the device: only counts, moments
and histograms over bins the hub chose from the eval set.

- Latency is counted in fixed geometric buckets (`LATENCY_EDGES_MS`), so intervals merge exactly
  (on the device when the outbox grows, on the hub when it downsamples) and percentiles come from
  the merged counts.
- Each input is summarised per request by one value, the mean over its elements; the interval keeps
  their moments and a histogram over the reference's edges (deciles of the eval set's values).
- Each output: for class scores the predicted-class histogram; otherwise the histogram of the
  output's L2 norm over the reference's edges.
- Drift is the population stability index (PSI) between a field histogram and the reference's
  proportions (0.1: a shift worth a look; 0.25: a large one, the usual reading).
"""

from __future__ import annotations

import bisect
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# 0.01 ms .. ~120 s, 1.25x apart: 74 edges, 75 buckets (the first and last open-ended).
LATENCY_EDGES_MS: tuple[float, ...] = tuple(round(0.01 * 1.25**k, 6) for k in range(74))
MAX_BINS = 64
PSI_EPSILON = 1e-4  # an empty bin on either side counts as this share (PSI is infinite otherwise)
DRIFT_ALERT_PSI = 0.25
# PSI over few samples is mostly sampling noise (about (bins - 1) / n for the same distribution):
# drift is measured from this many per-request values on.
MIN_DRIFT_SAMPLES = 200


def bucket(value: float, edges: tuple[float, ...] | list[float]) -> int:
    """The bin of `value`: 0 below the first edge, len(edges) at or above the last."""
    return bisect.bisect_right(edges, value)


def percentile(counts: list[int], q: float, edges: tuple[float, ...] = LATENCY_EDGES_MS) -> float | None:
    """The q-quantile (0..1) of values counted in `counts` over `edges` (the upper edge of its bin;
    the last edge for the open top bin); None without values."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank and n:
            return edges[min(i, len(edges) - 1)]
    return edges[-1]


def psi(reference: list[float], counts: list[int]) -> float | None:
    """Population stability index of observed `counts` against `reference` proportions (same bins);
    None without observations or with mismatched bins."""
    total = sum(counts)
    if total == 0 or len(reference) != len(counts):
        return None
    value = 0.0
    for expected, n in zip(reference, counts):
        e = max(expected, PSI_EPSILON)
        a = max(n / total, PSI_EPSILON)
        value += (a - e) * math.log(a / e)
    return value


class Reference(BaseModel):
    """Bins and the eval set's share in each (len(edges) + 1 shares); `classes` instead of edges for
    predicted-class histograms."""

    model_config = ConfigDict(extra="forbid")

    edges: list[float] = Field(default_factory=list, max_length=MAX_BINS)
    classes: int | None = Field(None, ge=2, le=4096)
    proportions: list[float] = Field(max_length=4096)

    @model_validator(mode="after")
    def _shape(self) -> Reference:
        if any(not math.isfinite(e) for e in self.edges) or self.edges != sorted(self.edges):
            raise ValueError("edges must be finite and sorted")
        bins = self.classes if self.classes is not None else len(self.edges) + 1
        if len(self.proportions) != bins:
            raise ValueError(f"{len(self.proportions)} proportions for {bins} bins")
        return self


class FieldReference(BaseModel):
    """What the field is compared with, per input and output name (computed on the eval set at publish)."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Reference] = Field(default_factory=dict, max_length=32)
    outputs: dict[str, Reference] = Field(default_factory=dict, max_length=32)


class TelemetrySettings(BaseModel):
    """Part of the desired state: how often to report, and the bins to count in."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    interval_s: float = Field(60.0, ge=1.0, le=3600.0)
    reference: FieldReference | None = None


class InputSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=128)
    count: int = Field(ge=0)
    mean: float = 0.0
    m2: float = Field(0.0, ge=0)  # sum of squared deviations (Welford), so intervals merge exactly
    min: float | None = None
    max: float | None = None
    hist: list[int] = Field(default_factory=list, max_length=MAX_BINS + 1)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0


class OutputSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=128)
    kind: Literal["classes", "norm"]
    hist: list[int] = Field(default_factory=list, max_length=4096)


ERROR_KINDS = ("bad_request", "unavailable", "inference")


class FieldStats(BaseModel):
    """The measured part of a telemetry event: requests, errors by kind, latency buckets, inputs and
    outputs. `merge` adds two intervals' stats exactly."""

    model_config = ConfigDict(extra="forbid")

    requests: int = Field(0, ge=0)
    errors: dict[Literal["bad_request", "unavailable", "inference"], int] = Field(default_factory=dict)
    latency_counts: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_EDGES_MS) + 1))
    inputs: list[InputSummary] = Field(default_factory=list, max_length=32)
    outputs: list[OutputSummary] = Field(default_factory=list, max_length=32)

    @field_validator("latency_counts")
    @classmethod
    def _buckets(cls, counts: list[int]) -> list[int]:
        if len(counts) != len(LATENCY_EDGES_MS) + 1 or any(n < 0 for n in counts):
            raise ValueError(f"latency_counts must be {len(LATENCY_EDGES_MS) + 1} counts >= 0")
        return counts

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def latency_ms(self, q: float) -> float | None:
        return percentile(self.latency_counts, q)

    def merge(self, other: FieldStats) -> FieldStats:
        errors = dict(self.errors)
        for kind, n in other.errors.items():
            errors[kind] = errors.get(kind, 0) + n
        return FieldStats(requests=self.requests + other.requests, errors=errors,
                          latency_counts=[a + b for a, b in zip(self.latency_counts, other.latency_counts)],
                          inputs=_merge_by_name(self.inputs, other.inputs, _merge_input),
                          outputs=_merge_by_name(self.outputs, other.outputs, _merge_output))


def _merge_by_name(a: list, b: list, merge) -> list:
    found = {s.name: s for s in a}
    for s in b:
        found[s.name] = merge(found[s.name], s) if s.name in found else s
    return list(found.values())


def _add_lists(a: list[int], b: list[int]) -> list[int]:
    if len(a) != len(b):  # bins changed between intervals (a new reference): keep the newer
        return list(b)
    return [x + y for x, y in zip(a, b)]


def _merge_input(a: InputSummary, b: InputSummary) -> InputSummary:
    n = a.count + b.count
    if n == 0:
        return b
    delta = b.mean - a.mean
    mean = a.mean + delta * b.count / n
    m2 = a.m2 + b.m2 + delta * delta * a.count * b.count / n
    lows = [v for v in (a.min, b.min) if v is not None]
    highs = [v for v in (a.max, b.max) if v is not None]
    return InputSummary(name=a.name, count=n, mean=mean, m2=max(0.0, m2), min=min(lows) if lows else None,
                        max=max(highs) if highs else None, hist=_add_lists(a.hist, b.hist))


def _merge_output(a: OutputSummary, b: OutputSummary) -> OutputSummary:
    return OutputSummary(name=a.name, kind=b.kind, hist=_add_lists(a.hist, b.hist) if a.kind == b.kind else b.hist)


def output_shift(before: FieldStats, after: FieldStats) -> float | None:
    """How far the outputs moved: the largest PSI of `after`'s output histograms against `before`'s
    proportions (same output, same bins); None with nothing to compare."""
    old = {o.name: o for o in before.outputs}
    values = []
    for o in after.outputs:
        ref = old.get(o.name)
        total = sum(ref.hist) if ref else 0
        if ref is None or total == 0 or len(ref.hist) != len(o.hist):
            continue
        value = psi([n / total for n in ref.hist], o.hist)
        if value is not None:
            values.append(value)
    return max(values) if values else None


def input_drift(stats: FieldStats, reference: FieldReference | None) -> float | None:
    """The largest PSI of an input's field histogram against the eval set's; None with no reference
    or fewer than MIN_DRIFT_SAMPLES values."""
    if reference is None:
        return None
    values = [psi(reference.inputs[s.name].proportions, s.hist) for s in stats.inputs
              if s.name in reference.inputs and s.hist and sum(s.hist) >= MIN_DRIFT_SAMPLES]
    values = [v for v in values if v is not None]
    return max(values) if values else None
