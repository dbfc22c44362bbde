"""Tests for edgehub.hub.examples: Fashion-MNIST loader, example nets, training loop, ONNX export."""

from __future__ import annotations

import gzip
import time

import numpy as np
import pytest
import torch

from edgehub.hub.examples import fashion_mnist as fm
from edgehub.hub.examples.nets import (
    MobileNetSmall,
    ResNetSmall,
    SmallCNN,
    TinyTextClassifier,
    count_params,
    mobilenet_small,
    resnet_small,
    small_cnn,
    tiny_text_classifier,
)
from edgehub.hub.examples.training import evaluate_accuracy, make_synthetic_text, train_classifier

needs_fmnist = pytest.mark.skipif(
    not all((fm.default_data_dir() / name).is_file() for pair in fm._FILES.values() for name in pair),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


# --- loader -----------------------------------------------------------------------------------


@needs_fmnist
@pytest.mark.parametrize("split,limit,n", [("train", 1000, 1000), ("test", None, 10000)])
def test_load_shapes_dtypes_normalisation(split, limit, n):
    x, y = fm.load_fashion_mnist(split, limit=limit)
    assert x.shape == (n, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert set(np.unique(y)) <= set(range(10)) and len(np.unique(y)) == 10
    assert len(fm.CLASSES) == 10
    # scaled to [0, 1] then (x - 0.2860) / 0.3530
    assert x.min() == pytest.approx((0 - 0.2860) / 0.3530, abs=1e-5)
    assert x.max() == pytest.approx((1 - 0.2860) / 0.3530, abs=1e-5)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05


@needs_fmnist
def test_limit_reads_prefix():
    x_small, y_small = fm.load_fashion_mnist("test", limit=7)
    x_big, y_big = fm.load_fashion_mnist("test", limit=50)
    np.testing.assert_array_equal(x_small, x_big[:7])
    np.testing.assert_array_equal(y_small, y_big[:7])


def test_missing_dir_raises(tmp_path, monkeypatch):
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fm.load_fashion_mnist("train", limit=10)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fm.load_fashion_mnist("test", data_dir=tmp_path)


def test_env_override_and_idx_parser(tmp_path, monkeypatch):
    """A hand-made IDX pair in $EDGEHUB_FMNIST_DIR is read back exactly (no dataset needed)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + np.array([5, 28, 28], ">i4").tobytes() + images.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + np.array([5], ">i4").tobytes() + labels.tobytes())
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path))
    x, y = fm.load_fashion_mnist("test")
    np.testing.assert_array_equal(y, labels.astype(np.int64))
    np.testing.assert_allclose(x[:, 0], (images / 255.0 - fm.MEAN) / fm.STD, atol=1e-6)
    x3, y3 = fm.load_fashion_mnist("test", limit=3)
    assert x3.shape == (3, 1, 28, 28) and y3.tolist() == [0, 9, 3]
    with pytest.raises(ValueError):
        fm.load_fashion_mnist("val")  # type: ignore[arg-type]


# --- nets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory,cls",
    [(small_cnn, SmallCNN), (resnet_small, ResNetSmall), (mobilenet_small, MobileNetSmall)],
)
def test_image_nets_forward(factory, cls):
    model = factory()
    assert isinstance(model, cls)
    assert 20_000 < count_params(model) < 200_000
    for mode in (model.train, model.eval):
        mode()
        out = model(torch.randn(3, 1, 28, 28))
        assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert factory(num_classes=4)(torch.randn(2, 1, 28, 28)).shape == (2, 4)


def test_architecture_features():
    assert any(isinstance(m, torch.nn.Linear) for m in small_cnn().modules())
    resnet = resnet_small()
    assert any(
        isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (2, 2) for m in resnet.modules()
    )
    mobilenet = mobilenet_small()
    depthwise = [m for m in mobilenet.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert any(isinstance(m, torch.nn.ReLU6) for m in mobilenet.modules())
    assert small_cnn() is not small_cnn()


def test_text_net_forward_and_padding_invariance():
    torch.manual_seed(0)
    model = tiny_text_classifier().eval()
    assert isinstance(model, TinyTextClassifier)
    ids, mask, _ = make_synthetic_text(4, seed=1)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        out = model(ids_t, mask_t)
        assert out.shape == (4, 4) and torch.isfinite(out).all()
        # the padded positions must not matter
        noisy = ids_t.masked_fill(mask_t == 0, 7)
        torch.testing.assert_close(model(noisy, mask_t), out, atol=1e-5, rtol=1e-5)


# --- training ---------------------------------------------------------------------------------


@needs_fmnist
def test_small_cnn_one_epoch_fashion_mnist():
    x, y = fm.load_fashion_mnist("train", limit=6000)
    x_test, y_test = fm.load_fashion_mnist("test", limit=2000)
    torch.manual_seed(0)
    model = small_cnn()
    t0 = time.perf_counter()
    result = train_classifier(model, x, y, epochs=1, val=(x_test, y_test), seed=0, progress=False)
    elapsed = time.perf_counter() - t0
    acc = evaluate_accuracy(model, x_test, y_test)
    print(f"SmallCNN 1 epoch on 6000 images: {elapsed:.1f}s, test accuracy {acc:.4f} on 2000")
    assert result["epochs"] == 1 and np.isfinite(result["final_loss"])
    assert result["val_accuracy"] == pytest.approx(acc)
    assert acc > 0.75


def test_train_text_classifier_on_synthetic_task():
    ids, mask, y = make_synthetic_text(2000, seed=0)
    ids_v, mask_v, y_v = make_synthetic_text(500, seed=1)
    torch.manual_seed(0)
    model = tiny_text_classifier()
    result = train_classifier(
        model, (ids, mask), y, epochs=5, batch_size=64, val=((ids_v, mask_v), y_v), progress=False
    )
    assert result["val_accuracy"] > 0.7  # chance is 0.25; 0.84-0.87 over seeds 0-3


def test_make_synthetic_text_properties():
    ids, mask, y = make_synthetic_text(300, vocab=1000, max_len=32, num_classes=4, seed=3)
    assert ids.shape == mask.shape == (300, 32) and y.shape == (300,)
    assert ids.dtype == mask.dtype == y.dtype == np.int64
    lengths = mask.sum(1)
    assert lengths.min() >= 1 and len(np.unique(lengths)) > 5  # variable lengths
    assert (ids[mask == 0] == 0).all() and (ids[mask == 1] > 0).all() and ids.max() < 1000
    assert all((mask[i, : lengths[i]] == 1).all() for i in range(300))  # padding at the end
    edges = np.linspace(1, 1000, 5).astype(np.int64)
    for row, m, label in zip(ids, mask, y):
        counts = np.bincount(np.searchsorted(edges, row[m == 1], side="right") - 1, minlength=4)
        assert counts.argmax() == label and counts[label] * 2 > m.sum()
    again = make_synthetic_text(300, vocab=1000, max_len=32, num_classes=4, seed=3)
    for a, b in zip((ids, mask, y), again):
        np.testing.assert_array_equal(a, b)


# --- ONNX -------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
def test_tiny_text_classifier_onnx_dynamic_batch(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = tiny_text_classifier().eval()
    ids, mask, _ = make_synthetic_text(3, seed=5)
    path = tmp_path / "tiny_text.onnx"
    torch.onnx.export(
        model,
        (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2])),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "logits": {0: "batch"}},
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        with torch.no_grad():
            expected = model(torch.from_numpy(ids[:batch]), torch.from_numpy(mask[:batch])).numpy()
        (got,) = session.run(None, {"input_ids": ids[:batch], "attention_mask": mask[:batch]})
        assert got.shape == (batch, 4)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
