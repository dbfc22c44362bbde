"""A small MobileNet-style net (conv, depthwise 3x3 + ReLU6, 1x1 projection, classifier) with one
badly scaled channel, trained briefly on scikit-learn's digits: the structure that int8 finds hard
(EfficientNet-Lite, MobileNet), small enough for unit tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def depthwise_net(work: Path):
    """(ONNX artifact, x, y): digits upsampled to 3x16x16."""
    from edgehub.converters.torch_export import export_onnx

    model, x, y = depthwise_module()
    return export_onnx(model, {"x": x[:2]}, work / "depthwise.onnx"), x, y


def depthwise_module():
    """(trained PyTorch module in eval mode, x, y): digits upsampled to 3x16x16."""
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    digits = load_digits()
    x = ((digits.data / 16.0 - 0.5) / 0.5).astype(np.float32).reshape(-1, 1, 8, 8)
    x = np.repeat(np.repeat(np.repeat(x, 3, axis=1), 2, axis=2), 2, axis=3)
    x[:, 1] *= 0.8
    y = digits.target.astype(np.int64)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 24, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    xt, yt = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        # One badly scaled channel that survives BatchNorm folding: channel 5 of the first 1x1
        # conv's output (through its BatchNorm) 40x wider, the next 1x1 conv's input 40x narrower.
        # Exactly the same function, since ReLU between them is positive-homogeneous.
        model[7].weight[5] *= 40.0
        model[7].bias[5] *= 40.0
        model[9].weight[:, 5] /= 40.0
    return model, x, y
