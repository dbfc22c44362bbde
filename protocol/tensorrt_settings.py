"""TensorRT engine-build settings: written by the hub's `tensorrt_ready` pass into
the ONNX metadata, read by the device that builds the engine.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

METADATA_KEY = "edgehub.tensorrt"


class ProfileShapes(BaseModel):
    """One input's optimization-profile shapes (TensorRT's min/opt/max)."""

    model_config = ConfigDict(extra="forbid")

    min: list[int]
    opt: list[int]
    max: list[int]


class EngineSettings(BaseModel):
    """How the device builds the engine: written by the hub, read by the device."""

    model_config = ConfigDict(extra="forbid")

    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    workspace_mb: int = Field(1024, ge=16)
    builder_optimization_level: int = Field(3, ge=0, le=5)
    # Input name -> shapes, for inputs left dynamic; empty when the hub fixed every shape.
    profiles: dict[str, ProfileShapes] = Field(default_factory=dict)
    dla_core: int | None = Field(None, ge=0)  # NVDLA core (Xavier/Orin), GPU fallback on
    explicit_quantization: bool = False  # int8 from the graph's Q/DQ nodes, no calibrator

    @property
    def builder_flags(self) -> list[str]:
        """TensorRT BuilderFlag names to set. int8 also allows fp16 for the layers left float."""
        flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[self.precision]
        return flags + (["GPU_FALLBACK"] if self.dla_core is not None else [])
