"""A second real model: a small MLP trained on scikit-learn's bundled digits (8x8 images), as ONNX
with its eval set. The demo runs it beside the Fashion-MNIST CNN (two model slots per device);
the fleet benches publish it (bench/fleet_scale.py, bench/api_bench.py, bench/telemetry_bench.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def digits_mlp(out: Path) -> tuple[Path, Path]:
    """Train for 100 steps and write <out>/model.onnx and <out>/eval.npz; returns their paths."""
    import torch
    from sklearn.datasets import load_digits

    from edgehub.converters.torch_export import export_onnx

    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(x[:1400])), torch.from_numpy(y[:1400])).backward()
        optimizer.step()
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model.eval(), {"x": x[:2]}, out / "model.onnx")
    np.savez(out / "eval.npz", x=x[1400:], y=y[1400:])
    return out / "model.onnx", out / "eval.npz"
