"""The unit that flows through passes: a model file plus what it is."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from edgehub.protocol.formats import FormatName
from edgehub.protocol.manifest import TensorSpec

Format = FormatName  # defined once, in protocol/formats.py
Precision = Literal["fp32", "fp16", "int8", "int4", "int2", "mixed"]

__all__ = ["Artifact", "Format", "Precision", "TensorSpec"]


class Artifact(BaseModel):
    """A model file produced or consumed by a pass.

    `notes` carries what a pass measured or decided (e.g. which int8 kernel scheme it chose),
    so the hub can record it in the variant's recipe.
    """

    path: Path
    format: Format
    precision: Precision
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    notes: dict = Field(default_factory=dict)
    # The PyTorch module (a file written by edgehub.converters.torch_passes.model_io) that this
    # ONNX model was exported from and computes the same function; training passes start from
    # it. None for models that exist only as ONNX, or once a pass changed the ONNX alone.
    torch_model: Path | None = None

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size
