"""Shared fixtures: a CNN trained on real Fashion-MNIST, small models, isolated hub homes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


@pytest.fixture
def hub_home(tmp_path, monkeypatch) -> Path:
    """An empty hub home; EDGEHUB_HOME points at it so CLI calls use it."""
    home = tmp_path / "hub-home"
    monkeypatch.setenv("EDGEHUB_HOME", str(home))
    monkeypatch.delenv("EDGEHUB_DB_URL", raising=False)
    return home


@pytest.fixture(scope="session")
def fmnist_cnn(tmp_path_factory) -> dict[str, Path]:
    """SmallCNN trained one epoch on 12,000 Fashion-MNIST images; its ONNX, weights and eval set.

    The eval set is 2,000 held-out test images with labels.
    """
    import torch

    from edgehub.converters.torch_export import export_onnx
    from edgehub.hub.examples.fashion_mnist import load_fashion_mnist
    from edgehub.hub.examples.nets import small_cnn
    from edgehub.hub.examples.training import evaluate_accuracy, train_classifier

    out = tmp_path_factory.mktemp("fmnist-cnn")
    x_train, y_train = load_fashion_mnist("train", limit=12000)
    x_test, y_test = load_fashion_mnist("test", limit=2000)
    torch.manual_seed(0)
    model = small_cnn()
    train_classifier(model, x_train, y_train, epochs=1, progress=False)
    model.eval()
    accuracy = evaluate_accuracy(model, x_test, y_test)
    torch.save(model.state_dict(), out / "weights.pt")
    export_onnx(model, {"x": x_test[:2]}, out / "model.onnx")
    np.savez(out / "eval.npz", x=x_test, y=y_test)
    np.savez(out / "eval-nolabels.npz", x=x_test[:500])
    return {"onnx": out / "model.onnx", "weights": out / "weights.pt", "eval": out / "eval.npz",
            "eval_nolabels": out / "eval-nolabels.npz", "torch_accuracy": accuracy}


@pytest.fixture(scope="session")
def tiny_mlp(tmp_path_factory) -> dict[str, Path]:
    """A small MLP classifier on scikit-learn's digits (real data), as ONNX plus an eval set."""
    import torch
    from sklearn.datasets import load_digits

    from edgehub.converters.torch_export import export_onnx

    out = tmp_path_factory.mktemp("tiny-mlp")
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        optimizer.step()
    model.eval()
    export_onnx(model, {"x": x[:2]}, out / "mlp.onnx")
    np.savez(out / "eval.npz", x=x[1400:], y=y[1400:])
    return {"onnx": out / "mlp.onnx", "eval": out / "eval.npz", "x": x[1400:], "y": y[1400:]}
