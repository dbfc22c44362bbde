"""Shared fixtures: a CNN trained on real Fashion-MNIST, small models, isolated hub homes."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

PG_URL = os.environ.get("EDGEHUB_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_available() -> None:
    """Skip (with the reason) when the test PostgreSQL cannot be reached."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG_URL} unreachable: {str(exc.orig).splitlines()[0]}")
    finally:
        engine.dispose()


@pytest.fixture
def pg_schema(pg_available: None) -> Iterator[str]:
    """A fresh schema per test, dropped afterwards, so tests never see each other's rows."""
    from sqlalchemy import create_engine, text

    schema = f"edgehub_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict]:
    """(SQLAlchemy URL, connect_args) of an empty database: SQLite, then the system PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/edgehub.db", {}
    schema = request.getfixturevalue("pg_schema")
    return PG_URL, {"options": f"-csearch_path={schema}"}


@pytest.fixture
def fleet_store(database: tuple[str, dict]):
    """A FleetStore on each database of `database` (SQLite, then PostgreSQL), closed afterwards."""
    from edgehub.hub.fleet.store import FleetStore

    url, connect_args = database
    fleet = FleetStore(url, connect_args=connect_args)
    try:
        yield fleet
    finally:
        fleet.close()


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
