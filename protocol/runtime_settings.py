"""How a runtime runs a variant: thread count, execution provider, graph optimisation, delegate.

The hub lists the settings worth trying on a device (`TuningPlan`, part of a v2 model slot); the
agent measures the leading variants under each, reports every (variant, settings) pair, and runs
the chosen pair (`ModelSlot.activate_settings`) when it activates and serves the variant. What a
runtime actually executed where is reported as `Coverage`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Optimization = Literal["all", "extended", "basic", "disabled"]  # ONNX Runtime's graph optimisation levels


class RuntimeSettings(BaseModel):
    """One way to run a variant; a field left at None (threads 0) keeps the runtime's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: int = Field(0, ge=0, le=256)
    # ONNX Runtime: the execution provider to put first (CPU stays as the fallback for the rest).
    provider: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9]+$")
    optimization: Optimization | None = None  # ONNX Runtime
    # LiteRT: "xnnpack" (its default delegate) or "none" (builtin kernels only).
    delegate: Literal["xnnpack", "none"] | None = None

    def key(self) -> str:
        """A short stable name: "default", or e.g. "threads=2,optimization=basic"."""
        parts = [f"{k}={v}" for k, v in self.model_dump(exclude_defaults=True).items()]
        return ",".join(parts) or "default"

    def is_default(self) -> bool:
        return self.key() == "default"


DEFAULT_SETTINGS = RuntimeSettings()


class TuningPlan(BaseModel):
    """Part of a model slot: the settings to try on the leading variants, within a time budget."""

    model_config = ConfigDict(extra="forbid")

    settings: list[RuntimeSettings] = Field(default_factory=list, max_length=32)
    budget_s: float = Field(60.0, gt=0, le=3600)  # measuring time for the whole slot's tuning
    margin: float = Field(0.5, ge=0, le=10)  # tune variants within this of the best default p50


class Coverage(BaseModel):
    """Where a run's graph executed, as the runtime itself says: nodes per execution provider
    (ONNX Runtime's profile) or delegated by a LiteRT delegate. `accelerated` is the share of
    nodes that ran on something other than the plain CPU kernels."""

    model_config = ConfigDict(extra="forbid")

    nodes: int = Field(ge=0)
    by: dict[str, int] = Field(default_factory=dict, max_length=32)
    accelerated: float = Field(ge=0, le=1)
    # Share of the run's kernel time in those nodes, where the runtime times each node (ONNX
    # Runtime's profile): weighted by work, as a share of MACs would be, which the device cannot
    # count without the graph's shapes. None where the runtime does not say (LiteRT).
    time_share: float | None = Field(None, ge=0, le=1)
    source: str = Field(max_length=64)  # how it was read: "onnxruntime profile", "litert delegate"
