"""PyTorch models given as 'package.module:factory', exported to a single-file ONNX model."""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgehub.converters.artifact import Artifact
from edgehub.converters.errors import ConversionError
from edgehub.converters.onnx_model import onnx_artifact

DEFAULT_OPSET = 17


def is_factory_ref(source: str) -> bool:
    """'pkg.module:factory' (and not a path that happens to contain a colon)."""
    module, sep, attr = source.partition(":")
    return bool(sep) and bool(module) and attr.isidentifier() and not Path(source).exists() and "/" not in module


def load_torch_model(ref: str, weights: Path | None = None) -> Any:
    """Import the factory, build the module, load a state_dict if given; eval mode."""
    import torch

    module_name, _, attr = ref.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # factories importable from the current directory
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConversionError(f"cannot import {module_name!r} for {ref!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConversionError(f"{ref!r}: {module_name} has no callable {attr!r}")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ConversionError(f"{ref!r} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        try:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise ConversionError(f"{weights}: not a readable state_dict ({exc.__class__.__name__})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            first = str(exc).strip().splitlines()
            raise ConversionError(f"{weights} does not fit {ref}: {first[1] if len(first) > 1 else first[0]}") from None
    return model.eval()


def forward_input_names(model: Any) -> list[str]:
    """Names of forward()'s required positional parameters, used as ONNX input names."""
    params = inspect.signature(model.forward).parameters.values()
    names = [p.name for p in params
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if not names:
        raise ConversionError("the model's forward() takes no positional inputs")
    return names


def export_onnx(
    model: Any,
    example: dict[str, np.ndarray],
    out_path: Path,
    *,
    opset: int = DEFAULT_OPSET,
) -> Artifact:
    """Export with the TorchScript exporter: fast, single file, a dynamic batch axis.

    `example` maps forward()'s input names to arrays; use a batch of at least 2 so no batch
    dimension gets specialised to 1.
    """
    import torch

    names = list(example)
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n])) for n in names)
    with torch.no_grad():
        outputs = model(*args)
    n_out = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    output_names = ["logits"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    dynamic = {n: {0: "batch"} for n in names + output_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(
                model, args, str(out_path),
                input_names=names, output_names=output_names,
                dynamic_axes=dynamic, opset_version=opset,
                dynamo=False, do_constant_folding=True,
            )
        except Exception as exc:  # export errors come in many types; keep the first line
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ConversionError(f"ONNX export failed: {reason}") from None
    return onnx_artifact(out_path, notes={"exporter": "torch.onnx (TorchScript)", "opset": opset})
