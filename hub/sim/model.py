"""The declared synthetic distribution behind simulated devices' numbers, and what a simulation
process is given. Pure and deterministic: the same device id and variant give the same numbers.

Latency: p50 = base_p50_ms[precision] x the device's hardware speed x exp(sigma * z), z a
standard normal drawn from a hash of (device, variant); p90 = p50 x p90_ratio, p99 = p50 x
p99_ratio. A device's hardware is one of `hardware` kinds, drawn by weight from a hash of its id
(so it lands in that kind's cohort). `failures` make chosen variants fail their benchmark or their
post-activation health check with a probability, per device. Every report says runtime
"simulated"; so do the device's runtimes.
"""

from __future__ import annotations

import hashlib
import math
from statistics import NormalDist

from pydantic import BaseModel, ConfigDict, Field

from edgehub.protocol.messages import BenchmarkReport, Hardware, Latency
from edgehub.protocol.telemetry import (
    LATENCY_EDGES_MS,
    FieldReference,
    FieldStats,
    InputSummary,
    OutputSummary,
    bucket,
)


class HardwareKind(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    weight: float = Field(gt=0)
    arch: str = "x86_64"
    cores: int = Field(ge=1)
    ram_mb: int = Field(ge=1)
    speed: float = Field(gt=0)  # latency multiplier: 2.0 is twice as slow


class FailureRule(BaseModel):
    """Variants whose id contains `match` fail with these probabilities (per device, deterministic)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    match: str
    benchmark: float = Field(0.0, ge=0, le=1)
    activation: float = Field(0.0, ge=0, le=1)
    # In the field (telemetry of real requests): the share of requests that fail, and how many times
    # slower the p99 is. A variant can pass its benchmark and health check and still fail here.
    field_errors: float = Field(0.0, ge=0, le=1)
    field_slowdown: float = Field(1.0, ge=1)


def _unit(*parts: str) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


class SyntheticDistribution(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    base_p50_ms: dict[str, float] = Field(default_factory=lambda: {"fp32": 2.0, "fp16": 2.1, "int8": 1.7,
                                                                   "int4": 1.6})
    sigma: float = Field(0.08, ge=0, le=2)
    p90_ratio: float = Field(1.15, ge=1)
    p99_ratio: float = Field(1.5, ge=1)
    hardware: list[HardwareKind] = Field(default_factory=lambda: [
        HardwareKind(name="small", weight=0.3, cores=2, ram_mb=2048, speed=1.8),
        HardwareKind(name="medium", weight=0.5, cores=4, ram_mb=4096, speed=1.0),
        HardwareKind(name="large", weight=0.2, cores=8, ram_mb=16384, speed=0.55),
    ], min_length=1)
    failures: list[FailureRule] = Field(default_factory=list)
    bench_delay_s: float = Field(0.0, ge=0, le=600)  # simulated time per benchmark
    agent_version: str = "sim-1"
    # Field telemetry: real requests per minute each device serves with its active variant (0: none).
    field_requests_per_min: float = Field(0.0, ge=0, le=1e6)

    def kind_of(self, device_id: str) -> HardwareKind:
        total = sum(k.weight for k in self.hardware)
        point, acc = _unit("hardware", device_id) * total, 0.0
        for kind in self.hardware:
            acc += kind.weight
            if point < acc:
                return kind
        return self.hardware[-1]

    def hardware_of(self, device_id: str) -> Hardware:
        kind = self.kind_of(device_id)
        return Hardware(arch=kind.arch, cores=kind.cores, ram_mb=kind.ram_mb, accelerators=[])

    def _fails(self, what: str, device_id: str, variant_id: str) -> bool:
        for rule in self.failures:
            if rule.match in variant_id and _unit(what, rule.match, device_id, variant_id) < getattr(rule, what):
                return True
        return False

    def activation_fails(self, device_id: str, variant_id: str) -> bool:
        return self._fails("activation", device_id, variant_id)

    def field_stats(self, device_id: str, variant_id: str, precision: str, seconds: float,
                    reference: FieldReference | None) -> FieldStats | None:
        """One telemetry interval of synthetic real requests (None: no requests in it): latency from the
        device's benchmark distribution (times the rules' slowdown), errors as the rules say, inputs and
        outputs in the eval set's proportions (no drift)."""
        requests = round(self.field_requests_per_min * seconds / 60)
        if requests <= 0:
            return None
        rules = [r for r in self.failures if r.match in variant_id]
        error_share = max((r.field_errors for r in rules), default=0.0)
        slowdown = max((r.field_slowdown for r in rules), default=1.0)
        errors = round(requests * error_share)
        served = requests - errors
        z = NormalDist().inv_cdf(min(max(_unit("latency", device_id, variant_id), 1e-9), 1 - 1e-9))
        p50 = self.base_p50_ms.get(precision, 2.0) * self.kind_of(device_id).speed * math.exp(self.sigma * z)
        latency = [0] * (len(LATENCY_EDGES_MS) + 1)
        for share, ms in ((0.5, p50), (0.4, p50 * self.p90_ratio), (0.1, p50 * self.p99_ratio * slowdown)):
            latency[bucket(ms, LATENCY_EDGES_MS)] += round(served * share)

        def spread(proportions: list[float]) -> list[int]:
            return [round(p * served) for p in proportions]

        inputs = [InputSummary(name=n, count=served, mean=0.0, m2=0.0, hist=spread(r.proportions))
                  for n, r in (reference.inputs.items() if reference else ())]
        outputs = [OutputSummary(name=n, kind="classes" if r.classes else "norm", hist=spread(r.proportions))
                   for n, r in (reference.outputs.items() if reference else ())]
        return FieldStats(requests=served, errors={"inference": errors} if errors else {}, latency_counts=latency,
                          inputs=inputs, outputs=outputs)

    def measure(self, device_id: str, variant_id: str, precision: str, size_bytes: int, base: dict) -> BenchmarkReport:
        """The synthetic report of `variant_id` on `device_id` (`base`: ids, generation, runtime)."""
        if self._fails("benchmark", device_id, variant_id):
            return BenchmarkReport(ok=False, error="simulated benchmark failure", **base)
        z = NormalDist().inv_cdf(min(max(_unit("latency", device_id, variant_id), 1e-9), 1 - 1e-9))
        p50 = self.base_p50_ms.get(precision, 2.0) * self.kind_of(device_id).speed * math.exp(self.sigma * z)
        latency = Latency(p50_ms=round(p50, 4), p90_ms=round(p50 * self.p90_ratio, 4),
                          p99_ms=round(p50 * self.p99_ratio, 4), mean_ms=round(p50 * 1.05, 4), runs=200)
        return BenchmarkReport(ok=True, latency=latency, threads=1, load_ms=5.0, warmup_ms=2.0,
                               throughput_per_s=round(1000 / p50, 2), peak_rss_mb=round(40 + size_bytes / 1e6 * 2, 1),
                               agreement=1.0, max_abs_diff=0.0, **base)


class DeviceSpec(BaseModel):
    id: str
    password: str
    profile: str
    source_address: str | None = None  # 127.0.0.x: many connections from several addresses
    fresh_session: bool = False


class ProcessSpec(BaseModel):
    fleet: str
    host: str
    port: int
    hub_public_key: str
    distribution: SyntheticDistribution
    devices: list[DeviceSpec]

