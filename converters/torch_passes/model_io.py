"""PyTorch modules as files between passes, and their export to ONNX.

A pruned or rebuilt module no longer fits its factory's state_dict, so the whole module is
pickled. Only files this process wrote in its own work directory are loaded back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.torch_export import export_onnx


def save_module(model: Any, path: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.eval(), str(path))
    return path


def load_module(path: Path) -> Any:
    """A module saved by :func:`save_module` (trusted: written by edgehub itself)."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=False).eval()
    except Exception as exc:  # unpickling fails in many ways when a class moved
        raise ConversionError(f"cannot load the PyTorch model {path.name}: {exc}") from None


def example_inputs(inputs: dict[str, np.ndarray], n: int = 2) -> dict[str, np.ndarray]:
    """A small batch (2 samples so exporters keep the batch axis dynamic)."""
    return {k: np.ascontiguousarray(v[:n]) for k, v in inputs.items()}


def as_tensors(example: dict[str, np.ndarray]) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in example.values())


def export_module(model: Any, example: dict[str, np.ndarray], onnx_path: Path, module_path: Path,
                  notes: dict | None = None) -> Artifact:
    """Export `model` to ONNX and keep the module beside it, so later passes can train it further."""
    model = model.eval()
    artifact = export_onnx(model, example, onnx_path)
    save_module(model, module_path)
    return artifact.model_copy(update={"torch_model": module_path, "notes": {**artifact.notes, **(notes or {})}})
