"""A small CNN trained on scikit-learn's digits (real data) and its TFLite variants, built once per
test session for every test module that uses them (LiteRT, Edge TPU, Core ML tests)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgehub.converters.passes.base import PassContext, run_pass


def digits_cnn_root(work: Path):
    """A small CNN trained on scikit-learn's digits (real data), as an ONNX root with its module."""
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    from edgehub.converters.torch_export import export_onnx
    from edgehub.converters.torch_passes.model_io import save_module

    digits = load_digits()
    x = ((digits.data / 16.0 - 0.5) / 0.5).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        optimizer.step()
    model.eval()
    root = export_onnx(model, {"x": x[:2]}, work / "digits.onnx")
    return root.model_copy(update={"torch_model": save_module(model, work / "digits.pt")}), x, y


@functools.lru_cache(maxsize=1)
def shared_digits() -> dict:
    """The digits CNN and its TFLite variants, built once per test session for every test module
    that imports this (trained and converted in a few seconds, but litert-torch is slow to start)."""
    work = Path(tempfile.mkdtemp(prefix="edgehub-digits-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    root, x, y = digits_cnn_root(work)
    ctx = PassContext(workdir=work / "passes", calibration={"x": x[:200]})
    tflite = {q: run_pass("tflite", root, {"quantization": q}, ctx) for q in ("none", "int8", "dynamic_int8")}
    return {"root": root, "x": x, "y": y, "ctx": ctx, "tflite": tflite, "work": work}
